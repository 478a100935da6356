"""What every mapping network does with its output the same way: shape checks and the truncation trick."""

from __future__ import annotations

import torch


def check_2d(t: torch.Tensor | None, dim: int, name: str) -> None:
    """`t` must be [N, dim] (z or c); a one-line ValueError naming the argument otherwise."""
    if t is None or t.ndim != 2 or t.shape[1] != dim:
        shape = None if t is None else tuple(t.shape)
        raise ValueError(f"{name} must have shape [N, {dim}], got {shape}")


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """Truncation trick in W (Karras et al. 2019): w' = w_avg + psi (w - w_avg), for the first `cutoff` ws
    (all when None, or when `ws` is a single [N, W]). Modifies `ws` in place where a cutoff applies."""
    if psi == 1:
        return ws
    if cutoff is None or ws.ndim == 2:
        return w_avg.lerp(ws, psi)
    ws[:, :cutoff] = w_avg.lerp(ws[:, :cutoff], psi)
    return ws
