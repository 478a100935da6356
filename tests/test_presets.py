"""Preset table: the official `auto` heuristics and the fixed configs' values."""

from __future__ import annotations

import pytest

from models.families import network_kwargs
from models.presets import resolve_preset


@pytest.mark.parametrize(
    "res, gpus, mb, mbstd, fmaps, lrate",
    [(64, 1, 32, 4, 0.5, 0.0025), (256, 8, 64, 4, 0.5, 0.0025), (1024, 8, 32, 4, 1, 0.002), (512, 2, 16, 4, 1, 0.0025)],
)
def test_auto_follows_official_heuristics(res, gpus, mb, mbstd, fmaps, lrate):
    spec = resolve_preset("auto", res, gpus)
    assert (spec.mb, spec.mbstd, spec.fmaps, spec.lrate) == (mb, mbstd, fmaps, lrate)
    assert spec.gamma == pytest.approx(0.0002 * res**2 / mb)
    assert spec.ema == pytest.approx(mb * 10 / 32)


def test_cifar_disables_pl_mixing_and_residual_d():
    spec = resolve_preset("cifar", 32)
    g, d = network_kwargs(spec, 32, 3, c_dim=10)
    assert spec.pl_weight == 0 and spec.style_mixing_prob == 0
    assert d["architecture"] == "orig" and d["epilogue_kwargs"]["mbstd_group_size"] == 32
    assert g["synthesis_kwargs"]["channel_base"] == 32768 and g["mapping_kwargs"]["num_layers"] == 2


def test_tiny_is_small_and_fp32():
    g, _ = network_kwargs(resolve_preset("tiny", 32), 32)
    assert g["synthesis_kwargs"]["channel_base"] // 32 == g["synthesis_kwargs"]["channel_max"] == 64
    assert g["synthesis_kwargs"]["num_fp16_res"] == 0


@pytest.mark.parametrize("name, res", [("nope", 32), ("auto", 48), ("auto", 2)])
def test_bad_preset_or_resolution(name, res):
    with pytest.raises(ValueError):
        resolve_preset(name, res)
