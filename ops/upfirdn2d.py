"""Upsample, pad, FIR-filter and downsample 2-D images (the anti-aliased resampling of the networks).

Semantics of ``upfirdn2d`` (the "ref" path is the literal reading):

1. upsample by inserting ``up - 1`` zeros after every sample along each axis;
2. pad with zeros (a negative pad crops);
3. filter with the FIR filter ``f`` -- a true convolution unless ``flip_filter``, in which case a
   cross-correlation; the filter is scaled by ``gain ** (f.ndim / 2)``, so a separable (1-D)
   filter, applied once per axis, contributes ``gain`` overall just like a 2-D one;
4. downsample by keeping every ``down``-th sample, starting with the first.

The "fast" path computes the same sums without ever touching the inserted zeros (polyphase
decomposition for ``up > 1``) or the discarded outputs (strided convolution for ``down > 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .impl import resolve_impl, static_shape

IntPair = int | Sequence[int]
Padding = int | Sequence[int]


def _parse_scaling(scaling: IntPair) -> tuple[int, int]:
    if isinstance(scaling, int):
        scaling = (scaling, scaling)
    sx, sy = (int(s) for s in scaling)
    if len(scaling) != 2 or sx < 1 or sy < 1:
        raise ValueError(f"scaling factors must be one int or (x, y) with both >= 1, got {scaling!r}")
    return sx, sy


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        padding = (padding, padding)
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        px, py = padding
        padding = (px, px, py, py)
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, (x, y) or (x0, x1, y0, y1); got {padding!r}")
    return padding  # (x0, x1, y0, y1)


def _get_filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter prepared by ``setup_filter``; a 1-D filter is square."""
    if f is None:
        return 1, 1
    if not (isinstance(f, torch.Tensor) and f.ndim in (1, 2)):
        raise ValueError("filter must be None or a 1-D or 2-D tensor")
    shape = static_shape(f)
    fw, fh = shape[-1], shape[0]
    if fw < 1 or fh < 1:
        raise ValueError("filter must not be empty")
    return fw, fh


