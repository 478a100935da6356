"""StyleGAN3 (alias-free) generator: official sizes and names, semantics of every option, EMAs,
snapshots and code-free import of official pickles.

Numerical parity with the official network (state dict copied 1:1, outputs compared) needs a
checkout of the official code, which is never a dependency, so it is measured outside the suite.
"""

from __future__ import annotations

import collections
import copy
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.signal
import torch

from models import Discriminator, StyleGAN3Generator, UnsupportedPickleError, load_network
from models.serialization.snapshot import load_snapshot, read_header, save_snapshot
from models.stylegan3.filters import design_lowpass_filter
from models.stylegan3.schedule import layer_schedule
from models.stylegan3.synthesis_layer import resampling_padding

Z = W = 8


def make_g(res: int = 16, c_dim: int = 0, **kwargs) -> StyleGAN3Generator:
    """A tiny generator: 6 layers, at most 16 channels."""
    kw = dict(channel_base=256, channel_max=16, num_layers=6, num_critical=2, **kwargs)
    return StyleGAN3Generator(z_dim=Z, c_dim=c_dim, w_dim=W, img_resolution=res, img_channels=3,
                              mapping_kwargs=dict(num_layers=2), **kw)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every parameter and the EMAs so that a mis-mapped or ignored tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.parameters():
            t.add_(torch.randn(t.shape, generator=gen) * 0.1)
        for name, t in module.named_buffers():
            if name.endswith("magnitude_ema"):
                t.fill_(float(torch.rand([], generator=gen)) + 0.5)
            elif name.endswith("w_avg"):
                t.copy_(torch.randn(t.shape, generator=gen))
    return module.eval().requires_grad_(False)


