"""Importing official network pickles without executing them.

The pickles are built here, without NVIDIA code: fake `torch_utils.persistence` and `dnnlib.util`
modules stand in for the official ones, and objects reduce to `_reconstruct_persistent_obj(meta)` with
`meta` laid out like the official persistence format (type, version, module_src, class_name, state).
Weights come from our own tiny networks so an import can be checked bit for bit.
"""

from __future__ import annotations

import collections
import copy
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from models import Discriminator, Generator, UnsafePickleError, UnsupportedPickleError, load_network
from models.serialization.official_pickle import load_official_pickle
from models.serialization.snapshot import lookup_class
from stages.convert import cli as convert_stage


def _tiny_g(c_dim: int) -> Generator:
    return Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=16, img_channels=3,
                     mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 256, "channel_max": 16})


def _tiny_d(c_dim: int) -> Discriminator:
    return Discriminator(c_dim, img_resolution=16, img_channels=3, channel_base=256, channel_max=16)


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Fresh networks have zero biases and w_avg; perturb everything so a mis-mapped tensor shows.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen) * 0.1)
    return module.eval().requires_grad_(False)


@pytest.fixture
def fake_nvidia(monkeypatch):
    """Fake `torch_utils.persistence` and `dnnlib.util` modules, removed again by monkeypatch."""
    return install_fake_nvidia(monkeypatch)


def install_fake_nvidia(monkeypatch) -> types.SimpleNamespace:
    calls = []

    def _reconstruct_persistent_obj(meta):  # what the official loader would run; must never be called
        calls.append(meta)
        raise AssertionError("the real persistence hook was called")

    class EasyDict(dict):
        pass

    # pickle writes globals by __module__ + __qualname__, so make these look module-level.
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils.persistence = persistence
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    dnnlib.util = util
    for name, mod in [("torch_utils", torch_utils), ("torch_utils.persistence", persistence),
                      ("dnnlib", dnnlib), ("dnnlib.util", util)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict, calls=calls)


class FakePersistent:
    """Pickles exactly like an official `@persistent_class` instance."""

    def __init__(self, fake, class_name: str, state: dict, module_src: str) -> None:
        self.fake, self.class_name, self.state, self.module_src = fake, class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name,
                    state=self.state)
        return (self.fake.reconstruct, (meta,), None)


def _easy(fake, value):
    if isinstance(value, dict):
        return fake.EasyDict({k: _easy(fake, v) for k, v in value.items()})
    return value


def _record(fake, module: torch.nn.Module, src: str, init_kwargs: dict | None = None) -> FakePersistent:
    """Official-style state of `module`: torch's own Module fields plus init args and a numpy scalar."""
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, None if v is None else torch.nn.Parameter(v.detach().clone(), requires_grad=False))
            for k, v in module._parameters.items()),
        "_buffers": collections.OrderedDict(
            (k, None if v is None else v.detach().clone()) for k, v in module._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict(
            (k, None if v is None else _record(fake, v, src)) for k, v in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": _easy(fake, copy.deepcopy(init_kwargs or {})),
        "weight_gain": np.float64(0.25),  # the official layers keep numpy scalars like this
    }
    return FakePersistent(fake, type(module).__name__, state, src)


def _official_pickle(fake, path, c_dim: int, src: str, protocol: int = pickle.DEFAULT_PROTOCOL,
                     flat_synthesis: bool = False):
    G = _randomize(_tiny_g(c_dim), 1)
    D = _randomize(_tiny_d(c_dim), 2)
    G_ema = _randomize(_tiny_g(c_dim), 3)
    g_kwargs = copy.deepcopy(G.init_kwargs)
    if flat_synthesis:  # StyleGAN3-repo `networks_stylegan2`: synthesis kwargs flat, plus a speed switch
        g_kwargs.update(g_kwargs.pop("synthesis_kwargs"), fused_modconv_default="inference_only")
    # Buffers shaped like the augmentation pipeline's (this project's once it exists, which the importer
    # then rebuilds strictly), with a non-default `p` to check that it survives.
    aug_cls = lookup_class("AugmentPipe")
    aug = aug_cls(xflip=1, rotate90=1) if aug_cls is not None else torch.nn.Module()
    if aug_cls is None:
        aug.register_buffer("p", torch.zeros([]))
    aug.p.fill_(0.3)
    data = {
        "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "x.zip",
                                "resolution": 16, "use_labels": c_dim > 0},
        "G": _record(fake, G, src, g_kwargs),
        "D": _record(fake, D, src, D.init_kwargs),
        "G_ema": _record(fake, G_ema, src, g_kwargs),
        "augment_pipe": FakePersistent(fake, "AugmentPipe", {
            **_record(fake, aug, src).state, "_init_kwargs": fake.EasyDict(xflip=1, rotate90=1)}, src),
    }
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=protocol)
    return G, D, G_ema


def _marker_src(marker) -> str:
    # What a hostile pickle could carry; the official loader would exec this.
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\nclass Generator: pass\n"


def _inputs(c_dim: int):
    gen = torch.Generator().manual_seed(7)
    z = torch.randn([3, 8], generator=gen)
    c = torch.randn([3, c_dim], generator=gen) if c_dim else torch.zeros([3, 0])
    return z, c