def setup_filter(
    f=None,
    device: torch.device = torch.device("cpu"),  # noqa: B008  (the official default, kept for callers)
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """Turn a list/array/tensor of taps into the float32 filter tensor ``upfirdn2d`` expects.

    ``None`` means the identity filter. A 1-D input becomes a separable filter when ``separable``
    is True, or when unspecified and it has at least 8 taps (short filters are cheaper as one 2-D
    pass); otherwise its outer product with itself. ``normalize`` makes the taps sum to 1 so a
    constant image keeps its value; the result is scaled so the filter's overall gain is ``gain``.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(np.asarray(f) if isinstance(f, list | tuple) else f, dtype=torch.float32)
    if f.ndim not in (0, 1, 2) or f.numel() == 0:
        raise ValueError(f"filter must be a non-empty scalar, 1-D or 2-D array; got shape {tuple(f.shape)}")
    f = f.reshape(1) if f.ndim == 0 else f.clone()  # clone: never normalise the caller's tensor in place
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError("a 2-D filter cannot be made separable")
    if normalize:
        f /= f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ---------------------------------------------------------------------------------------------
# Reference formulation


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    n, c, h, w = x.shape
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding

    # Zero insertion: give every sample (up - 1) zero neighbours after it along each axis.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)

    # Positive pads add zeros, negative ones crop.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    # conv2d cross-correlates, so a true convolution needs the taps reversed.
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))

    # Depthwise: the same filter applied to every channel independently.
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        fk = f[None, None].repeat(c, 1, 1)  # [C1k]
        x = F.conv2d(x, fk.unsqueeze(2), groups=c)  # along width
        x = F.conv2d(x, fk.unsqueeze(3), groups=c)  # along height

    return x[:, :, ::downy, ::downx]


# ---------------------------------------------------------------------------------------------
# Fast formulation
#
# Working in 1-D (the axes are independent): with g the correlation taps (F of them) the
# reference computes, before downsampling,
#     y[k] = sum_n x[n] * g[n*up - k + p0],   k in [0, L),  L = N*up + p0 + p1 - F + 1.
# A transposed convolution with stride `up` and taps w computes
#     t[o] = sum_n x[n] * w[o - n*up],         o in [0, (N-1)*up + F),
# so with w = reversed g (which is f itself unless flip_filter) y[k] = t[k + F - 1 - p0]: the
# polyphase sum, skipping every product with an inserted zero. What remains is a crop/pad of t,
# folded into the transposed conv's own (symmetric, non-negative) padding where possible.
# Downsampling-only uses a strided convolution, which never computes the discarded outputs.
# Both stay depthwise (groups = channels): measured on CPU, grouped kernels beat folding the
# channels into the batch dimension by 2-3x for these shapes.


def _pad_or_crop(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    # F.pad crops for negative amounts; skip the call when it would be a no-op.
    return F.pad(x, pads) if any(pads) else x


def _upfirdn_pass(x, g, upx, upy, downx, downy, px0, px1, py0, py1):
    """One depthwise pass over x [NCHW] with correlation taps g [fh, fw] (either may be 1)."""
    c = x.shape[1]
    fh, fw = static_shape(g)  # plain ints: padding arithmetic on traced sizes warns under torch.jit.trace
    if upx == 1 and upy == 1:
        x = _pad_or_crop(x, [px0, px1, py0, py1])
        # A materialised (not expanded) weight: CPU kernels run 2x slower on a zero-stride one.
        w = g[None, None].repeat(c, 1, 1, 1)  # [C1hw]
        return F.conv2d(x, w, stride=(downy, downx), groups=c)
    # Offsets of the wanted window relative to the full transposed-conv output, per side.
    ex0, ex1 = px0 - fw + 1, upx + px1 - fw
    ey0, ey1 = py0 - fh + 1, upy + py1 - fh
    # The transposed conv can only crop, and equally on both sides of an axis.
    tx = max(0, -max(ex0, ex1))
    ty = max(0, -max(ey0, ey1))
    w = g.flip([0, 1])[None, None].repeat(c, 1, 1, 1)  # [C1hw]
    x = F.conv_transpose2d(x, w, stride=(upy, upx), padding=(ty, tx), groups=c)
    x = _pad_or_crop(x, [ex0 + tx, ex1 + tx, ey0 + ty, ey1 + ty])
    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return x


def _upfirdn2d_fast(x, f, up, down, padding, flip_filter, gain):
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    g = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        g = g.flip(list(range(g.ndim)))
    if g.ndim == 2:
        return _upfirdn_pass(x, g, upx, upy, downx, downy, px0, px1, py0, py1)
    x = _upfirdn_pass(x, g[None, :], upx, 1, downx, 1, px0, px1, 0, 0)
    return _upfirdn_pass(x, g[:, None], 1, upy, 1, downy, 0, 0, py0, py1)


# ---------------------------------------------------------------------------------------------
# Public API


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: IntPair = 1,
    down: IntPair = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Upsample, pad, filter and downsample a batch of images ``x`` [NCHW] (see module docstring).

    ``f`` comes from ``setup_filter`` (float32, 1-D separable or 2-D) or is None for identity.
    ``up``/``down`` are an int or (x, y); ``padding`` an int, (x, y) or (x0, x1, y0, y1), in
    upsampled pixels.
    """
    if not (isinstance(x, torch.Tensor) and x.ndim == 4):
        raise ValueError("x must be a 4-D tensor [N, C, H, W]")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if not (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32):
        raise ValueError("f must be a float32 1-D or 2-D tensor from setup_filter()")
    if f.requires_grad:
        raise ValueError("f must not require grad (filters are fixed)")
    args = (x, f, _parse_scaling(up), _parse_scaling(down), _parse_padding(padding), flip_filter, gain)
    if resolve_impl("upfirdn2d", impl) == "fast":
        return _upfirdn2d_fast(*args)
    return _upfirdn2d_ref(*args)


def filter2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Filter without resampling; the implicit padding keeps the output the size of the input."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    # An even-length filter cannot be centred, so the extra tap goes before the sample.
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: IntPair = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Upsample by ``up``; by default the output is exactly ``up`` times the input size.

    The extra ``up * up`` gain compensates for the inserted zeros, so constants are preserved.
    """
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [
        px0 + (fw + upx - 1) // 2,
        px1 + (fw - upx) // 2,
        py0 + (fh + upy - 1) // 2,
        py1 + (fh - upy) // 2,
    ]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    down: IntPair = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Downsample by ``down``; by default the output is the input size divided by ``down``."""
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [
        px0 + (fw - downx + 1) // 2,
        px1 + (fw - downx) // 2,
        py0 + (fh - downy + 1) // 2,
        py1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
