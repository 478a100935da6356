"""Tests for ops/: each op against an independent formulation, fast vs ref, and gradients."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import convolve2d

import ops
from ops import impl as ops_impl

IMPLS = ["ref", "fast"]


def _rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# bias_act

_INDEPENDENT_ACTS = {
    "linear": (lambda x: x, 1.0),
    "relu": (torch.relu, math.sqrt(2)),
    "lrelu": (lambda x: torch.where(x >= 0, x, 0.2 * x), math.sqrt(2)),
    "tanh": (torch.tanh, 1.0),
    "sigmoid": (lambda x: 1 / (1 + torch.exp(-x)), 1.0),
    "elu": (lambda x: torch.where(x > 0, x, torch.expm1(x)), 1.0),
    "selu": (lambda x: 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * torch.expm1(x)), 1.0),
    "softplus": (lambda x: torch.log1p(torch.exp(x)), 1.0),
    "swish": (lambda x: x / (1 + torch.exp(-x)), math.sqrt(2)),
}


def test_activation_table_defaults():
    assert set(ops.activation_funcs) == set(_INDEPENDENT_ACTS)
    for name, (_, gain) in _INDEPENDENT_ACTS.items():
        assert ops.activation_funcs[name].def_gain == pytest.approx(gain)
    assert ops.activation_funcs["lrelu"].def_alpha == 0.2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", list(_INDEPENDENT_ACTS))
def test_bias_act_matches_independent(act, impl):
    x = _rand(2, 3, 4, 5)
    b = _rand(3, seed=1)
    fn, gain = _INDEPENDENT_ACTS[act]
    expected = fn(x + b.reshape(1, 3, 1, 1)) * gain
    torch.testing.assert_close(ops.bias_act(x, b, act=act, impl=impl), expected)
    # Explicit gain and clamp.
    expected = (fn(x + b.reshape(1, 3, 1, 1)) * 0.5).clamp(-0.3, 0.3)
    torch.testing.assert_close(ops.bias_act(x, b, act=act, gain=0.5, clamp=0.3, impl=impl), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_bias_act_other_dims_alpha_and_no_bias(impl):
    x = _rand(3, 4, 5)
    for dim in range(3):
        b = _rand(x.shape[dim], seed=dim + 1)
        shape = [-1 if i == dim else 1 for i in range(3)]
        torch.testing.assert_close(ops.bias_act(x, b, dim=dim, impl=impl), x + b.reshape(shape))
    y = ops.bias_act(x, act="lrelu", alpha=0.1, gain=1, impl=impl)
    torch.testing.assert_close(y, F.leaky_relu(x, 0.1))
    # linear without bias must not hand back (and then mutate) the caller's tensor
    x0 = x.clone()
    ops.bias_act(x, act="linear", gain=2.0, clamp=0.1, impl=impl)
    torch.testing.assert_close(x, x0)
    with pytest.raises(ValueError):
        ops.bias_act(x, clamp=-1, impl=impl)
    with pytest.raises(ValueError):
        ops.bias_act(x, act="gelu", impl=impl)


def test_bias_act_fast_equals_ref_float32():
    x = _rand(2, 8, 6, 6, dtype=torch.float32)
    b = _rand(8, seed=3, dtype=torch.float32)
    for act in ops.activation_funcs:
        for clamp in (None, 0.7):
            a = ops.bias_act(x, b, act=act, clamp=clamp, impl="ref")
            f = ops.bias_act(x, b, act=act, clamp=clamp, impl="fast")
            assert torch.equal(a, f), act


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", list(_INDEPENDENT_ACTS))
def test_bias_act_gradgradcheck(act, impl):
    # Shift away from the kinks so finite differences are valid for relu/lrelu/clamp.
    x = _rand(2, 3, 3) + 0.05
    x = torch.where(x.abs() < 0.1, x + 0.3, x).requires_grad_(True)
    b = (_rand(3, seed=1) * 0.01).requires_grad_(True)
    fn = lambda x, b: ops.bias_act(x, b, act=act, clamp=1.7, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)


# ---------------------------------------------------------------------------------------------
# upfirdn2d


def _naive_upfirdn2d(x, f2d, up, down, pad, flip_filter, gain):
    """Literal definition with numpy/scipy: zero insertion, pad/crop, true 2-D convolution."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    x = x.detach().numpy()
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * upy, w * upx))
    u[:, :, ::upy, ::upx] = x
    u = np.pad(u, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
    u = u[:, :, max(-py0, 0) : u.shape[2] - max(-py1, 0), max(-px0, 0) : u.shape[3] - max(-px1, 0)]
    k = np.asarray(f2d, dtype=np.float64) * gain
    if flip_filter:
        k = k[::-1, ::-1]  # correlation == convolution with the reversed kernel
    out = np.stack([[convolve2d(u[i, j], k, mode="valid") for j in range(c)] for i in range(n)])
    return torch.from_numpy(np.ascontiguousarray(out[:, :, ::downy, ::downx]))


_FILTERS = {
    "4tap": ([1, 3, 3, 1], None),  # 2-D outer product, as the networks use it
    "asym2d": (np.arange(1, 13, dtype=np.float64).reshape(3, 4) ** 1.5, None),
    "sep5": ([1, 4, 2, 3, 1], True),
    "sep8": ([1, 2, 3, 5, 4, 3, 1, 1], None),  # >= 8 taps: separable by default
}
_CASES = [
    # up, down, padding
    ((1, 1), (1, 1), (0, 0, 0, 0)),
    ((2, 2), (1, 1), (2, 1, 2, 1)),
    ((1, 1), (2, 2), (1, 1, 1, 1)),
    ((2, 2), (2, 2), (3, 1, 0, 2)),
    ((3, 2), (1, 3), (-1, 4, 2, -2)),
    ((1, 2), (2, 1), (5, -1, 3, 3)),
]


def _as_2d(f):
    return f if f.ndim == 2 else torch.outer(f, f)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fname", list(_FILTERS))
def test_upfirdn2d_matches_naive(fname, impl):
    taps, sep = _FILTERS[fname]
    f = ops.setup_filter(taps, separable=sep)
    assert f.ndim == (1 if fname.startswith("sep") else 2)
    x = _rand(2, 3, 10, 9)
    for up, down, pad in _CASES:
        for flip in (False, True):
            for gain in (1, 2.5):
                y = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl=impl)
                expected = _naive_upfirdn2d(x, _as_2d(f).double(), up, down, pad, flip, gain)
                torch.testing.assert_close(y, expected, msg=f"{up} {down} {pad} {flip} {gain}")