def inputs(n: int, c_dim: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([n, Z], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim else torch.zeros([n, 0])
    return z, c


# ---------------------------------------------------------------------------------------------
# Official sizes and names


def _official_config(cfg: str, res: int) -> StyleGAN3Generator:
    kw = dict(channel_base=32768, channel_max=512)
    if cfg == "r":  # train.py --cfg=stylegan3-r: 1x1 convs, twice the feature maps, radial filters
        kw = dict(channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True)
    with torch.device("meta"):  # shapes only: no memory, no time
        return StyleGAN3Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                                  mapping_kwargs=dict(num_layers=2), **kw)


@pytest.mark.parametrize(("cfg", "res", "millions"), [("t", 1024, 22.31), ("t", 256, 28.47),
                                                      ("r", 1024, 15.09), ("r", 256, 18.82)])
def test_official_parameter_counts(cfg, res, millions):
    G = _official_config(cfg, res)
    assert sum(p.numel() for p in G.parameters()) / 1e6 == pytest.approx(millions, abs=0.005)
    assert G.num_ws == G.synthesis.num_ws == G.mapping.num_ws == 16


def test_official_layer_names_and_geometry():
    G = _official_config("t", 256)
    assert G.synthesis.layer_names == [
        "L0_36_512", "L1_36_512", "L2_36_512", "L3_52_512", "L4_52_512", "L5_84_512", "L6_84_512", "L7_148_512",
        "L8_148_512", "L9_148_362", "L10_276_256", "L11_276_181", "L12_276_128", "L13_256_128", "L14_256_3",
    ]
    L0 = G.synthesis.L0_36_512
    assert (L0.up_factor, L0.down_factor, L0.padding) == (2, 2, [9, 8, 9, 8])
    assert tuple(L0.down_filter.shape) == (12,)
    rgb = G.synthesis.L14_256_3
    assert rgb.up_filter is None and rgb.down_filter is None and rgb.padding == [0, 0, 0, 0]
    names = set(G.state_dict())
    for key in ("mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg", "synthesis.input.weight",
                "synthesis.input.affine.weight", "synthesis.input.affine.bias", "synthesis.input.transform",
                "synthesis.input.freqs", "synthesis.input.phases", "synthesis.L0_36_512.weight",
                "synthesis.L0_36_512.bias", "synthesis.L0_36_512.affine.weight", "synthesis.L0_36_512.magnitude_ema",
                "synthesis.L0_36_512.up_filter", "synthesis.L0_36_512.down_filter",
                "synthesis.L14_256_3.weight", "synthesis.L14_256_3.magnitude_ema"):
        assert key in names, key
    assert "synthesis.L14_256_3.up_filter" not in names  # None buffers, as official

    R = _official_config("r", 1024)
    assert R.synthesis.layer_names[:3] == ["L0_36_1024", "L1_36_1024", "L2_52_1024"]
    assert R.synthesis.layer_names[-3:] == ["L12_1044_64", "L13_1024_64", "L14_1024_3"]
    assert tuple(R.synthesis.L2_52_1024.down_filter.shape) == (12, 12)  # radial, not critically sampled
    assert R.synthesis.L2_52_1024.padding == [-2, -5, -2, -5]  # up 4, down 2
    assert tuple(R.synthesis.L13_1024_64.down_filter.shape) == (12,)  # critically sampled: separable


def test_schedule_closed_forms():
    bands = layer_schedule(256, 3, 32768, 512, num_layers=14, num_critical=2, first_cutoff=2,
                           first_stopband=2**2.1, last_stopband_rel=2**0.3, margin_size=10)
    assert len(bands) == 15
    # f_c grows geometrically from 2 to the output Nyquist 128 over the first 12 layers, then stays.
    ratios = [bands[i + 1].cutoff / bands[i].cutoff for i in range(12)]
    np.testing.assert_allclose(ratios, (128 / 2) ** (1 / 12))
    assert [b.cutoff for b in bands[12:]] == [128.0] * 3
    assert bands[0].sampling_rate == 16 and bands[0].size == 36  # 2 * 4.29 -> 16, plus 2 * 10 margin
    assert [b.size for b in bands[-2:]] == [256, 256]
    for b in bands:
        assert b.half_width == pytest.approx(max(b.stopband, b.sampling_rate / 2) - b.cutoff)
    assert bands[-1].channels == 3 and bands[0].channels == 512


def test_resampling_padding_gives_the_output_size():
    for in_size, out_size, k, up, down, tu, td in [(36, 36, 3, 2, 2, 12, 12), (36, 52, 1, 4, 2, 24, 12),
                                                   (84, 64, 3, 2, 2, 12, 12), (16, 16, 1, 1, 1, 1, 1)]:
        p0, p1 = resampling_padding(in_size, out_size, k, up, down, tu, td)
        length = (in_size + k - 1) * up + p0 + p1 - (tu - 1) - (td - 1)
        assert (length + down - 1) // down == out_size
        assert p0 - p1 in (up - 1, up)  # symmetric, then shifted by up / 2 (Appendix C.3)


# ---------------------------------------------------------------------------------------------
# Filters


def _response(taps: np.ndarray, freqs: np.ndarray, fs: float) -> np.ndarray:
    n = np.arange(len(taps)) - (len(taps) - 1) / 2
    return np.abs(np.exp(-2j * np.pi * np.outer(freqs, n) / fs) @ taps)


def test_separable_lowpass_passes_the_band_and_stops_the_rest():
    cutoff, half_width, fs = 4.0, 2.0, 32
    f = design_lowpass_filter(24, cutoff, 2 * half_width, fs).double().numpy()
    assert f.shape == (24,) and np.allclose(f, f[::-1]) and f.sum() == pytest.approx(1, abs=1e-6)
    assert _response(f, np.array([0.0]), fs)[0] == pytest.approx(1, abs=1e-6)
    assert _response(f, np.array([cutoff]), fs)[0] == pytest.approx(0.5, abs=0.01)  # firwin: -6 dB at f_c
    assert _response(f, np.linspace(cutoff + half_width, fs / 2, 50), fs).max() < 0.01
    assert design_lowpass_filter(1, cutoff, 1, fs) is None


def test_radial_lowpass_is_rotation_invariant():
    cutoff, width, fs = 3.0, 2.0, 16
    f = design_lowpass_filter(12, cutoff, width, fs, radial=True).double().numpy()
    assert f.shape == (12, 12) and f.sum() == pytest.approx(1, abs=1e-6)
    np.testing.assert_allclose(f, f.T, atol=1e-7)
    np.testing.assert_allclose(f, f[::-1, ::-1], atol=1e-7)
    separable = design_lowpass_filter(12, cutoff, width, fs).double().numpy()
    separable = np.outer(separable, separable)
    n = np.arange(12) - 5.5

    def response(taps, fx, fy):
        return abs(np.sum(taps * np.exp(-2j * np.pi * (fx * n[None, :] + fy * n[:, None]) / fs)))

    # Circular passband: at the cutoff and in the transition band the response along an axis equals the
    # response along a diagonal at the same radius; a separable (square) filter passes the diagonal.
    for r in (cutoff, cutoff + width / 2):
        d = r / np.sqrt(2)
        assert response(f, r, 0) == pytest.approx(response(f, d, d), abs=0.03)
        assert response(separable, d, d) - response(separable, r, 0) > 0.3
    # An odd length puts a tap at r = 0, where the jinc takes its limit instead of 0/0.
    odd = design_lowpass_filter(7, cutoff, 2.0, fs, radial=True)
    assert torch.isfinite(odd).all() and odd[3, 3] == odd.max()


def test_separable_filter_is_scipy_kaiser_design():
    # The layers' filters are buffers in official checkpoints; freshly built networks must design the same.
    taps = scipy.signal.firwin(12, 2.0, width=12.0, fs=32, window=("kaiser", scipy.signal.kaiser_beta(
        scipy.signal.kaiser_atten(12, 12.0 / 16))))
    torch.testing.assert_close(design_lowpass_filter(12, 2.0, 12.0, 32), torch.as_tensor(taps, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------
# Forward semantics


@pytest.mark.parametrize(("res", "c_dim"), [(16, 0), (32, 3)])
def test_output_shape_and_attributes(res, c_dim):
    torch.manual_seed(0)
    G = make_g(res, c_dim).eval()
    z, c = inputs(3, c_dim)
    with torch.no_grad():
        img = G(z, c if c_dim else None)
    assert img.shape == (3, 3, res, res) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.std() > 0
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels, G.num_ws) == (Z, c_dim, W, res, 3, 8)
    assert G.mapping(z, c).shape == (3, 8, W)


def test_noise_mode_is_accepted_and_ignored_and_paths_agree():
    torch.manual_seed(0)
    G = randomize(make_g(16, num_fp16_res=4, conv_clamp=256), 1)
    z, c = inputs(3, 0)
    with torch.no_grad():
        ref = G(z, c)
        for mode in ("const", "random", "none"):
            assert torch.equal(G(z, c, noise_mode=mode), ref)
        # fp16 layers run in float32 on CPU: identical to force_fp32.
        assert any(getattr(G.synthesis, n).use_fp16 for n in G.synthesis.layer_names)
        assert torch.equal(G(z, c, force_fp32=True), ref)
        ws = G.mapping(z, c)
        fused = G.synthesis(ws, fused_modconv=True)
        unfused = G.synthesis(ws, fused_modconv=False)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, c, noise_mode="bogus")
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(ws[:, 1:])
    with pytest.raises(ValueError, match="z must"):
        G(z[:, 1:], c)


def test_truncation_is_lerp_towards_w_avg():
    torch.manual_seed(0)
    G = randomize(make_g(16, c_dim=3), 2)
    z, c = inputs(4, 3)
    with torch.no_grad():
        ws = G.mapping(z, c)
        assert torch.equal(ws, ws[:, :1].expand_as(ws))  # one w broadcast to every layer
        expected = G.synthesis(G.mapping.w_avg.lerp(ws, 0.7))
        torch.testing.assert_close(G(z, c, truncation_psi=0.7), expected, rtol=0, atol=1e-6)
        cut = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=3)
        torch.testing.assert_close(cut[:, :3], G.mapping.w_avg.lerp(ws[:, :3], 0.7))
        assert torch.equal(cut[:, 3:], ws[:, 3:])
        torch.testing.assert_close(G.mapping(z, c, truncation_psi=0), G.mapping.w_avg.expand_as(ws))


