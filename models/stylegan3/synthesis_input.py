"""Fourier-feature input of the alias-free generator (Karras et al. 2021, Sec. 3.2, "Transformed
Fourier features").

StyleGAN2's learned 4x4 constant is tied to the pixel grid. StyleGAN3 starts instead from sinusoids
with fixed random frequencies (drawn inside a disc of radius `bandwidth` = the first cutoff), which
describe a continuous signal that can be sampled anywhere. The first w predicts a rotation and a
translation of that signal (so the whole image can move continuously), and the user may add an
extra transform: `transform` is the *inverse* of the wanted image transform, in image units
(1 = the image width), exactly as the official `gen_images.py` sets it.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from models.layers import FullyConnectedLayer


def _rotation_translation(t: torch.Tensor) -> torch.Tensor:
    """[N, 4] (cos, sin, tx, ty) -> [N, 3, 3] inverse transform R(cos, sin) @ T(-tx, -ty)."""
    c, s, tx, ty = t.unbind(dim=1)  # [N] each
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rotation = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=1).reshape(-1, 3, 3)
    translation = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], dim=1).reshape(-1, 3, 3)
    return rotation @ translation  # [N33]


class SynthesisInput(torch.nn.Module):
    """w -> [N, channels, size, size] Fourier features, mixed by a learned channel matrix."""

    def __init__(
        self,
        w_dim: int,
        channels: int,
        size: int,               # output pixels per axis (margins included)
        sampling_rate: float,    # samples per image-width unit
        bandwidth: float,        # radius of the frequency disc = cutoff of the first layer
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            w_dim=w_dim, channels=channels, size=int(size), sampling_rate=float(sampling_rate),
            bandwidth=float(bandwidth),
        ))
        self.w_dim = w_dim
        self.channels = channels
        self.size = int(size)
        self.sampling_rate = float(sampling_rate)
        self.bandwidth = float(bandwidth)

        # Uniform over the disc of radius `bandwidth`: for a 2-D Gaussian of radius r, exp(-r^2 / 2) is
        # uniform on (0, 1], so the new radius exp(-r^2 / 4) is the square root of a uniform variable,
        # which is how the radius of a uniform point in a disc is distributed.
        freqs = torch.randn([channels, 2])  # [C, xy]
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        phases = torch.rand([channels]) - 0.5  # [C], in cycles

        self.weight = torch.nn.Parameter(torch.randn([channels, channels]))  # channel mixing [CC]
        # Starts as the identity transform: (cos, sin, tx, ty) = (1, 0, 0, 0) for every w.
        self.affine = FullyConnectedLayer(w_dim, 4)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3, 3))  # user's inverse transform [33]
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # [NW] -> [N, C, size, size] float32
        # Predicted rotation and translation; dividing by |(cos, sin)| makes the rotation a pure rotation.
        t = self.affine(w)  # [N4]
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        # Apply the predicted rotation first, then the predicted translation, then the user's transform.
        transforms = _rotation_translation(t) @ self.transform.unsqueeze(0)  # [N33]

        # Sampling a sinusoid at transformed coordinates = a sinusoid with transformed frequency and phase.
        freqs = self.freqs.unsqueeze(0)  # [1, C, xy]
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)  # [NC]
        freqs = freqs @ transforms[:, :2, :2]  # [N, C, xy]

        # A user transform can push frequencies past the band; fade them out linearly between the
        # bandwidth and the Nyquist frequency instead of letting them alias.
        amplitudes = 1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)
        amplitudes = amplitudes.clamp(0, 1)  # [NC]

        # Pixel centres in image units, the image centre at 0.
        coords = (torch.arange(self.size, device=w.device, dtype=torch.float32) + 0.5 - self.size / 2)
        coords = coords / self.sampling_rate  # [size]
        fx, fy = freqs.unbind(dim=2)  # [NC] each
        arg = (coords.reshape(1, 1, -1, 1) * fx.reshape(-1, 1, 1, self.channels)
               + coords.reshape(1, -1, 1, 1) * fy.reshape(-1, 1, 1, self.channels)
               + phases.reshape(-1, 1, 1, self.channels))  # [N, H, W, C], in cycles
        x = torch.sin(arg * (2 * np.pi)) * amplitudes.reshape(-1, 1, 1, self.channels)  # [NHWC]

        x = x @ (self.weight / math.sqrt(self.channels)).t()  # equalized-lr channel mixing [NHWC]
        return x.permute(0, 3, 1, 2)  # [NCHW]

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, channels={self.channels}, size={self.size}, "
            f"sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}"
        )