def test_upfirdn2d_fast_equals_ref_float32():
    x = _rand(2, 4, 10, 9, dtype=torch.float32)
    for taps, sep in _FILTERS.values():
        f = ops.setup_filter(taps, separable=sep)
        for up, down, pad in _CASES:
            for flip in (False, True):
                kw = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=3.0)
                a = ops.upfirdn2d(x, f, impl="ref", **kw)
                b = ops.upfirdn2d(x, f, impl="fast", **kw)
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_resample_helpers_sizes_and_dc(impl):
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.ones(1, 2, 8, 6)
    up = ops.upsample2d(x, f, impl=impl)
    down = ops.downsample2d(x, f, impl=impl)
    filt = ops.filter2d(x, f, impl=impl)
    assert up.shape == (1, 2, 16, 12) and down.shape == (1, 2, 4, 3) and filt.shape == x.shape
    # Normalised filter + the up**2 gain of upsample2d keep a constant image constant away from borders.
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    torch.testing.assert_close(filt[..., 2:-2, 2:-2], torch.ones_like(filt[..., 2:-2, 2:-2]))
    sym6 = ops.setup_filter(np.linspace(-1, 1, 12) ** 2 + 0.1)
    assert sym6.ndim == 1
    assert ops.upsample2d(x, sym6, impl=impl).shape == (1, 2, 16, 12)
    assert ops.downsample2d(x, sym6, impl=impl).shape == (1, 2, 4, 3)


def test_setup_filter():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    torch.testing.assert_close(f.sum(), torch.tensor(1.0))
    torch.testing.assert_close(ops.setup_filter(None), torch.ones(1, 1))
    g = ops.setup_filter([1, 2, 3], separable=True, gain=4, flip_filter=True)
    torch.testing.assert_close(g, torch.tensor([3.0, 2.0, 1.0]) / 6 * 2)  # gain ** (ndim/2)
    t = torch.tensor([1.0, 1.0])
    ops.setup_filter(t)
    assert torch.equal(t, torch.tensor([1.0, 1.0]))  # caller's tensor untouched


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fname", ["4tap", "sep5"])
def test_upfirdn2d_gradgradcheck(fname, impl):
    taps, sep = _FILTERS[fname]
    f = ops.setup_filter(taps, separable=sep)
    x = _rand(1, 2, 4, 3).requires_grad_(True)
    cases = [((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1)), ((2, 1), (1, 2), (1, 0, 2, -1))]
    for up, down, pad in cases:
        fn = lambda x: ops.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=1.5, impl=impl)  # noqa: E731, B023
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