def test_w_avg_updates_only_with_update_emas():
    torch.manual_seed(0)
    G = randomize(make_g(16), 3).train()
    z, c = inputs(6, 0)
    before = G.mapping.w_avg.clone()
    G.mapping(z, c)
    assert torch.equal(G.mapping.w_avg, before)  # training mode alone does not touch it
    w = G.mapping(z, c, update_emas=True)[:, 0]
    beta = G.mapping.w_avg_beta
    assert beta == 0.998  # the official StyleGAN3 default
    torch.testing.assert_close(G.mapping.w_avg, beta * before + (1 - beta) * w.mean(0))


def test_magnitude_ema_updates_only_with_update_emas():
    torch.manual_seed(0)
    G = randomize(make_g(16, magnitude_ema_beta=0.9), 4)
    z, c = inputs(4, 0)
    emas = lambda: {n: b.clone() for n, b in G.named_buffers() if n.endswith("magnitude_ema")}  # noqa: E731
    before = emas()
    with torch.no_grad():
        G(z, c)
        G.train()
        G(z, c)
        assert all(torch.equal(v, before[k]) for k, v in emas().items())
        ws = G.mapping(z, c)
        x0 = G.synthesis.input(ws[:, 0])  # the input of L0
        G.synthesis(ws, update_emas=True)
    after = emas()
    assert all(not torch.equal(v, before[k]) for k, v in after.items())  # every layer tracks its input
    # Closed form for the first layer: ema <- beta * ema + (1 - beta) * mean(x^2).
    name = f"synthesis.{G.synthesis.layer_names[0]}.magnitude_ema"
    torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * x0.square().mean())


