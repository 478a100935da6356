"""TensorFlow StyleGAN2(-ADA) pickles: restricted unpickling and conversion, on a TF-layout pickle built here."""

from __future__ import annotations

import io
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import Discriminator, Generator, UnsafePickleError, UnsupportedPickleError, load_network
from models.serialization.tf_pickle import is_tf_pickle, load_tf_network
from stages.generate.cli import main

RES = 16


class FakeTFNetwork:
    """Pickles like `dnnlib.tflib.network.Network`: NEWOBJ + BUILD with the official state keys."""

    def __init__(self, name: str, static_kwargs: dict, components: dict, variables: dict[str, np.ndarray]) -> None:
        self._state = {
            "version": 4, "name": name, "static_kwargs": static_kwargs, "components": components,
            "variables": list(variables.items()),
            # TF would exec this source; the importer must only ever record it.
            "build_module_src": "raise RuntimeError('executed pickled code')", "build_func_name": name,
        }

    def __getstate__(self) -> dict:
        return self._state

    def __setstate__(self, state: dict) -> None:
        self._state = state


FakeTFNetwork.__module__ = "dnnlib.tflib.network"
FakeTFNetwork.__qualname__ = FakeTFNetwork.__name__ = "Network"


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (noise strengths and style biases included), so each mapping matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith(("noise_const", "w_avg")):
                b.copy_(torch.randn(b.shape, generator=g))
    return module.eval().requires_grad_(False)


def tiny_nets(c_dim: int) -> tuple[Generator, Discriminator]:
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=RES, img_channels=3,
                  mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 256, "channel_max": 16})
    D = Discriminator(c_dim=c_dim, img_resolution=RES, img_channels=3, channel_base=256, channel_max=16,
                      mapping_kwargs={"num_layers": 0}, epilogue_kwargs={"mbstd_group_size": 4})
    return randomized(G, 1), randomized(D, 2)


