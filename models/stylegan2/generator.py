"""The StyleGAN2 generator: mapping network followed by synthesis network."""

from __future__ import annotations

import copy
from typing import Any

import torch

from models.stylegan2.mapping import MappingNetwork
from models.stylegan2.synthesis import SynthesisNetwork


class Generator(torch.nn.Module):
    """G(z, c) -> image in roughly [-1, 1], [N, img_channels, img_resolution, img_resolution].

    Constructor arguments are those of the official `training.networks.Generator`, so the init
    kwargs recorded in an official pickle rebuild the same network; they are kept, as plain data,
    in `self.init_kwargs` for serialization.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,    # for MappingNetwork (num_layers, lr_multiplier, ...)
        synthesis_kwargs: dict[str, Any] | None = None,  # for SynthesisNetwork and its blocks/layers
    ) -> None:
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=mapping_kwargs, synthesis_kwargs=synthesis_kwargs,
        ))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        # Synthesis first: it decides how many ws the mapping network must broadcast to.
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(
        self,
        z: torch.Tensor,                      # [N, z_dim]
        c: torch.Tensor | None,               # [N, c_dim] (ignored when c_dim == 0)
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs: Any,              # noise_mode ('random' default), force_fp32, fused_modconv
    ) -> torch.Tensor:                        # [NCHW] float32
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)
