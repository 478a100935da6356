"""The StyleGAN2 objective's pieces against closed forms, and the pure training rules."""

from __future__ import annotations

import math

import pytest
import torch

from models.loss import (
    StyleGAN2Loss,
    d_logistic_loss_fake,
    d_logistic_loss_real,
    g_nonsaturating_loss,
    path_length_penalty,
    path_lengths,
    r1_penalty,
)
from models.training_rules import ada_adjustment, ema_beta, lazy_regularization


def test_logistic_losses_closed_form():
    x = torch.tensor([-2.0, 0.0, 3.0])
    sig = torch.sigmoid(x)
    torch.testing.assert_close(g_nonsaturating_loss(x), -torch.log(sig))
    torch.testing.assert_close(d_logistic_loss_real(x), -torch.log(sig))
    torch.testing.assert_close(d_logistic_loss_fake(x), -torch.log(1 - sig))


def test_r1_penalty_of_a_quadratic_discriminator():
    # D(x) = 0.5 * sum(a * x²)  =>  ∇D = a*x  =>  R1 = sum(a² x²) per sample.
    torch.manual_seed(0)
    a = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    logits = 0.5 * (a * x.square()).sum(dim=[1, 2, 3])[:, None]
    torch.testing.assert_close(r1_penalty(x, logits), (a.square() * x.square()).sum(dim=[1, 2, 3]).detach())


def test_r1_penalty_is_differentiable_twice():
    torch.manual_seed(0)
    w = torch.randn(2 * 3 * 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    logits = torch.tanh(x.flatten(1) @ w)[:, None]
    (g,) = torch.autograd.grad(r1_penalty(x, logits).sum(), [w])
    # Finite differences on the weights of D: the double-backward gradient R1 training relies on.
    eps, num = 1e-6, torch.zeros_like(w)
    for i in range(w.numel()):
        for s in (1, -1):
            wp = w.detach().clone()
            wp[i] += s * eps
            xp = x.detach().clone().requires_grad_(True)
            num[i] += s * r1_penalty(xp, torch.tanh(xp.flatten(1) @ wp)[:, None]).sum().detach() / (2 * eps)
    torch.testing.assert_close(g, num, rtol=1e-5, atol=1e-7)


def test_path_lengths_of_a_linear_generator():
    # img = (mean over layers of w) @ M, so J_w^T y = M y / num_ws for every layer copy.
    torch.manual_seed(0)
    n, num_ws, w_dim = 3, 4, 5
    M = torch.randn(w_dim, 2 * 2 * 2, dtype=torch.float64)
    ws = torch.randn(n, num_ws, w_dim, dtype=torch.float64, requires_grad=True)
    img = (ws.mean(1) @ M).reshape(n, 2, 2, 2)
    y = torch.randn_like(img)
    expected = ((y.flatten(1) @ M.T) / num_ws).square().sum(1).sqrt()
    torch.testing.assert_close(path_lengths(img, ws, y), expected.detach())
    torch.testing.assert_close(path_length_penalty(expected, torch.tensor(1.0, dtype=torch.float64)),
                               (expected - 1).square())


class _TinyG(torch.nn.Module):
    num_ws = 3

    def __init__(self):
        super().__init__()
        self.map = torch.nn.Linear(4, 4)
        self.syn = torch.nn.Linear(4, 2 * 4 * 4)

    def mapping(self, z, c, skip_w_avg_update=False):
        return self.map(z)[:, None, :].repeat(1, self.num_ws, 1)

    def synthesis(self, ws):
        return torch.tanh(self.syn(ws.mean(1))).reshape(-1, 2, 4, 4)


def test_phases_touch_the_right_networks_and_track_pl_mean():
    torch.manual_seed(0)
    G, D = _TinyG(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 1))
    loss = StyleGAN2Loss(G.mapping, G.synthesis, lambda x, c: D(x), r1_gamma=1.0, pl_weight=2.0)
    real, c, z = torch.rand(4, 2, 4, 4) * 2 - 1, torch.zeros(4, 0), torch.randn(4, 4)

    loss.accumulate_gradients("Gmain", real, c, z, c, gain=1.0)
    assert G.syn.weight.grad is not None and torch.isfinite(G.syn.weight.grad).all()

    G.zero_grad(set_to_none=True)
    D.zero_grad(set_to_none=True)
    loss.accumulate_gradients("Dmain", real, c, z, c, gain=1.0)
    assert G.syn.weight.grad is None, "the D phase must not produce G gradients"
    assert D[1].weight.grad is not None

    before = loss.pl_mean.clone()
    loss.accumulate_gradients("Greg", real, c, z, c, gain=4.0)
    assert loss.pl_mean != before and torch.isfinite(loss.pl_mean)
    D.zero_grad(set_to_none=True)
    loss.accumulate_gradients("Dreg", real, c, z, c, gain=16.0)
    # R1 of a linear D is gamma/2 * |w|² per sample: its gradient w.r.t. w is gamma * w (times gain).
    torch.testing.assert_close(D[1].weight.grad, 16.0 * 1.0 * D[1].weight.detach())
    with pytest.raises(ValueError, match="unknown phase"):
        loss.accumulate_gradients("Gfoo", real, c, z, c, gain=1.0)


def test_lazy_regularization_rescaling():
    lr, betas = lazy_regularization(0.0025, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0025 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))


def test_ema_beta_half_life_and_rampup():
    # With no ramp-up, after ema_kimg*1000 images the old weights have decayed to one half.
    beta = ema_beta(batch=32, ema_kimg=10, cur_nimg=10**9, ema_rampup=None)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    # Early in training the ramp-up shortens the half-life to cur_nimg * rampup.
    assert ema_beta(32, 10, cur_nimg=1000, ema_rampup=0.05) == pytest.approx(0.5 ** (32 / 50))


def test_ada_adjustment_sign_step_and_clamp():
    step = 64 * 4 / (500 * 1000)
    assert ada_adjustment(0.1, rt=0.7, target=0.6, batch=64, interval=4, ada_kimg=500) == pytest.approx(0.1 + step)
    assert ada_adjustment(0.1, rt=0.5, target=0.6, batch=64, interval=4, ada_kimg=500) == pytest.approx(0.1 - step)
    assert ada_adjustment(0.0, rt=0.0, target=0.6, batch=64, interval=4, ada_kimg=500) == 0.0
    assert ada_adjustment(0.3, rt=math.nan, target=0.6, batch=64, interval=4, ada_kimg=500) == 0.3