# ---------------------------------------------------------------------------------------------
# conv2d_resample


def _naive_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight):
    """Definition: zero-insert upsample + pad (in upsampled pixels), filter (gain up**2), conv,
    filter + decimate. Paddings chosen as in conv2d_resample so that sizes agree."""
    fw = f.shape[-1]
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0, py1 = px0, px1
        x = ops.upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up**2, impl="ref")
        x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
        return x
    if down > 1:
        p0 = padding + (fw - down + 1) // 2
        p1 = padding + (fw - down) // 2
        x = ops.upfirdn2d(x, f, padding=[p0, p1, p0, p1], impl="ref")
        x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
        return x[:, :, ::down, ::down]
    return F.conv2d(F.pad(x, [padding] * 4), w if flip_weight else w.flip([2, 3]), groups=groups)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize(("up", "down"), [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_resample_matches_naive(k, up, down, groups, impl):
    f = ops.setup_filter([1, 3, 3, 1])
    x = _rand(2, 4, 6, 6)
    w = _rand(6, 4 // groups, k, k, seed=1)
    for flip_weight in (True, False):
        kw = dict(up=up, down=down, padding=k // 2, groups=groups, flip_weight=flip_weight, impl=impl)
        y = ops.conv2d_resample(x, w, f, **kw)
        expected = _naive_conv2d_resample(x, w, f, up, down, k // 2, groups, flip_weight)
        assert y.shape == (2, 6, 6 * up // down, 6 * up // down)
        torch.testing.assert_close(y, expected)
    # flip_weight=False is true convolution == correlation with the spatially reversed kernel.
    a = ops.conv2d_resample(x, w, f, up=up, down=down, padding=k // 2, groups=groups, flip_weight=False, impl=impl)
    b = ops.conv2d_resample(x, w.flip([2, 3]), f, up=up, down=down, padding=k // 2, groups=groups, impl=impl)
    torch.testing.assert_close(a, b)


def test_conv2d_resample_asymmetric_padding_and_errors():
    x = _rand(1, 2, 5, 5)
    w = _rand(3, 2, 3, 3, seed=1)
    y = ops.conv2d_resample(x, w, padding=[2, 0, 1, -1])
    torch.testing.assert_close(y, F.conv2d(F.pad(x, [2, 0, 1, -1]), w))
    with pytest.raises(ValueError):
        ops.conv2d_resample(x, w.float())


@pytest.mark.parametrize("impl", IMPLS)
def test_conv2d_resample_gradgradcheck(impl):
    f = ops.setup_filter([1, 3, 3, 1])
    x = _rand(1, 2, 3, 3).requires_grad_(True)
    w = _rand(1, 2, 3, 3, seed=1).requires_grad_(True)
    for up, down in [(2, 1), (1, 2)]:
        fn = lambda x, w: ops.conv2d_resample(x, w, f, up=up, down=down, padding=1, impl=impl)  # noqa: E731, B023
        assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)


# ---------------------------------------------------------------------------------------------
# fma


@pytest.mark.parametrize("impl", IMPLS)
def test_fma(impl):
    a = _rand(2, 3, 4, 4).requires_grad_(True)
    b = _rand(2, 3, 1, 1, seed=1).requires_grad_(True)
    c = _rand(2, 1, 4, 4, seed=2).requires_grad_(True)
    torch.testing.assert_close(ops.fma(a, b, c, impl=impl), a * b + c)
    assert torch.autograd.gradcheck(lambda a, b, c: ops.fma(a, b, c, impl=impl), (a, b, c))
    assert torch.autograd.gradgradcheck(lambda a, b, c: ops.fma(a, b, c, impl=impl), (a, b, c))


# ---------------------------------------------------------------------------------------------
# modulated_conv2d


def _loop_modulated_conv(x, weight, styles, noise, up, padding, f, demodulate):
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i].reshape(1, -1, 1, 1)  # [OIkk]
        if demodulate:
            w = w / torch.sqrt(w.pow(2).sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        outs.append(ops.conv2d_resample(x[i : i + 1], w, f, up=up, padding=padding, impl="ref"))
    y = torch.cat(outs)
    return y if noise is None else y + noise


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("with_noise", [False, True])
def test_modulated_conv2d(up, demodulate, with_noise, impl):
    f = ops.setup_filter([1, 3, 3, 1])
    x = _rand(3, 4, 5, 5, dtype=torch.float32)
    weight = _rand(5, 4, 3, 3, seed=1, dtype=torch.float32)
    styles = _rand(3, 4, seed=2, dtype=torch.float32) + 1
    noise = _rand(3, 1, 5 * up, 5 * up, seed=3, dtype=torch.float32) if with_noise else None
    kw = dict(noise=noise, up=up, padding=1, resample_filter=f, demodulate=demodulate, impl=impl)
    fused = ops.modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    nonfused = ops.modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    expected = _loop_modulated_conv(x, weight, styles, noise, up, 1, f, demodulate)
    assert fused.shape == (3, 5, 5 * up, 5 * up)
    torch.testing.assert_close(fused, nonfused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_modulated_conv2d_fp16_prenormalisation_is_scale_invariant():
    # The float16 branch rescales weight/styles; demodulation must make that a no-op. Checked by
    # rescaling the inputs in float32, where the branch is off.
    x = _rand(2, 4, 5, 5, dtype=torch.float32)
    weight = _rand(3, 4, 3, 3, seed=1, dtype=torch.float32)
    styles = _rand(2, 4, seed=2, dtype=torch.float32)
    a = ops.modulated_conv2d(x, weight, styles, padding=1)
    b = ops.modulated_conv2d(x, weight * 1e3, styles * 1e-2, padding=1)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv2d_gradgradcheck(fused):
    f = ops.setup_filter([1, 3, 3, 1])
    x = _rand(2, 2, 3, 3).requires_grad_(True)
    weight = _rand(2, 2, 3, 3, seed=1)
    styles = (_rand(2, 2, seed=2) + 1).requires_grad_(True)
    noise = _rand(2, 1, 6, 6, seed=3)
    fn = lambda x, s: ops.modulated_conv2d(  # noqa: E731
        x, weight, s, noise=noise, up=2, padding=1, resample_filter=f, fused_modconv=fused
    )
    assert torch.autograd.gradcheck(fn, (x, styles), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, styles), fast_mode=True)


def test_modulated_conv2d_nonfused_traces():
    x = _rand(2, 4, 5, 5, dtype=torch.float32)
    weight = _rand(3, 4, 3, 3, seed=1, dtype=torch.float32)
    styles = _rand(2, 4, seed=2, dtype=torch.float32)
    f = ops.setup_filter([1, 3, 3, 1])
    fn = lambda x, s: ops.modulated_conv2d(x, weight, s, up=2, padding=1, resample_filter=f, fused_modconv=False)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(fn, (x, styles), check_trace=False)
    x2, s2 = _rand(2, 4, 5, 5, seed=7, dtype=torch.float32), _rand(2, 4, seed=8, dtype=torch.float32)
    torch.testing.assert_close(traced(x2, s2), fn(x2, s2))


# ---------------------------------------------------------------------------------------------
# impl dispatch


def test_invalid_impl_raises_with_choices():
    x = torch.zeros(1, 1, 4, 4)
    f = ops.setup_filter([1, 1])
    calls = [
        lambda: ops.bias_act(x, impl="cuda"),
        lambda: ops.upfirdn2d(x, f, impl="cuda"),
        lambda: ops.upsample2d(x, f, impl="cuda"),
        lambda: ops.fma(x, x, x, impl="cuda"),
        lambda: ops.conv2d_resample(x, torch.zeros(1, 1, 1, 1), impl="cuda"),
        lambda: ops.modulated_conv2d(x, torch.zeros(1, 1, 1, 1), torch.ones(1, 1), impl="cuda"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="'ref', 'fast', 'auto'"):
            call()


def test_implementations_in_use_records_and_logs(caplog):
    ops_impl._reset_for_tests()
    x = torch.zeros(1, 2, 4, 4)
    f = ops.setup_filter([1, 3, 3, 1])
    with caplog.at_level(logging.INFO, logger="ops.impl"):
        ops.bias_act(x, impl="ref")
        ops.upsample2d(x, f)  # auto
        ops.upsample2d(x, f)
        ops.fma(x, x, x, impl="fast")
    assert ops.implementations_in_use() == {"bias_act": "ref", "upfirdn2d": "fast", "fma": "fast"}
    messages = [r.getMessage() for r in caplog.records if r.name == "ops.impl"]
    assert sum("upfirdn2d" in m for m in messages) == 1  # logged once, not per call
    ops.bias_act(x, impl="auto")
    assert ops.implementations_in_use()["bias_act"] == "fast"
    # The returned dict is a snapshot, not the live registry.
    snapshot = ops.implementations_in_use()
    snapshot["bias_act"] = "bogus"
    assert ops.implementations_in_use()["bias_act"] == "fast"
