"""bf16 training (`--precision bf16`): gradients per phase against float32 at stated tolerances, master weights
float32, exact resume in bf16, and the option really changes the arithmetic."""

from __future__ import annotations

import pytest
import torch

from models.families import LossParts, family_of
from models.presets import resolve_preset
from models.serialization.snapshot import lookup_class
from stages.train.config import TrainConfig
from stages.train.loop import train
from tests.test_train import assert_same, cfg, latest_state, make_zip

# Relative gradient error ||g_bf16 - g_fp32|| / ||g_fp32|| allowed per main phase: bfloat16 keeps 8 bits of
# mantissa (~0.4% per rounding), which accumulates over the layers to a few percent (measured 5-10% on these
# tiny networks, cosine >= 0.995); the regularization phases run in float32 and must match exactly.
MAIN_PHASE_REL_TOL = 0.15
MAIN_PHASE_MIN_COS = 0.99


def _networks(preset: str, res: int = 16):
    spec = resolve_preset(preset, res)
    family = family_of(spec)
    g_kwargs, d_kwargs = family.network_kwargs(spec, res, 3, 0)
    for kw in family.fp16_holders(g_kwargs, d_kwargs):
        kw["num_fp16_res"] = 0  # as on CPU: the policy, not the preset, decides the dtype
    G_class, D_class = family.network_classes(spec)
    torch.manual_seed(0)
    return family, G_class, lookup_class(G_class)(**g_kwargs), lookup_class(D_class)(**d_kwargs)


def _phase_gradient(family, G_class, G, D, phase: str, precision: str, loss_kwargs: dict) -> torch.Tensor:
    real = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(2))
    c = torch.zeros(4, 0)
    net = G if phase[0] == "G" else D
    net.requires_grad_(True)
    for p in net.parameters():
        p.grad = None
    loss = family.make_loss(LossParts(G.mapping, G.synthesis, D, None, None, "cpu"), G_class, loss_kwargs)
    torch.manual_seed(3)
    with family.training_precision(precision, "cpu", phase):
        loss.accumulate_gradients(phase, real, c, z, c, gain=1.0)
    net.requires_grad_(False)
    grads = [p.grad.flatten() for p in net.parameters() if p.grad is not None]
    assert all(g.dtype == torch.float32 for g in grads), "master weights and their gradients stay float32"
    return torch.cat(grads)


@pytest.mark.parametrize("preset,phases", [("tiny", ("Gmain", "Greg", "Dmain", "Dreg")),
                                           ("stylegan3-tiny", ("Gmain", "Dmain", "Dreg"))])
def test_bf16_gradients_per_phase_against_fp32(preset: str, phases: tuple[str, ...]) -> None:
    family, G_class, G, D = _networks(preset)
    loss_kwargs = dict(r1_gamma=1.0, pl_weight=2.0 if "Greg" in phases else 0.0, style_mixing_prob=0.0)
    for phase in phases:
        fp32 = _phase_gradient(family, G_class, G, D, phase, "fp32", loss_kwargs)
        bf16 = _phase_gradient(family, G_class, G, D, phase, "bf16", loss_kwargs)
        if phase.endswith("reg"):
            assert torch.equal(bf16, fp32), f"{phase} runs in float32 under --precision bf16"
            continue
        rel = float((bf16 - fp32).norm() / fp32.norm())
        cos = float(torch.nn.functional.cosine_similarity(bf16, fp32, dim=0))
        assert 0 < rel < MAIN_PHASE_REL_TOL and cos > MAIN_PHASE_MIN_COS, \
            f"{preset} {phase}: rel {rel:.3f} cos {cos:.4f}"


def test_bf16_training_resumes_bit_exactly_and_differs_from_fp32(tmp_path) -> None:
    data = make_zip(tmp_path / "toy.zip")
    straight = train(cfg(data, tmp_path / "a", steps=2, precision="bf16"))
    train(cfg(data, tmp_path / "b", steps=1, precision="bf16"))
    resumed = train(cfg(data, tmp_path / "b", steps=2, precision="bf16", resume="latest"))
    a, b = latest_state(straight), latest_state(resumed)
    for key in ("G", "D", "G_ema", "optimizers", "loss", "stats"):
        assert_same(a[key], b[key], key)
    assert all(t.dtype == torch.float32 for t in a["G"].values() if t.is_floating_point())
    fp32 = latest_state(train(cfg(data, tmp_path / "c", steps=2)))
    moved = max(float((a["G"][k] - fp32["G"][k]).abs().max()) for k in fp32["G"] if fp32["G"][k].is_floating_point())
    assert 0 < moved < 0.05, f"bf16 and fp32 weights after 2 steps differ by {moved}"


def test_bf16_and_fp32_flags_contradict() -> None:
    from stages.common.config import ConfigError

    with pytest.raises(ConfigError, match="bf16 and --fp32"):
        TrainConfig(data="x.zip", precision="bf16", fp32=True)
