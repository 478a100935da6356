"""The StyleGAN3 mapping network: z (and an optional label c) -> ws, with W-average tracking.

Same construction as StyleGAN2's (`models.stylegan2.mapping`), with the official StyleGAN3 defaults
(2 layers, w_avg decay 0.998) and the official StyleGAN3 switch for the running average: it is
updated exactly when the caller passes `update_emas=True` (the training loop does so in the passes
that should count), independent of train/eval mode.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from models.latents import check_2d, truncate
from models.layers import FullyConnectedLayer, normalize_2nd_moment


class StyleGAN3MappingNetwork(torch.nn.Module):
    """An MLP from Z (+ embedded label) to W, broadcast to `num_ws` copies; truncation trick."""

    def __init__(
        self,
        z_dim: int,                  # latent Z size
        c_dim: int,                  # label size, 0 = unconditional
        w_dim: int,                  # W size
        num_ws: int,                 # copies of w to output
        num_layers: int = 2,
        lr_multiplier: float = 0.01,  # the mapping net learns 100x slower
        w_avg_beta: float = 0.998,   # EMA decay of the tracked W mean
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers,
            lr_multiplier=lr_multiplier, w_avg_beta=w_avg_beta,
        ))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, w_dim)  # normal learning rate, as official
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,                      # [NZ]
        c: torch.Tensor | None,               # [NC]; ignored when c_dim == 0
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,  # truncate only the first N ws (None = all)
        update_emas: bool = False,            # fold this batch into w_avg
    ) -> torch.Tensor:                        # [N, num_ws, W]
        check_2d(z, self.z_dim, "z")
        # Latent and embedded label are normalised separately so that each weighs the same.
        x = normalize_2nd_moment(z.to(torch.float32))  # [NZ]
        if self.c_dim > 0:
            check_2d(c, self.c_dim, "c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))  # [NW]
            x = torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)  # [NW] at the end

        if update_emas:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, W]
        return truncate(x, self.w_avg, truncation_psi, truncation_cutoff)

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
