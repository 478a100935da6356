"""The mapping network: z (and an optional class label c) -> intermediate latents w."""

from __future__ import annotations

import copy
from typing import Any

import torch

from models.latents import check_2d, truncate
from models.layers import FullyConnectedLayer, normalize_2nd_moment


class MappingNetwork(torch.nn.Module):
    """An MLP from Z (+ embedded label) to W, with W-average tracking and the truncation trick.

    Also used by the conditional discriminator (z_dim=0, num_ws=None, w_avg_beta=None) to map the
    label into the `cmap` projection vector.
    """

    def __init__(
        self,
        z_dim: int,                        # latent Z size, 0 = no latent
        c_dim: int,                        # label size, 0 = unconditional
        w_dim: int,                        # W size
        num_ws: int | None,                # copies of w to output, None = return [N, w_dim]
        num_layers: int = 8,
        embed_features: int | None = None,  # label embedding size, None = w_dim
        layer_features: int | None = None,  # hidden width, None = w_dim
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,       # the mapping net learns 100x slower (StyleGAN, Sec. 2)
        w_avg_beta: float | None = 0.995,  # EMA decay of the tracked W mean, None = no tracking
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers,
            embed_features=embed_features, layer_features=layer_features, activation=activation,
            lr_multiplier=lr_multiplier, w_avg_beta=w_avg_beta,
        ))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            # Linear label embedding at the normal learning rate (no lr_multiplier), as official.
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)

        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,            # [NZ] or None when z_dim == 0
        c: torch.Tensor | None,            # [NC] or None when c_dim == 0
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        skip_w_avg_update: bool = False,
    ) -> torch.Tensor:                     # [N, num_ws, W] (or [NW] when num_ws is None)
        # Normalise z and the embedded label separately, so the label weighs as much as the latent.
        x = None
        if self.z_dim > 0:
            check_2d(z, self.z_dim, "z")
            x = normalize_2nd_moment(z.to(torch.float32))  # [NZ]
        if self.c_dim > 0:
            check_2d(c, self.c_dim, "c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))  # [NE]
            x = torch.cat([x, y], dim=1) if x is not None else y

        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)  # [NW] at the end

        # The running mean of W is the truncation centre; only updated by real training steps.
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, W]

        # Truncation trick: pull w towards the average; with a cutoff only the first (coarse) ws.
        if truncation_psi != 1:
            assert self.w_avg_beta is not None, "truncation needs the tracked w_avg"
            x = truncate(x, self.w_avg, truncation_psi, truncation_cutoff)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"
