"""One layer of the alias-free generator (Karras et al. 2021, Sec. 3.2): modulated convolution, then
the filtered leaky ReLU that upsamples, rectifies and lowpass-filters back down to this layer's band.

What sets it apart from a StyleGAN2 layer:

- the input is divided by the running RMS of its magnitude (`magnitude_ema`), which replaces
  StyleGAN2's noise- and normalization-based control of activation scale;
- the nonlinearity runs at `lrelu_upsampling` times the layer's sampling rate and is surrounded by
  lowpass filters designed from the layer schedule (`up_filter`, `down_filter`), so the layer
  neither creates nor keeps frequencies above its cutoff;
- there is no noise input and no skip connection; the last layer (`is_torgb`) is a 1x1 modulated
  convolution without demodulation and with a linear "activation".
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from models.layers import FullyConnectedLayer, compute_dtype, fp16_active
from models.stylegan2.synthesis import default_fused_modconv
from models.stylegan3.filters import design_lowpass_filter
from ops import filtered_lrelu, modulated_conv2d
from ops.impl import static_shape

NOISE_MODES = ("random", "const", "none")  # accepted for interface compatibility; StyleGAN3 has no noise


def _as_int(value: Any, name: str) -> int:
    """A square size: an int, or the official [width, height] form with equal entries."""
    if isinstance(value, (list, tuple, np.ndarray)):
        w, h = (int(v) for v in np.broadcast_to(np.asarray(value), [2]))
        if w != h:
            raise ValueError(f"{name}: only square feature maps are supported, got {list(value)}")
        return w
    return int(value)


def resampling_padding(
    in_size: int, out_size: int, conv_kernel: int, up: int, down: int, up_taps: int, down_taps: int
) -> tuple[int, int]:
    """(before, after) padding, in upsampled pixels, that makes filtered_lrelu return `out_size`.

    The convolution (padding k - 1) grows the input to in + k - 1 samples, upsampling makes that
    (in + k - 1) * up, each filter's valid convolution removes taps - 1, and keeping every
    `down`-th sample of (out - 1) * down + 1 gives `out`. The split is shifted by `up / 2` so that
    the samples keep their positions under the symmetric (pixel-centre) interpretation of the grid
    (Appendix C.3).
    """
    total = (out_size - 1) * down + 1 - (in_size + conv_kernel - 1) * up + up_taps + down_taps - 2
    before = (total + up) // 2
    return before, total - before


class StyleGAN3SynthesisLayer(torch.nn.Module):
    """[N, in_channels, in_size, in_size] -> [N, out_channels, out_size, out_size], styled by one w."""

    def __init__(
        self,
        w_dim: int,
        is_torgb: bool,                   # final 1x1 layer to image channels
        is_critically_sampled: bool,      # one of the last `num_critical` layers (cutoff = Nyquist)
        use_fp16: bool,                   # float16 on CUDA (see models.layers.fp16_active)
        in_channels: int,
        out_channels: int,
        in_size: int,                     # pixels per axis; int or the official [w, h] with w == h
        out_size: int,
        in_sampling_rate: float,          # s
        out_sampling_rate: float,
        in_cutoff: float,                 # f_c
        out_cutoff: float,
        in_half_width: float,             # f_h
        out_half_width: float,
        conv_kernel: int = 3,             # ignored for ToRGB (always 1)
        filter_size: int = 6,             # lowpass taps per unit of the lower sampling rate
        lrelu_upsampling: int = 2,        # the nonlinearity runs at this multiple of the sampling rate
        use_radial_filters: bool = False,  # radial (rotation-invariant) downsampling filters, StyleGAN3-R
        conv_clamp: float | None = 256,   # clamp the pre-filter activations to [-conv_clamp, conv_clamp]
        magnitude_ema_beta: float = 0.999,  # decay of the running mean of the input's squared magnitude
    ) -> None:
        super().__init__()
        in_size, out_size = _as_int(in_size, "in_size"), _as_int(out_size, "out_size")
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            w_dim=w_dim, is_torgb=bool(is_torgb), is_critically_sampled=bool(is_critically_sampled),
            use_fp16=bool(use_fp16), in_channels=int(in_channels), out_channels=int(out_channels),
            in_size=in_size, out_size=out_size,
            in_sampling_rate=float(in_sampling_rate), out_sampling_rate=float(out_sampling_rate),
            in_cutoff=float(in_cutoff), out_cutoff=float(out_cutoff),
            in_half_width=float(in_half_width), out_half_width=float(out_half_width),
            conv_kernel=conv_kernel, filter_size=filter_size, lrelu_upsampling=lrelu_upsampling,
            use_radial_filters=bool(use_radial_filters), conv_clamp=conv_clamp,
            magnitude_ema_beta=float(magnitude_ema_beta),
        ))
        self.w_dim = w_dim
        self.is_torgb = bool(is_torgb)
        self.is_critically_sampled = bool(is_critically_sampled)
        self.use_fp16 = bool(use_fp16)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.in_size = in_size
        self.out_size = out_size
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        # The nonlinearity's grid: the finer of the two rates, times lrelu_upsampling (ToRGB is linear).
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if self.is_torgb else lrelu_upsampling)
        self.in_cutoff = in_cutoff
        self.out_cutoff = out_cutoff
        self.in_half_width = in_half_width
        self.out_half_width = out_half_width
        self.conv_kernel = 1 if self.is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta

        # Styles start at 1 (bias_init=1) so that a fresh layer is an ordinary convolution.
        self.affine = FullyConnectedLayer(w_dim, self.in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(
            torch.randn([self.out_channels, self.in_channels, self.conv_kernel, self.conv_kernel])
        )  # [OIkk]
        self.bias = torch.nn.Parameter(torch.zeros([self.out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        # Upsampling: from the input rate to the nonlinearity's rate, keeping the input band (f_c, f_h).
        self.up_factor = _integer_ratio(self.tmp_sampling_rate, in_sampling_rate, "tmp/in sampling rate")
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not self.is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(
            numtaps=self.up_taps, cutoff=in_cutoff, width=in_half_width * 2, fs=self.tmp_sampling_rate))

        # Downsampling: back to the output rate, removing everything above the output band. Critically
        # sampled layers keep separable filters: their cutoff is at Nyquist, where a circular passband
        # would cut off the corners of the spectrum that the image needs.
        self.down_factor = _integer_ratio(self.tmp_sampling_rate, out_sampling_rate, "tmp/out sampling rate")
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not self.is_torgb else 1
        self.down_radial = bool(use_radial_filters) and not self.is_critically_sampled
        self.register_buffer("down_filter", design_lowpass_filter(
            numtaps=self.down_taps, cutoff=out_cutoff, width=out_half_width * 2, fs=self.tmp_sampling_rate,
            radial=self.down_radial))

        before, after = resampling_padding(
            in_size, out_size, self.conv_kernel, self.up_factor, self.down_factor, self.up_taps, self.down_taps
        )
        self.padding = [before, after, before, after]  # (x0, x1, y0, y1)

    def forward(
        self,
        x: torch.Tensor,                       # [N, in_channels, in_size, in_size]
        w: torch.Tensor,                       # [NW]
        noise_mode: str = "random",            # ignored (no noise in StyleGAN3), validated for compatibility
        force_fp32: bool = False,
        update_emas: bool = False,             # fold this batch's input magnitude into magnitude_ema
        fused_modconv: bool | None = None,     # None = models.stylegan2.synthesis.default_fused_modconv
    ) -> torch.Tensor:                         # [N, out_channels, out_size, out_size]
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        shape = static_shape(x)
        if len(shape) != 4 or shape[1:] != [self.in_channels, self.in_size, self.in_size]:
            raise ValueError(f"expected x [N, {self.in_channels}, {self.in_size}, {self.in_size}], got {tuple(shape)}")

        if update_emas:
            magnitude = x.detach().to(torch.float32).square().mean()
            self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()  # normalises the input to unit RMS magnitude

        half = fp16_active(self.use_fp16, force_fp32, x.device)  # cuda-only: sg3.layer-dtype
        dtype = compute_dtype(half)
        if fused_modconv is None:
            fused_modconv = default_fused_modconv(self.training, dtype, shape[0], x.device)

        styles = self.affine(w)  # [NI]
        weight = self.weight
        if self.is_torgb:
            # No demodulation, so the equalized-lr gain and the input gain both go into the styles.
            styles = styles * (input_gain / math.sqrt(self.in_channels * self.conv_kernel**2))
        else:
            # Demodulation removes any per-output-channel scale of the weight and any scale of the
            # styles; bringing both to unit RMS first keeps float16 in range and matches the
            # official network's rounding (its demodulation epsilon sees these magnitudes).
            weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()  # [OIkk]
            styles = styles * styles.square().mean().rsqrt()  # [NI]
            x = x * input_gain.to(x.dtype)  # before the conv: demodulation would undo it on the weight

        x = modulated_conv2d(
            x.to(dtype), weight, styles, padding=self.conv_kernel - 1, demodulate=not self.is_torgb,
            fused_modconv=fused_modconv,
        )  # [N, O, in_size + k - 1, in_size + k - 1]

        gain = 1 if self.is_torgb else math.sqrt(2)
        slope = 1 if self.is_torgb else 0.2
        x = filtered_lrelu(
            x, fu=self.up_filter, fd=self.down_filter, b=self.bias.to(x.dtype), up=self.up_factor,
            down=self.down_factor, padding=self.padding, gain=gain, slope=slope, clamp=self.conv_clamp,
        )  # [NOHW]
        return x

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, is_torgb={self.is_torgb}, is_critically_sampled={self.is_critically_sampled}, "
            f"use_fp16={self.use_fp16}, in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"in_size={self.in_size}, out_size={self.out_size}, in_sampling_rate={self.in_sampling_rate:g}, "
            f"out_sampling_rate={self.out_sampling_rate:g}, in_cutoff={self.in_cutoff:g}, "
            f"out_cutoff={self.out_cutoff:g}, up={self.up_factor}, down={self.down_factor}"
        )


def _integer_ratio(numerator: float, denominator: float, what: str) -> int:
    ratio = int(np.rint(numerator / denominator))
    if denominator * ratio != numerator:
        raise ValueError(f"{what} must be an integer ratio, got {numerator} / {denominator}")
    return ratio
