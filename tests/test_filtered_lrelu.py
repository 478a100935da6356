"""ops.filtered_lrelu: against an independent formulation, closed forms, fast vs ref, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ops
from models.stylegan3.filters import design_lowpass_filter
from ops import impl as ops_impl

IMPLS = ["ref", "fast"]


def _rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _as_2d(f: torch.Tensor | None) -> torch.Tensor:
    if f is None:
        return torch.ones(1, 1, dtype=torch.float64)
    f = f.double()
    return f if f.ndim == 2 else torch.outer(f, f)


def _independent(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    """The definition, written directly with torch.nn.functional: explicit zero insertion, 2-D
    convolution (conv2d correlates, so the kernel is flipped unless flip_filter), leaky ReLU,
    2-D convolution, then striding."""
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    if b is not None:
        x = x + b.reshape(1, -1, 1, 1)
    z = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, [px0, px1, py0, py1])  # negative amounts crop
    ku = _as_2d(fu) * up**2  # the inserted zeros would otherwise dim the signal by up^2
    ku = ku if flip_filter else ku.flip([0, 1])
    z = F.conv2d(z, ku[None, None].repeat(c, 1, 1, 1), groups=c)
    z = torch.where(z >= 0, z, slope * z) * gain
    if clamp is not None:
        z = z.clamp(-clamp, clamp)
    kd = _as_2d(fd)
    kd = kd if flip_filter else kd.flip([0, 1])
    z = F.conv2d(z, kd[None, None].repeat(c, 1, 1, 1), groups=c)
    return z[:, :, ::down, ::down]


def _filters(kind: str, up: int, down: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """StyleGAN3-style filters: `filter_size` (here 3) taps per unit of the lower rate, cutoff 1,
    running at fs = 2 * max(up, down) (so that the cutoff sits at the Nyquist of the slower grid)."""
    fs = 2 * max(up, down)
    fu = design_lowpass_filter(3 * up if up > 1 else 1, cutoff=1, width=1, fs=fs)
    if kind == "none":
        return None, None
    if kind == "asym2d":  # a filter that is not symmetric exposes flips and transposes
        fu2 = torch.arange(1.0, 1 + 3 * 4).reshape(3, 4) ** 1.5
        return fu2 / fu2.sum(), (torch.arange(1.0, 6) / 15)
    radial = kind == "radial"
    fd = design_lowpass_filter(3 * down if down > 1 else 1, cutoff=1, width=1, fs=fs, radial=radial)
    return fu, fd


CASES = [
    # up, down, padding
    (1, 1, (0, 0, 0, 0)),
    (2, 2, (5, 4, 5, 4)),
    (2, 1, (3, 2, 1, 4)),
    (1, 2, (2, 2, 0, 1)),
    (4, 2, (-2, 5, 7, -1)),
    (2, 4, (6, 6, 6, 6)),
    (4, 4, (11, 10, 11, 10)),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["separable", "radial", "asym2d", "none"])
def test_matches_independent_formulation(kind, impl):
    x = _rand(2, 3, 9, 10)
    b = _rand(3, seed=1)
    for up, down, padding in CASES:
        fu, fd = _filters(kind, up, down)
        if kind == "radial" and fd is not None:
            assert fd.ndim == 2
        for flip_filter in (False, True):
            for gain, slope, clamp in ((math.sqrt(2), 0.2, None), (1.3, 0.05, 0.4), (1.0, 1.0, None)):
                kw = dict(up=up, down=down, padding=padding, gain=gain, slope=slope, clamp=clamp,
                          flip_filter=flip_filter)
                y = ops.filtered_lrelu(x, fu, fd, b, impl=impl, **kw)
                expected = _independent(x, fu, fd, b, **kw)
                assert y.shape == expected.shape and y.dtype == x.dtype
                torch.testing.assert_close(y, expected, msg=f"{kind} {kw}")


def test_output_size_formula():
    fu = design_lowpass_filter(12, cutoff=2, width=2, fs=16)
    fd = design_lowpass_filter(12, cutoff=2, width=2, fs=16, radial=True)
    x = torch.zeros(1, 2, 38, 38)
    # StyleGAN3-T/R at 256 px, layer L0: 38 (36 + k - 1) samples in, 36 out.
    y = ops.filtered_lrelu(x, fu, fd, up=2, down=2, padding=[9, 8, 9, 8])
    assert y.shape == (1, 2, 36, 36)
    # (38 * 2 + pad - 11 - 11 + 1) // 2: width pad 5 -> 30, height pad 8 -> 31 (rounds up).
    assert ops.filtered_lrelu(x, fu, fd, up=2, down=2, padding=[3, 2, 0, 8]).shape == (1, 2, 31, 30)
    assert ops.filtered_lrelu(x[..., :7], None, None, padding=[1, 2, 0, -3]).shape == (1, 2, 35, 10)


@pytest.mark.parametrize("impl", IMPLS)
def test_constant_input_closed_form(impl):
    # Unit-DC-gain filters and the up^2 gain keep a constant c constant away from the borders, so the
    # interior is exactly the activation of the constant: gain * c for c > 0, gain * slope * c for c < 0.
    fu = design_lowpass_filter(12, cutoff=1, width=1, fs=4)
    fd = design_lowpass_filter(12, cutoff=1, width=1, fs=4, radial=True)
    x = torch.cat([torch.full([1, 1, 24, 24], 0.7), torch.full([1, 1, 24, 24], -0.7)], dim=1).double()
    y = ops.filtered_lrelu(x, fu, fd, b=torch.tensor([0.1, -0.1]).double(), up=2, down=2, padding=11,
                           gain=1.5, slope=0.25, impl=impl)
    interior = y[:, :, 8:-8, 8:-8]
    torch.testing.assert_close(interior[:, 0], torch.full_like(interior[:, 0], 1.5 * 0.8), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(interior[:, 1], torch.full_like(interior[:, 1], 1.5 * 0.25 * -0.8), rtol=1e-5,
                               atol=1e-5)
    # The clamp acts before the downsampling filter, so it caps the constant.
    y = ops.filtered_lrelu(x, fu, fd, up=2, down=2, padding=11, gain=1.5, clamp=0.5, impl=impl)
    torch.testing.assert_close(y[0, 0, 8:-8, 8:-8], torch.full([8, 8], 0.5).double(), rtol=1e-5, atol=1e-5)


def test_fast_equals_ref_float32_on_stylegan3_layers():
    # Layer geometries of the official StyleGAN3-T (separable) and -R (radial) at 256 px.
    x = _rand(2, 4, 38, 38, dtype=torch.float32) * 3
    b = _rand(4, seed=1, dtype=torch.float32)
    fu = design_lowpass_filter(12, cutoff=2, width=2 * 6.0, fs=32)
    for fd in (fu, design_lowpass_filter(12, cutoff=2.5, width=2 * 5.5, fs=32, radial=True)):
        kw = dict(up=2, down=2, padding=[9, 8, 9, 8], clamp=256)
        a = ops.filtered_lrelu(x, fu, fd, b, impl="ref", **kw)
        f = ops.filtered_lrelu(x, fu, fd, b, impl="fast", **kw)
        torch.testing.assert_close(f, a, rtol=1e-5, atol=1e-5)
    # ToRGB: identity filters, no padding, linear (slope 1).
    a = ops.filtered_lrelu(x, None, None, b, gain=1, slope=1, clamp=0.5, impl="ref")
    f = ops.filtered_lrelu(x, None, None, b, gain=1, slope=1, clamp=0.5, impl="fast")
    assert torch.equal(a, f)
    torch.testing.assert_close(f, (x + b.reshape(1, -1, 1, 1)).clamp(-0.5, 0.5))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["separable", "radial"])
def test_gradcheck_and_gradgradcheck(kind, impl):
    for up, down, padding in [(2, 2, (4, 3, 4, 3)), (1, 2, (1, 2, 2, 1)), (2, 1, (2, 1, 3, 2))]:
        fu, fd = _filters(kind, up, down)
        x = _rand(1, 2, 4, 5, seed=up + 2 * down).requires_grad_(True)
        b = (_rand(2, seed=9) * 0.1).requires_grad_(True)

        def fn(x, b, fu=fu, fd=fd, up=up, down=down, padding=padding):
            return ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, clamp=0.9, impl=impl)

        assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)


def test_bad_arguments_raise():
    x = torch.zeros(1, 2, 6, 6)
    f = design_lowpass_filter(4, cutoff=1, width=1, fs=4)
    with pytest.raises(ValueError, match="'ref', 'fast', 'auto'"):
        ops.filtered_lrelu(x, impl="cuda")
    with pytest.raises(ValueError, match="4-D"):
        ops.filtered_lrelu(x[0])
    with pytest.raises(ValueError, match="float32"):
        ops.filtered_lrelu(x, fu=f.double())
    with pytest.raises(ValueError, match="b must be"):
        ops.filtered_lrelu(x, b=torch.zeros(3))
    with pytest.raises(ValueError, match="up and down"):
        ops.filtered_lrelu(x, up=0)
    with pytest.raises(ValueError, match="clamp"):
        ops.filtered_lrelu(x, clamp=-1)
    with pytest.raises(ValueError, match="empty"):
        ops.filtered_lrelu(x, fu=f, fd=f, padding=-2)


def test_implementation_is_recorded():
    ops_impl._reset_for_tests()
    ops.filtered_lrelu(torch.zeros(1, 1, 4, 4))
    assert ops.implementations_in_use()["filtered_lrelu"] == "fast"
    ops.filtered_lrelu(torch.zeros(1, 1, 4, 4), impl="ref")
    assert ops.implementations_in_use()["filtered_lrelu"] == "ref"
