"""StyleGAN2-ADA (Karras et al. 2020): mapping + synthesis G, residual D, non-saturating logistic loss with
lazy R1 and path-length regularization, style mixing, ADA."""

from __future__ import annotations

from typing import Any

from models.families.base import Family, Loss, LossParts
from models.loss import StyleGAN2Loss
from models.presets import Preset


def stylegan2_generator_kwargs(spec: Preset, img_resolution: int, img_channels: int, c_dim: int) -> dict[str, Any]:
    """Official `Generator` init kwargs (synthesis options nested)."""
    return dict(
        z_dim=spec.z_dim, c_dim=c_dim, w_dim=spec.w_dim, img_resolution=img_resolution, img_channels=img_channels,
        mapping_kwargs=dict(num_layers=spec.map),
        synthesis_kwargs=dict(channel_base=int(spec.fmaps * 32768), channel_max=spec.channel_max,
                              num_fp16_res=spec.num_fp16_res, conv_clamp=spec.conv_clamp),
    )


def stylegan2_discriminator_kwargs(spec: Preset, img_resolution: int, img_channels: int, c_dim: int
                                   ) -> dict[str, Any]:
    """Official `Discriminator` init kwargs (StyleGAN3 trains with the same D)."""
    return dict(
        c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=spec.d_architecture,
        channel_base=int(spec.fmaps * 32768), channel_max=spec.channel_max, num_fp16_res=spec.num_fp16_res,
        conv_clamp=spec.conv_clamp, block_kwargs={}, mapping_kwargs={},
        epilogue_kwargs=dict(mbstd_group_size=spec.mbstd),
    )


def stylegan2_loss_kwargs(spec: Preset, choices: Any) -> dict[str, Any]:
    """R1 weight, path-length weight and style-mixing probability: the user's, else the preset's."""
    return dict(r1_gamma=choices.gamma if choices.gamma is not None else spec.gamma,
                pl_weight=spec.pl_weight if choices.pl_weight is None else choices.pl_weight,
                style_mixing_prob=spec.style_mixing_prob if choices.style_mixing is None else choices.style_mixing)


def _make_loss(parts: LossParts, G_class: str, loss_kwargs: dict[str, Any]) -> Loss:
    return StyleGAN2Loss(parts.G_mapping, parts.G_synthesis, parts.D, augment_pipe=parts.augment_pipe,
                         stats=parts.stats, device=parts.device, **loss_kwargs)


STYLEGAN2 = Family(
    name="stylegan2",
    title="StyleGAN2-ADA",
    generator_classes=("Generator",),
    discriminator_classes=("Discriminator",),
    unused_options=(),
    trains_without="",
    measures_equivariance=False,
    channels_last=True,
    network_kwargs=lambda spec, res, ch, c_dim: (stylegan2_generator_kwargs(spec, res, ch, c_dim),
                                                 stylegan2_discriminator_kwargs(spec, res, ch, c_dim)),
    network_classes=lambda spec: ("Generator", "Discriminator"),
    loss_kwargs=stylegan2_loss_kwargs,
    make_loss=_make_loss,
)
