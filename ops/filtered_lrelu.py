"""Filtered leaky ReLU: the alias-suppressing nonlinearity of StyleGAN3 (Karras et al. 2021, Sec. 3.2).

A pointwise nonlinearity creates frequencies above the Nyquist limit of the grid it runs on. The
alias-free generator therefore evaluates it on a temporarily upsampled grid and lowpass-filters the
result before going back down. Per channel, with the official semantics:

1. add the bias ``b``;
2. upsample by ``up`` (zero insertion), pad by ``padding`` (negative crops), convolve with ``fu``
   scaled so that the inserted zeros do not dim the signal (gain ``up ** 2``);
3. multiply by ``gain``, leaky ReLU with negative ``slope``, clamp to [-clamp, clamp];
4. convolve with ``fd`` and keep every ``down``-th sample.

The filters only shrink the image ("valid" convolution): the output is
``(in * up + pad0 + pad1 - (taps_u - 1) - (taps_d - 1) + down - 1) // down`` samples per axis.

"ref" is that sequence written with the reference formulations of ``upfirdn2d`` and ``bias_act``
(zero insertion and full-size convolutions); "fast" computes the same sums with their fast
formulations (polyphase upsampling, strided downsampling, in-place activation epilogue) and skips
identity resampling steps. Both are plain PyTorch, so gradients of any order come from autograd.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .bias_act import bias_act
from .impl import resolve_impl, static_shape
from .upfirdn2d import Padding, _get_filter_size, _parse_padding, upfirdn2d


def _check_filter(f: torch.Tensor | None, name: str) -> None:
    if f is None:
        return
    if not (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32):
        raise ValueError(f"{name} must be None or a float32 1-D (separable) or 2-D filter tensor")
    if f.requires_grad:
        raise ValueError(f"{name} must not require grad (filters are fixed)")


def filtered_lrelu_output_size(
    in_size: int, up: int, down: int, pad0: int, pad1: int, taps_up: int, taps_down: int
) -> int:
    """Output samples along one axis (see the module docstring)."""
    return (in_size * up + pad0 + pad1 - (taps_up - 1) - (taps_down - 1) + down - 1) // down


def _is_identity(f: torch.Tensor | None, scale: int, pads: tuple[int, int, int, int]) -> bool:
    # A resampling step with no filter, no rate change and no padding leaves x as it is; the fast path
    # skips it instead of running a 1x1 depthwise convolution (StyleGAN3's ToRGB layer hits this).
    return f is None and scale == 1 and not any(pads)


def _filtered_lrelu_fast(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, 1, 1)  # [NCHW]
    if not _is_identity(fu, up, padding):
        if fu is None and up == 1:
            x = F.pad(x, list(padding))  # pure pad/crop: no filter to apply
        else:
            x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2, flip_filter=flip_filter, impl="fast")
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp, impl="fast")
    if not _is_identity(fd, down, (0, 0, 0, 0)):
        x = upfirdn2d(x, fd, down=down, flip_filter=flip_filter, impl="fast")
    return x


def _filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    x = bias_act(x, b.to(x.dtype) if b is not None else None, impl="ref")
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2, flip_filter=flip_filter, impl="ref")
    x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp, impl="ref")
    return upfirdn2d(x, fd, down=down, flip_filter=flip_filter, impl="ref")


def filtered_lrelu(
    x: torch.Tensor,                    # [NCHW]
    fu: torch.Tensor | None = None,     # upsampling filter: [taps] (separable), [h, w], or None (identity)
    fd: torch.Tensor | None = None,     # downsampling filter, same forms
    b: torch.Tensor | None = None,      # [C] bias, added before upsampling
    up: int = 1,                        # integer upsampling factor
    down: int = 1,                      # integer downsampling factor
    padding: Padding = 0,               # int, (x, y) or (x0, x1, y0, y1), in upsampled pixels; < 0 crops
    gain: float = math.sqrt(2),         # scale applied before the activation
    slope: float = 0.2,                 # leaky ReLU slope for negative inputs (1 = linear)
    clamp: float | None = None,         # clamp the activation's output to [-clamp, clamp]
    flip_filter: bool = False,          # False = convolution, True = correlation
    impl: str = "auto",
) -> torch.Tensor:                      # [N, C, H', W'] in the dtype of x
    """Bias, upsample + filter, gain + leaky ReLU + clamp, filter + downsample (module docstring)."""
    if not (isinstance(x, torch.Tensor) and x.ndim == 4):
        raise ValueError("x must be a 4-D tensor [N, C, H, W]")
    _check_filter(fu, "fu")
    _check_filter(fd, "fd")
    _, channels, in_h, in_w = static_shape(x)
    if b is not None and not (isinstance(b, torch.Tensor) and static_shape(b) == [channels]):
        raise ValueError(f"b must be a 1-D tensor of {channels} elements")
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ValueError(f"up and down must be ints >= 1, got up={up!r}, down={down!r}")
    if not gain > 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    if not slope >= 0:
        raise ValueError(f"slope must be >= 0, got {slope}")
    if clamp is not None and not clamp >= 0:
        raise ValueError(f"clamp must be None or >= 0, got {clamp}")
    padding = _parse_padding(padding)
    fu_w, fu_h = _get_filter_size(fu)
    fd_w, fd_h = _get_filter_size(fd)
    px0, px1, py0, py1 = padding
    out_w = filtered_lrelu_output_size(in_w, up, down, px0, px1, fu_w, fd_w)
    out_h = filtered_lrelu_output_size(in_h, up, down, py0, py1, fu_h, fd_h)
    if out_w < 1 or out_h < 1:
        raise ValueError(f"filtered_lrelu of a {in_h}x{in_w} input with these filters/padding is empty")

    args = (x, fu, fd, b, up, down, padding, float(gain), float(slope), clamp, flip_filter)
    if resolve_impl("filtered_lrelu", impl) == "fast":
        return _filtered_lrelu_fast(*args)
    return _filtered_lrelu_ref(*args)