def test_integer_translation_shifts_the_image():
    # The official gen_images.py convention: transform = inverse of the wanted translation, in units of
    # the image width. Every layer's sampling grid here is a multiple of 8 samples per unit, so a 4-pixel
    # shift at 32 px moves every feature map by whole samples: away from the borders the image moves
    # exactly, and the comparison fails by far for the wrong direction or no shift.
    torch.manual_seed(0)
    G = make_g(32).eval()
    z, c = inputs(2, 0)
    move = torch.eye(3)
    move[0, 2] = 4 / 32
    with torch.no_grad():
        img = G(z, c)
        G.synthesis.input.transform.copy_(torch.linalg.inv(move))
        moved = G(z, c)
    m = 4  # border pixels affected by padding
    torch.testing.assert_close(moved[..., m + 4 : -m], img[..., m : -m - 4], rtol=0, atol=1e-4)
    assert (moved[..., m : -m - 4] - img[..., m + 4 : -m]).abs().max() > 0.05 * img.abs().max()
    assert (moved[..., m:-m] - img[..., m:-m]).abs().max() > 0.05 * img.abs().max()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    G = randomize(make_g(16, c_dim=2), 5).train().requires_grad_(True)
    z, c = inputs(2, 2)
    G(z, c).square().sum().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------
# Snapshots


def test_snapshot_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    G = randomize(make_g(16, c_dim=3, use_radial_filters=True, conv_kernel=1), 6)
    G.synthesis.input.transform.copy_(torch.tensor([[0.8, -0.6, 0.1], [0.6, 0.8, -0.2], [0, 0, 1]]))
    D = Discriminator(3, img_resolution=16, img_channels=3, channel_base=256, channel_max=16).eval()
    path = save_snapshot(tmp_path / "net.safetensors", {"G": G, "G_ema": G, "D": D, "augment_pipe": None})
    header = read_header(path)
    assert header["groups"]["G"]["class_name"] == "StyleGAN3Generator"
    assert header["groups"]["D"]["class_name"] == "Discriminator"
    data = load_snapshot(path)
    z, c = inputs(3, 3)
    for key in ("G", "G_ema"):
        net = data[key]
        assert isinstance(net, StyleGAN3Generator) and not net.training
        assert net.init_kwargs == G.init_kwargs
        for a, b in zip(net.state_dict().values(), G.state_dict().values()):
            assert torch.equal(a, b)
        assert torch.equal(net(z, c, truncation_psi=0.7), G(z, c, truncation_psi=0.7))


# ---------------------------------------------------------------------------------------------
# Official pickles, faked without NVIDIA code (as in tests/test_legacy_pickle.py)

OFFICIAL_NAMES = {
    "StyleGAN3Generator": "Generator", "StyleGAN3MappingNetwork": "MappingNetwork",
    "StyleGAN3SynthesisNetwork": "SynthesisNetwork", "StyleGAN3SynthesisLayer": "SynthesisLayer",
}


@pytest.fixture
def fake_nvidia(monkeypatch):
    """`torch_utils.persistence._reconstruct_persistent_obj` and `dnnlib.util.EasyDict` stand-ins."""
    calls = []

    def _reconstruct_persistent_obj(meta):
        calls.append(meta)
        raise AssertionError("the real persistence hook was called")

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods = {name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib",
                                                      "dnnlib.util")}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["dnnlib.util"].EasyDict = EasyDict
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict, calls=calls)


class FakePersistent:
    """Pickles like an official `@persistent_class` instance."""

    def __init__(self, fake, class_name: str, state: dict, module_src: str) -> None:
        self.fake, self.class_name, self.state, self.module_src = fake, class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name,
                    state=self.state)
        return (self.fake.reconstruct, (meta,), None)


