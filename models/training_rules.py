"""Small update rules of the training loop, as pure functions (each one the paper's formula)."""

from __future__ import annotations

import math


def lazy_regularization(lr: float, betas: tuple[float, float], interval: int) -> tuple[float, tuple[float, float]]:
    """Adam lr and betas for a network whose regularizer runs every `interval` minibatches.

    StyleGAN2 Sec. 3.1 / Appendix B: with the penalty applied every k steps, the optimizer sees k+1
    updates where it used to see k, so lr and betas are rescaled by c = k / (k + 1).
    """
    if interval < 1:
        raise ValueError(f"regularization interval must be >= 1, got {interval}")
    ratio = interval / (interval + 1)
    return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)


def ema_beta(batch: int, ema_kimg: float, cur_nimg: int, ema_rampup: float | None) -> float:
    """Per-step decay of G_ema for a half-life of `ema_kimg` thousand images.

    With ramp-up the half-life is capped at `cur_nimg * ema_rampup` early in training, so G_ema does
    not average over the random initialisation for long.
    """
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


def ada_adjustment(p: float, rt: float, target: float, batch: int, interval: int, ada_kimg: float) -> float:
    """ADA's controller (Karras et al. 2020, Sec. 3): move p by sign(r_t - target) so that p could go
    from 0 to 1 in `ada_kimg` thousand images; p never drops below 0."""
    if math.isnan(rt):
        return p
    step = (batch * interval) / (ada_kimg * 1000)
    sign = (rt > target) - (rt < target)
    return max(p + sign * step, 0.0)