@pytest.mark.parametrize("c_dim", [0, 3])
@pytest.mark.parametrize("protocol", [2, 4])
def test_import_is_bit_exact_and_never_executes(fake_nvidia, tmp_path, c_dim, protocol):
    marker = tmp_path / "executed.txt"
    pkl = tmp_path / "network-snapshot-000000.pkl"
    G, D, G_ema = _official_pickle(fake_nvidia, pkl, c_dim, _marker_src(marker), protocol=protocol)

    data = load_network(pkl)

    assert not marker.exists() and fake_nvidia.calls == []
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    z, c = _inputs(c_dim)
    for key, ref in (("G", G), ("G_ema", G_ema)):
        net = data[key]
        assert isinstance(net, Generator) and not net.training
        assert all(not p.requires_grad for p in net.parameters())
        assert torch.equal(net(z, c, noise_mode="const"), ref(z, c, noise_mode="const"))
        assert torch.equal(net.mapping.w_avg, ref.mapping.w_avg)
    img = G(z, c, noise_mode="const")
    assert isinstance(data["D"], Discriminator)
    assert torch.equal(data["D"](img, c), D(img, c))
    assert data["training_set_kwargs"]["resolution"] == 16
    aug = data["augment_pipe"]
    if isinstance(aug, dict):  # until this project's AugmentPipe exists
        assert aug["init_kwargs"] == {"xflip": 1, "rotate90": 1}
        assert float(aug["state_dict"]["p"]) == pytest.approx(0.3)
    else:
        assert type(aug).__name__ == "AugmentPipe" and not aug.training
        assert float(aug.p) == pytest.approx(0.3)


def test_stylegan3_repo_stylegan2_layout(fake_nvidia, tmp_path):
    pkl = tmp_path / "sg3repo.pkl"
    G, _, _ = _official_pickle(fake_nvidia, pkl, 0, "class Generator: pass\n", flat_synthesis=True)
    data = load_official_pickle(pkl)
    z, c = _inputs(0)
    assert torch.equal(data["G"](z, c, noise_mode="const"), G(z, c, noise_mode="const"))
    assert data["G"].init_kwargs["synthesis_kwargs"]["channel_max"] == 16


def test_alias_free_generator_refused(fake_nvidia, tmp_path):
    pkl = tmp_path / "sg3.pkl"
    _official_pickle(fake_nvidia, pkl, 0, "class SynthesisInput: pass\nclass Generator: pass\n")
    with pytest.raises(UnsupportedPickleError, match="StyleGAN3"):
        load_network(pkl)


def _dump(obj, path) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


class _Reduce:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def test_reduce_gadget_os_system_refused(tmp_path):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    _dump({"G": _Reduce(os.system, f"touch {marker}")}, pkl)
    with pytest.raises(UnsafePickleError, match=rf"{os.system.__module__}\.system"):
        load_network(pkl)
    assert not marker.exists()


def test_builtins_eval_refused(tmp_path):
    pkl = tmp_path / "evil.pkl"
    _dump(_Reduce(eval, "1 + 1"), pkl)
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_official_pickle(pkl)


def test_tensorflow_pickle_recognised_by_torch_importer(monkeypatch, tmp_path):
    class Network:  # stand-in for dnnlib.tflib.network.Network
        def __getstate__(self):
            return {"version": 4, "name": "G", "static_kwargs": {}, "variables": []}

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    for name in ("dnnlib", "dnnlib.tflib"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    tf_module = types.ModuleType("dnnlib.tflib.network")
    tf_module.Network = Network
    monkeypatch.setitem(sys.modules, "dnnlib.tflib.network", tf_module)
    pkl = tmp_path / "tf.pkl"
    _dump((Network(), Network(), Network()), pkl)
    # The PyTorch-pickle importer recognises the TF layout and says so; load_network routes such
    # files to models.serialization.tf_pickle instead (tests/test_tf_legacy.py).
    with pytest.raises(UnsupportedPickleError, match=r"TensorFlow.*not supported"):
        load_official_pickle(pkl)


def test_truncated_pickle_clear_error(fake_nvidia, tmp_path):
    pkl = tmp_path / "net.pkl"
    _official_pickle(fake_nvidia, pkl, 0, "")
    pkl.write_bytes(pkl.read_bytes()[:5000])
    with pytest.raises(UnsupportedPickleError, match="truncated or corrupt"):
        load_network(pkl)


def test_convert_stage(fake_nvidia, tmp_path, capsys):
    pkl = tmp_path / "net.pkl"
    G, _, _ = _official_pickle(fake_nvidia, pkl, 3, "")
    dest = tmp_path / "out" / "net.safetensors"
    assert convert_stage.main(["--source", str(pkl), "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "G_ema" in out and "16x16" in out and "parameters" in out

    data = load_network(dest)
    z, c = _inputs(3)
    assert torch.equal(data["G"](z, c, noise_mode="const"), G(z, c, noise_mode="const"))
    assert data["training_set_kwargs"]["use_labels"] is True
    aug = data["augment_pipe"]
    p = aug["state_dict"]["p"] if isinstance(aug, dict) else aug.p
    assert float(p) == pytest.approx(0.3)


def test_convert_stage_errors_are_one_line(tmp_path, capsys):
    assert convert_stage.main(["--source", str(tmp_path / "missing.pkl"), "--dest", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m stages.convert: error:") and err.count("\n") == 1 and "Traceback" not in err

    evil = tmp_path / "evil.pkl"
    _dump(_Reduce(os.system, "true"), evil)
    assert convert_stage.main(["--source", str(evil), "--dest", str(tmp_path / "o")]) == 2  # refused: bad input
    err = capsys.readouterr().err
    assert "system" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