# Inverse of the official TF -> PyTorch mapping, written out independently of models.serialization.tf_pickle.
def _n(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _conv(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(_n(t).transpose(2, 3, 1, 0))  # [O, I, kh, kw] -> [kh, kw, I, O]


def _conv_up(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(_conv(t)[::-1, ::-1])  # TF's transposed-conv kernel is flipped


def tf_generator(G: Generator, name: str) -> FakeTFNetwork:
    s = G.state_dict()
    mapping = {f"Dense{i}/{k}": (_n(s[f"mapping.fc{i}.weight"]).T if k == "weight" else _n(s[f"mapping.fc{i}.bias"]))
               for i in range(2) for k in ("weight", "bias")}
    if G.c_dim:
        mapping["LabelEmbed/weight"] = _n(s["mapping.embed.weight"]).T
        mapping["LabelEmbed/bias"] = _n(s["mapping.embed.bias"])
    syn: dict[str, np.ndarray] = {"4x4/Const/const": _n(s["synthesis.b4.const"])[None]}
    noise_idx = 0
    for r in (4, 8, 16):
        layers = [("conv1", "Conv")] if r == 4 else [("conv0", "Conv0_up"), ("conv1", "Conv1")]
        for ours, tf in [*layers, ("torgb", "ToRGB")]:
            p = f"synthesis.b{r}.{ours}."
            syn[f"{r}x{r}/{tf}/weight"] = (_conv_up if ours == "conv0" else _conv)(s[p + "weight"])
            syn[f"{r}x{r}/{tf}/bias"] = _n(s[p + "bias"])
            syn[f"{r}x{r}/{tf}/mod_weight"] = _n(s[p + "affine.weight"]).T
            syn[f"{r}x{r}/{tf}/mod_bias"] = _n(s[p + "affine.bias"]) - 1
            if ours != "torgb":
                syn[f"{r}x{r}/{tf}/noise_strength"] = _n(s[p + "noise_strength"])
                syn[f"noise{noise_idx}"] = _n(s[p + "noise_const"])[None, None]
                noise_idx += 1
    kwargs = dict(latent_size=8, dlatent_size=8, label_size=G.c_dim, resolution=RES, num_channels=3,
                  mapping_layers=2, fmap_base=128, fmap_max=16, truncation_psi=0.5)
    return FakeTFNetwork(name, kwargs, {
        "mapping": FakeTFNetwork(f"{name}_mapping", {}, {}, mapping),
        "synthesis": FakeTFNetwork(f"{name}_synthesis", {}, {}, syn),
    }, {"dlatent_avg": _n(s["mapping.w_avg"])})


def tf_discriminator(D: Discriminator) -> FakeTFNetwork:
    s = D.state_dict()
    v: dict[str, np.ndarray] = {}
    v["16x16/FromRGB/weight"], v["16x16/FromRGB/bias"] = _conv(s["b16.fromrgb.weight"]), _n(s["b16.fromrgb.bias"])
    for r in (16, 8):
        v[f"{r}x{r}/Conv0/weight"], v[f"{r}x{r}/Conv0/bias"] = _conv(s[f"b{r}.conv0.weight"]), _n(s[f"b{r}.conv0.bias"])
        v[f"{r}x{r}/Conv1_down/weight"] = _conv(s[f"b{r}.conv1.weight"])
        v[f"{r}x{r}/Conv1_down/bias"] = _n(s[f"b{r}.conv1.bias"])
        v[f"{r}x{r}/Skip/weight"] = _conv(s[f"b{r}.skip.weight"])
    v["4x4/Conv/weight"], v["4x4/Conv/bias"] = _conv(s["b4.conv.weight"]), _n(s["b4.conv.bias"])
    v["4x4/Dense0/weight"], v["4x4/Dense0/bias"] = _n(s["b4.fc.weight"]).T, _n(s["b4.fc.bias"])
    v["Output/weight"], v["Output/bias"] = _n(s["b4.out.weight"]).T, _n(s["b4.out.bias"])
    if D.c_dim:
        v["LabelEmbed/weight"], v["LabelEmbed/bias"] = _n(s["mapping.embed.weight"]).T, _n(s["mapping.embed.bias"])
    kwargs = dict(label_size=D.c_dim, resolution=RES, num_channels=3, fmap_base=128, fmap_max=16,
                  mbstd_group_size=4)
    return FakeTFNetwork("D", kwargs, {}, v)


def dump_tf_pickle(monkeypatch: pytest.MonkeyPatch, nets: tuple[Any, Any, Any]) -> bytes:
    """Pickle with the real module path `dnnlib.tflib.network` registered only while dumping."""
    with monkeypatch.context() as m:
        for mod in ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network"):
            m.setitem(sys.modules, mod, types.ModuleType(mod))
        sys.modules["dnnlib.tflib.network"].Network = FakeTFNetwork  # type: ignore[attr-defined]
        return pickle.dumps(nets, protocol=4)  # TF-era pickles are protocol <= 4


@pytest.fixture(params=[0, 3], ids=["uncond", "cond"])
def tf_pickle(request, monkeypatch, tmp_path: Path) -> tuple[Path, Generator, Discriminator]:
    G, D = tiny_nets(request.param)
    path = tmp_path / "tf.pkl"
    path.write_bytes(dump_tf_pickle(monkeypatch, (tf_generator(G, "G"), tf_discriminator(D), tf_generator(G, "Gs"))))
    assert "dnnlib.tflib.network" not in sys.modules  # loading must not need the TF code
    return path, G, D


def test_tf_pickle_matches_original(tf_pickle) -> None:
    path, G, D = tf_pickle
    assert is_tf_pickle(path)
    nets = load_tf_network(path)
    torch.manual_seed(0)
    z = torch.randn(4, G.z_dim)
    c = torch.eye(G.c_dim)[[0, 1, 2, 0]] if G.c_dim else None
    for key in ("G", "G_ema"):
        for psi in (1.0, 0.6):
            ref = G(z, c, truncation_psi=psi, noise_mode="const")
            out = nets[key](z, c, truncation_psi=psi, noise_mode="const")
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    img = torch.randn(4, 3, RES, RES)
    torch.testing.assert_close(nets["D"](img, c), D(img, c), atol=1e-5, rtol=0)


def test_convert_cli_writes_snapshot(tf_pickle, tmp_path: Path) -> None:
    path, G, _ = tf_pickle
    dest = tmp_path / "out.safetensors"
    assert main(["convert", "--source", str(path), "--dest", str(dest)]) == 0
    G2 = load_network(dest)["G_ema"]
    ws = G.mapping(torch.randn(2, G.z_dim), torch.eye(G.c_dim)[:2] if G.c_dim else None)
    torch.testing.assert_close(G2.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"),
                               atol=1e-5, rtol=0)


def test_foreign_global_refused_without_running(monkeypatch, tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    G, D = tiny_nets(0)
    tf_G = tf_generator(G, "G")
    tf_G._state["static_kwargs"]["hook"] = Evil()
    data = dump_tf_pickle(monkeypatch, (tf_G, tf_discriminator(D), tf_G))
    with pytest.raises(UnsafePickleError, match=r"builtins\.print"):
        load_tf_network(io.BytesIO(data))


def test_unknown_kwarg_and_not_tf(monkeypatch, tmp_path: Path) -> None:
    G, D = tiny_nets(0)
    tf_G = tf_generator(G, "G")
    tf_G._state["static_kwargs"]["fancy_new_option"] = 1
    with pytest.raises(UnsupportedPickleError, match="fancy_new_option"):
        load_tf_network(io.BytesIO(dump_tf_pickle(monkeypatch, (tf_G, tf_discriminator(D), tf_G))))
    other = tmp_path / "plain.pkl"
    other.write_bytes(pickle.dumps({"a": np.zeros(3)}, protocol=4))
    assert not is_tf_pickle(other)
