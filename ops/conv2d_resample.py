"""2-D convolution combined with anti-aliased up/downsampling, as used by every conv layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .impl import check_impl, static_shape
from .upfirdn2d import Padding, _get_filter_size, _parse_padding, upfirdn2d


def _conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    # F.conv2d cross-correlates; flip_weight=False asks for a true convolution.
    if not flip_weight:
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Convolve ``x`` [NCHW] with ``w`` [O, C/groups, kh, kw], upsampling and/or downsampling by
    integer factors with the low-pass filter ``f`` (from ``setup_filter``; None = identity).

    ``padding`` is in upsampled pixels and is applied once, up front. Equivalent to: upsample
    (zero insertion + filter with gain up**2), convolve, filter + decimate; each branch below
    reorders those steps so that no work is spent on zeros or on discarded outputs. ``impl``
    selects the upfirdn2d implementation.
    """
    check_impl(impl)
    if not (isinstance(x, torch.Tensor) and x.ndim == 4):
        raise ValueError("x must be a 4-D tensor")
    if not (isinstance(w, torch.Tensor) and w.ndim == 4 and w.dtype == x.dtype):
        raise ValueError("w must be a 4-D tensor with the dtype of x")
    if f is not None and not (isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32):
        raise ValueError("f must be None or a float32 1-D/2-D filter")
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ValueError("up and down must be ints >= 1")
    if not (isinstance(groups, int) and groups >= 1):
        raise ValueError("groups must be an int >= 1")
    out_channels, in_channels_per_group, kh, kw = static_shape(w)
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Extra padding so that the filter is centred and sizes come out as in*up / in/down.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    pads = [px0, px1, py0, py1]

    # 1x1 kernel commutes with spatial filtering: filter at the lower resolution.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=pads, flip_filter=flip_filter, impl=impl)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pads, gain=up**2, flip_filter=flip_filter, impl=impl)

    # Downsampling only: low-pass first, then a strided conv computes just the kept outputs.
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=pads, flip_filter=flip_filter, impl=impl)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: a stride-`up` transposed conv does zero insertion + conv in one go; the
    # low-pass filter follows. conv_transpose2d wants weights as [I, O/groups, kh, kw] and
    # flips them relative to conv2d, hence the transpose and the inverted flip_weight.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)  # [IOkk]
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)  # [GOIkk]
            w = w.transpose(1, 2)  # [GIOkk]
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        # The transposed conv's full output is larger than the padded, zero-inserted image by
        # (k - 1) before and (k - up) after; the transposed conv can crop symmetrically itself,
        # the remainder is left to upfirdn2d's padding.
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        pads = [px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt]
        x = upfirdn2d(x, f, padding=pads, gain=up**2, flip_filter=flip_filter, impl=impl)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl=impl)
        return x

    # No resampling and padding conv2d can express (symmetric, non-negative): plain conv.
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Anything else (asymmetric or negative padding): pad/crop explicitly, then convolve.
    x = upfirdn2d(x, None, padding=pads, impl=impl)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)