def _record(fake, module: torch.nn.Module, src: str, init_kwargs: dict | None = None) -> FakePersistent:
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, None if v is None else torch.nn.Parameter(v.detach().clone(), requires_grad=False))
            for k, v in module._parameters.items()),
        # None for the filters of layers without resampling, exactly as the official layers hold them.
        "_buffers": collections.OrderedDict(
            (k, None if v is None else v.detach().clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_modules": collections.OrderedDict(
            (k, None if v is None else _record(fake, v, src)) for k, v in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": init_kwargs or {},
        "size": np.broadcast_to(np.asarray(16), [2]),  # official layers keep numpy arrays like this
    }
    name = type(module).__name__
    return FakePersistent(fake, OFFICIAL_NAMES.get(name, name), state, src)


def _official_kwargs(fake, G: StyleGAN3Generator) -> dict:
    # As train.py records them: synthesis options flat, mapping_kwargs an EasyDict, numpy floats.
    kwargs = copy.deepcopy(G.init_kwargs)
    kwargs["mapping_kwargs"] = fake.EasyDict(kwargs["mapping_kwargs"])
    if "magnitude_ema_beta" in kwargs:
        kwargs["magnitude_ema_beta"] = np.float64(kwargs["magnitude_ema_beta"])
    return kwargs


SG3_SRC = "class SynthesisInput(torch.nn.Module): pass\nclass Generator(torch.nn.Module): pass\n"


def test_official_stylegan3_pickle_imports_bit_exact(fake_nvidia, tmp_path):
    torch.manual_seed(0)
    G = randomize(make_g(16, c_dim=3, magnitude_ema_beta=0.5 ** (32 / 20e3), conv_kernel=1,
                         use_radial_filters=True), 7)
    G_ema = randomize(copy.deepcopy(G), 8)
    D = randomize(Discriminator(3, img_resolution=16, img_channels=3, channel_base=256, channel_max=16), 9)
    marker = tmp_path / "executed"
    src = SG3_SRC + f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
    data = {
        "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "resolution": 16},
        "G": _record(fake_nvidia, G, src, _official_kwargs(fake_nvidia, G)),
        "D": _record(fake_nvidia, D, "class Discriminator: pass\n", D.init_kwargs),
        "G_ema": _record(fake_nvidia, G_ema, src, _official_kwargs(fake_nvidia, G_ema)),
        "augment_pipe": None,
    }
    pkl = tmp_path / "network-snapshot-000000.pkl"
    with open(pkl, "wb") as fh:
        pickle.dump(data, fh)

    nets = load_network(pkl)

    assert not marker.exists() and fake_nvidia.calls == []
    z, c = inputs(3, 3)
    for key, ref in (("G", G), ("G_ema", G_ema)):
        net = nets[key]
        assert isinstance(net, StyleGAN3Generator) and not net.training
        assert all(not p.requires_grad for p in net.parameters())
        assert torch.equal(net.mapping.w_avg, ref.mapping.w_avg)
        for psi in (1, 0.7):
            assert torch.equal(net(z, c, truncation_psi=psi), ref(z, c, truncation_psi=psi))
    assert isinstance(nets["D"], Discriminator)
    img = G(z, c)
    assert torch.equal(nets["D"](img, c), D(img, c))

    # ... and it converts to a native snapshot like any other network.
    path = save_snapshot(tmp_path / "converted.safetensors", {k: nets[k] for k in ("G", "D", "G_ema")})
    assert torch.equal(load_snapshot(path)["G_ema"](z, c), G_ema(z, c))


def test_official_stylegan3_pickle_with_unknown_option_is_refused(fake_nvidia, tmp_path):
    G = make_g(16)
    kwargs = _official_kwargs(fake_nvidia, G)
    kwargs["no_such_option"] = 1
    D = Discriminator(0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16)
    data = {"G": _record(fake_nvidia, G, SG3_SRC, kwargs), "D": _record(fake_nvidia, D, "", D.init_kwargs),
            "G_ema": _record(fake_nvidia, G, SG3_SRC, kwargs)}
    pkl = tmp_path / "net.pkl"
    with open(pkl, "wb") as fh:
        pickle.dump(data, fh)
    with pytest.raises(UnsupportedPickleError, match=r"StyleGAN3Generator.*no_such_option"):
        load_network(pkl)
