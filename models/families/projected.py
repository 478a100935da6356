"""Projected GAN (Sauer et al. 2021): FastGAN(-lite) or StyleGAN2 generator, four discriminators on frozen
EfficientNet-Lite0 projections, hinge loss, DiffAugment inside D; no R1, no path length, no ADA."""

from __future__ import annotations

import dataclasses
from typing import Any

from models.families.base import Family, Loss, LossParts
from models.families.stylegan2 import stylegan2_generator_kwargs
from models.presets import Preset
from models.projected.loss import ProjectedGANLoss

# Preset.generator values: which generator a projected config trains.
_FASTGAN, _FASTGAN_LITE, _STYLEGAN2 = "fastgan", "fastgan_lite", "stylegan2"


def projected_network_kwargs(spec: Preset, img_resolution: int, img_channels: int, c_dim: int
                             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Official Projected GAN `train.py`: FastGAN(-lite) or StyleGAN2 G; the projected D with four
    discriminators on CCM+CSM projections (cout 64, expand, proj_type 2), separable for StyleGAN2."""
    if spec.generator == _STYLEGAN2:
        g_kwargs = stylegan2_generator_kwargs(spec, img_resolution, img_channels, c_dim)
    else:
        g_kwargs = dict(z_dim=spec.z_dim, c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                        ngf=spec.ngf, cond=c_dim > 0, synthesis_kwargs=dict(lite=spec.generator == _FASTGAN_LITE))
    backbone = dict(cout=spec.proj_channels, expand=True, proj_type=2, num_discs=4,
                    separable=spec.generator == _STYLEGAN2, cond=c_dim > 0, ndf=spec.ndf)
    d_kwargs = dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, diffaug=True,
                    interp224=img_resolution < 224, backbone_kwargs=backbone)
    return g_kwargs, d_kwargs


def _make_loss(parts: LossParts, G_class: str, loss_kwargs: dict[str, Any]) -> Loss:
    # FastGAN's synthesis embeds the class itself; a StyleGAN2 synthesis takes ws only.
    return ProjectedGANLoss(parts.G_mapping, parts.G_synthesis, parts.D, stats=parts.stats,
                            synthesis_takes_c=G_class == "FastGANGenerator")


PROJECTED = Family(
    name="projected",
    title="Projected GAN",
    generator_classes=("FastGANGenerator", "Generator"),
    discriminator_classes=("ProjectedDiscriminator",),
    unused_options=("gamma", "pl_weight", "style_mixing", "freezed", "p", "target", "nhwc", "aug"),
    trains_without="Projected GAN: hinge loss, DiffAugment in D; no R1, path length, style mixing, ADA or Freeze-D",
    measures_equivariance=False,
    channels_last=False,
    network_kwargs=projected_network_kwargs,
    network_classes=lambda spec: ("Generator" if spec.generator == _STYLEGAN2 else "FastGANGenerator",
                                  "ProjectedDiscriminator"),
    loss_kwargs=lambda spec, choices: {},   # the hinge loss has no weights to set
    make_loss=_make_loss,
    autocast_training=True,
    derive_preset=lambda spec, resolution: dataclasses.replace(spec, ema=spec.mb * 10 / 32),
)
