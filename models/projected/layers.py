"""Layers shared by FastGAN and the Projected GAN discriminator.

Spectral normalization (Miyato et al. 2018) is torch's hook-based `torch.nn.utils.spectral_norm`, the one
the official code uses: it stores `weight_orig` (the parameter), `weight_u` and `weight_v` (power-iteration
buffers), so state dicts map one to one onto official ones, and the numbers (one power iteration per
training-mode forward, eps 1e-12) are the same.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

NOISE_MODES = ("random", "const", "none")


def sn_conv2d(*args: Any, **kwargs: Any) -> nn.Conv2d:
    """nn.Conv2d(*args, **kwargs) with spectral normalization (official `blocks.conv2d`)."""
    return spectral_norm(nn.Conv2d(*args, **kwargs))


def sn_conv_transpose2d(*args: Any, **kwargs: Any) -> nn.ConvTranspose2d:
    """nn.ConvTranspose2d with spectral normalization (official `blocks.convTranspose2d`)."""
    return spectral_norm(nn.ConvTranspose2d(*args, **kwargs))


def sn_linear(*args: Any, **kwargs: Any) -> nn.Linear:
    """nn.Linear with spectral normalization (official `blocks.linear`)."""
    return spectral_norm(nn.Linear(*args, **kwargs))


def check_noise_mode(noise_mode: str) -> str:
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    return noise_mode


class NoiseInjection(nn.Module):
    """x + weight * noise, one noise value per pixel shared by all channels (FastGAN, after StyleGAN).

    `weight` (a learned scalar, initially 0) is the official parameter. `noise_const` is ours: a fixed
    [1, 1, H, W] draw used for noise_mode='const', so that mode is deterministic (the official module only
    knows random noise). It is derived from a fixed seed, not stored in the state dict (non-persistent), so
    official weights still load one to one and every process rebuilds the same constant.
    """

    def __init__(self, resolution: int, seed: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.weight = nn.Parameter(torch.zeros(1))
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution, generator=gen,
                                                        device="cpu"), persistent=False)

    def forward(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:  # [NCHW]
        if noise_mode == "none":
            return x
        if noise_mode == "const":
            if tuple(x.shape[2:]) != (self.resolution, self.resolution):
                raise ValueError(f"noise_mode='const' needs {self.resolution}px features, got {tuple(x.shape[2:])}")
            noise = self.noise_const.to(x.dtype)
        else:
            check_noise_mode(noise_mode)
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        return x + self.weight * noise

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}"


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without affine parameters, then a class-dependent gain (1 + g(y)) and bias b(y).

    Official `blocks.CCBN` (after BigGAN, Brock et al. 2019): g and b are spectral-normalized
    linear maps of the class embedding y; running statistics live in `stored_mean` / `stored_var`.
    """

    def __init__(self, num_features: int, embedding_dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.gain = sn_linear(embedding_dim, num_features)
        self.bias = sn_linear(embedding_dim, num_features)
        self.eps = eps
        self.momentum = momentum
        self.register_buffer("stored_mean", torch.zeros(num_features))
        self.register_buffer("stored_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # x [NCHW], y [N, embedding_dim]
        gain = (1 + self.gain(y))[:, :, None, None]  # [NC11]
        bias = self.bias(y)[:, :, None, None]         # [NC11]
        x = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, self.training, self.momentum, self.eps)
        return x * gain + bias
