"""StyleGAN3 (Karras et al. 2021, alias-free; configs -T and -R): its own generator, StyleGAN2's D and loss
without path length and style mixing; EMA, magnitude EMA and the -R input blur follow the actual batch."""

from __future__ import annotations

from typing import Any

from models.families.base import Family, Loss, LossParts
from models.families.stylegan2 import stylegan2_discriminator_kwargs, stylegan2_loss_kwargs
from models.loss import StyleGAN2Loss
from models.presets import Preset


def stylegan3_generator_kwargs(spec: Preset, img_resolution: int, img_channels: int, c_dim: int) -> dict[str, Any]:
    """Official StyleGAN3 `Generator` init kwargs (synthesis options flat; -R doubles the channels)."""
    wide = 2 if spec.radial else 1
    kwargs: dict[str, Any] = dict(
        z_dim=spec.z_dim, c_dim=c_dim, w_dim=spec.w_dim, img_resolution=img_resolution, img_channels=img_channels,
        mapping_kwargs=dict(num_layers=spec.map), channel_base=int(spec.fmaps * 32768) * wide,
        channel_max=spec.channel_max * wide, num_layers=spec.num_layers, num_fp16_res=spec.num_fp16_res,
        conv_clamp=spec.conv_clamp,
    )
    if spec.radial:
        kwargs.update(conv_kernel=1, use_radial_filters=True)
    return kwargs


def stylegan3_batch_rules(batch: int, radial: bool, transfer: bool) -> dict[str, float]:
    """The StyleGAN3 settings that follow from the global batch (official `train.py`): the G_ema half-life,
    the magnitude EMA's decay, and for -R the discriminator-input blur (sigma 10 fading out over
    batch * 200 / 32 kimg; off when starting from pretrained weights)."""
    return {
        "ema_kimg": batch * 10 / 32,
        "magnitude_ema_beta": 0.5 ** (batch / 20_000),
        "blur_init_sigma": 10.0 if radial and not transfer else 0.0,
        "blur_fade_kimg": batch * 200 / 32 if radial else 0.0,
    }


def _make_loss(parts: LossParts, G_class: str, loss_kwargs: dict[str, Any]) -> Loss:
    # StyleGAN3's networks track their EMAs (w_avg, magnitude_ema) only when told to.
    return StyleGAN2Loss(parts.G_mapping, parts.G_synthesis, parts.D, augment_pipe=parts.augment_pipe,
                         stats=parts.stats, device=parts.device, update_emas_explicitly=True, **loss_kwargs)


STYLEGAN3 = Family(
    name="stylegan3",
    title="StyleGAN3",
    generator_classes=("StyleGAN3Generator",),
    discriminator_classes=("Discriminator",),
    unused_options=("pl_weight", "style_mixing", "nhwc"),
    trains_without="StyleGAN3 configs train without path-length regularization and style mixing (official), "
                   "and channels-last is implemented for StyleGAN2 only",
    measures_equivariance=True,
    channels_last=False,
    network_kwargs=lambda spec, res, ch, c_dim: (stylegan3_generator_kwargs(spec, res, ch, c_dim),
                                                 stylegan2_discriminator_kwargs(spec, res, ch, c_dim)),
    network_classes=lambda spec: ("StyleGAN3Generator", "Discriminator"),
    loss_kwargs=stylegan2_loss_kwargs,
    make_loss=_make_loss,
    batch_rules=lambda spec, batch, transfer: stylegan3_batch_rules(batch, spec.radial, transfer),
)
