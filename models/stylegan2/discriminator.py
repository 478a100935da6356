"""The StyleGAN2 discriminator: downsampling blocks, minibatch-stddev epilogue, label projection."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.layers import (
    DEFAULT_RESAMPLE_FILTER,
    Conv2dLayer,
    FullyConnectedLayer,
    block_memory_format,
    compute_dtype,
    fp16_active,
)
from models.stylegan2.mapping import MappingNetwork
from ops import downsample2d, setup_filter

ARCHITECTURES = ("orig", "skip", "resnet")


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")


def _check_nchw(t: torch.Tensor | None, channels: int, resolution: int, name: str) -> None:
    if t is None or t.ndim != 4 or tuple(t.shape[1:]) != (channels, resolution, resolution):
        shape = None if t is None else tuple(t.shape)
        raise ValueError(f"{name} must be [N, {channels}, {resolution}, {resolution}], got {shape}")


class DiscriminatorBlock(torch.nn.Module):
    """One resolution of D: (fromrgb) -> conv0 -> conv1 with 2x downsampling (+ resnet skip)."""

    def __init__(
        self,
        in_channels: int,                   # 0 = first block (reads the image)
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        first_layer_idx: int,               # global index of this block's first layer, for Freeze-D
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        freeze_layers: int = 0,             # Freeze-D: the first N layers of D get no updates
    ) -> None:
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}")
        _check_architecture(architecture)
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))

        # Layers are numbered in creation order (fromrgb, conv0, conv1, skip) across all blocks;
        # those below `freeze_layers` are frozen.
        self.num_layers = 0

        def next_trainable() -> bool:
            trainable = self.first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            return trainable

        common = dict(conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(
                img_channels, tmp_channels, kernel_size=1, activation=activation,
                trainable=next_trainable(), **common,
            )
        self.conv0 = Conv2dLayer(
            tmp_channels, tmp_channels, kernel_size=3, activation=activation, trainable=next_trainable(), **common
        )
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
            trainable=next_trainable(), resample_filter=resample_filter, **common,
        )
        if architecture == "resnet":
            # No clamp on the linear skip path (as official).
            self.skip = Conv2dLayer(
                tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                trainable=next_trainable(), resample_filter=resample_filter, channels_last=self.channels_last,
            )

    def forward(
        self,
        x: torch.Tensor | None,    # [N, in_channels, res, res] or None for the first block
        img: torch.Tensor | None,  # [N, img_channels, res, res] (first block, or every block for skip)
        force_fp32: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = (x if x is not None else img).device
        half = fp16_active(self.use_fp16, force_fp32, device)  # cuda-only: sg2.discriminator.block-dtype
        dtype = compute_dtype(half)
        memory_format = block_memory_format(half, self.channels_last)

        if x is not None:
            _check_nchw(x, self.in_channels, self.resolution, "x")
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0 or self.architecture == "skip":
            _check_nchw(img, self.img_channels, self.resolution, "img")
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            # skip: the next block reads a downsampled copy of the image as well.
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None

        if self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x)
            x = self.conv1(x)  # [N, out_channels, res/2, res/2]
        return x, img

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, in_channels={self.in_channels}, "
            f"architecture={self.architecture}, use_fp16={self.use_fp16}"
        )


class MinibatchStdLayer(torch.nn.Module):
    """Appends the average standard deviation over groups of samples as extra feature maps.

    Lets D see batch statistics (low variety = fake), which counters mode collapse. The batch
    is split into groups of `min(group_size, N)` samples; N must be divisible by that size.
    """

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [NCHW] -> [N, C + F, H, W]
        N, C, H, W = x.shape
        if self.group_size is None:
            G = N
        elif torch.jit.is_tracing():
            # Keep the group size a traced value so an exported graph works for any batch size.
            G = torch.min(torch.as_tensor(self.group_size), torch.as_tensor(N))
        else:
            G = min(self.group_size, N)
        F = self.num_channels
        c = C // F

        y = x.reshape(G, -1, F, c, H, W)  # [GnFcHW] sample i of group j is x[i * n + j]
        y = y - y.mean(dim=0)             # [GnFcHW] deviation from the group mean
        y = y.square().mean(dim=0)        # [nFcHW]  variance over the group
        y = (y + 1e-8).sqrt()             # [nFcHW]  standard deviation
        y = y.mean(dim=[2, 3, 4])         # [nF]     average over channels and pixels
        y = y.reshape(-1, F, 1, 1)        # [nF11]
        y = y.repeat(G, 1, H, W)          # [NFHW]   back to every sample and pixel
        return torch.cat([x, y], dim=1)   # [N, C + F, H, W]

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 head of D: (fromrgb) -> mbstd -> conv -> fc -> out (-> projection onto cmap)."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,                      # size of the mapped label, 0 = unconditional
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,   # None = whole minibatch
        mbstd_num_channels: int = 1,        # 0 = no minibatch-stddev layer
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ) -> None:
        _check_architecture(architecture)
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture

        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = (
            MinibatchStdLayer(group_size=mbstd_group_size, num_channels=mbstd_num_channels)
            if mbstd_num_channels > 0
            else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * (resolution**2), in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(
        self,
        x: torch.Tensor,                # [N, in_channels, 4, 4]
        img: torch.Tensor | None,       # [N, img_channels, 4, 4] for skip, else None
        cmap: torch.Tensor | None,      # [N, cmap_dim] when conditional
        force_fp32: bool = False,       # accepted for symmetry; the epilogue always runs in fp32
    ) -> torch.Tensor:                  # [N, 1]
        del force_fp32
        _check_nchw(x, self.in_channels, self.resolution, "x")
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            _check_nchw(img, self.img_channels, self.resolution, "img")
            img = img.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            x = x + self.fromrgb(img)

        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)           # [NCHW]
        x = self.fc(x.flatten(1))  # [NC]
        x = self.out(x)            # [N, cmap_dim or 1]

        if self.cmap_dim > 0:
            # Projection discriminator; 1/sqrt(cmap_dim) keeps the logit's scale independent of cmap_dim.
            if cmap is None or cmap.ndim != 2 or cmap.shape[1] != self.cmap_dim:
                raise ValueError(f"cmap must be [N, {self.cmap_dim}]")
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))  # [N1]
        return x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, cmap_dim={self.cmap_dim}, architecture={self.architecture}"


class Discriminator(torch.nn.Module):
    """D(img, c) -> logits [N, 1]. Blocks b{img_resolution}, ..., b8, then the epilogue b4.

    Constructor arguments are those of the official `training.networks.Discriminator`; they are
    kept, as plain data, in `self.init_kwargs` for serialization.
    """

    def __init__(
        self,
        c_dim: int,
        img_resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,              # the N highest resolutions use fp16 (on CUDA only)
        conv_clamp: float | None = None,
        cmap_dim: int | None = None,        # None = channels at 4x4
        block_kwargs: dict[str, Any] | None = None,     # for DiscriminatorBlock
        mapping_kwargs: dict[str, Any] | None = None,   # for the label MappingNetwork
        epilogue_kwargs: dict[str, Any] | None = None,  # for DiscriminatorEpilogue (mbstd_group_size, ...)
    ) -> None:
        # 4x4 would leave the epilogue without input features (the official network fails there too).
        if img_resolution < 8 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        super().__init__()
        block_kwargs = dict(block_kwargs or {})
        mapping_kwargs = dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, architecture=architecture,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp, cmap_dim=cmap_dim, block_kwargs=block_kwargs,
            mapping_kwargs=mapping_kwargs, epilogue_kwargs=epilogue_kwargs,
        ))
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in [*self.block_resolutions, 4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0

        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                resolution=res, first_layer_idx=layer_idx, use_fp16=res >= fp16_resolution,
                **block_kwargs, **common,
            )
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None, **mapping_kwargs
            )
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)

    def forward(
        self,
        img: torch.Tensor,           # [N, img_channels, img_resolution, img_resolution]
        c: torch.Tensor | None,      # [N, c_dim] (ignored when c_dim == 0)
        **block_kwargs: Any,         # force_fp32
    ) -> torch.Tensor:               # [N, 1] logits
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None  # [N, cmap_dim]
        return self.b4(x, img, cmap)

    def extra_repr(self) -> str:
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
