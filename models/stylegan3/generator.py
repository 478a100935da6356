"""The StyleGAN3 (alias-free) generator: mapping network followed by synthesis network."""

from __future__ import annotations

import copy
from typing import Any

import torch

from models.stylegan3.mapping import StyleGAN3MappingNetwork
from models.stylegan3.synthesis import StyleGAN3SynthesisNetwork


class StyleGAN3Generator(torch.nn.Module):
    """G(z, c) -> image in roughly [-1, 1], [N, img_channels, img_resolution, img_resolution].

    Constructor arguments are those of the official `training.networks_stylegan3.Generator`
    (synthesis options flat, as `**synthesis_kwargs`), so the init kwargs recorded in an official
    pickle rebuild the same network; they are kept as plain data in `self.init_kwargs`. Snapshots
    name this class "StyleGAN3Generator" (StyleGAN2's is "Generator").
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,  # for StyleGAN3MappingNetwork (num_layers, ...)
        **synthesis_kwargs: Any,                       # for StyleGAN3SynthesisNetwork and its layers
    ) -> None:
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=mapping_kwargs, **synthesis_kwargs,
        ))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        # Synthesis first: it decides how many ws the mapping network must broadcast to.
        self.synthesis = StyleGAN3SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = StyleGAN3MappingNetwork(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs
        )

    def forward(
        self,
        z: torch.Tensor,                      # [N, z_dim]
        c: torch.Tensor | None,               # [N, c_dim] (ignored when c_dim == 0)
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,            # update w_avg and every magnitude_ema from this batch
        **synthesis_kwargs: Any,              # noise_mode (ignored), force_fp32, fused_modconv
    ) -> torch.Tensor:                        # [NCHW] float32
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
