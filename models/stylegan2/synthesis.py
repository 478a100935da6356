"""The synthesis network: intermediate latents ws -> image, built from modulated convolutions."""

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
    activation_gain,
    block_memory_format,
    compute_dtype,
    fp16_active,
)
from ops import bias_act, modulated_conv2d, setup_filter, upsample2d

NOISE_MODES = ("random", "const", "none")


def default_fused_modconv(training: bool, dtype: torch.dtype, batch_size: int, device: torch.device) -> bool:
    """Whether modulated convolutions take the fused (grouped-convolution) path by default.

    Both paths compute the same function (they agree to float32 rounding). On CUDA this is the
    official heuristic: fused for inference, except fp16 with N > 1, where the separate
    scale-conv-scale path is faster and avoids overflow. On CPU a grouped convolution with one
    group per sample is much slower than one batched convolution (about 1.5x for the whole
    generator at batch 8), so there the fused path is used only for a single sample in float32
    inference; in bfloat16 even that is slower (5.5 vs 6.7 img/s at 256 px: the per-sample weights
    are cast and reordered on every call).
    """
    if device.type == "cuda":  # cuda-only: sg2.fused-modconv-cuda-rule
        return (not training) and (dtype == torch.float32 or batch_size == 1)
    return (not training) and batch_size == 1 and dtype == torch.float32


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling) + per-pixel noise + bias + activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,                    # output resolution of this layer
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)

        # Styles start at 1 (bias_init=1) so that a fresh network is an ordinary convolution.
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )  # [OIkk]
        if use_noise:
            # A fixed noise image for deterministic sampling (noise_mode="const").
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))  # [HW]
            # Starts at zero: noise is off until training finds it useful.
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,                  # [NIHW] at resolution // up
        w: torch.Tensor,                  # [NW]
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1,
    ) -> torch.Tensor:                    # [NOHW]
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        in_res = self.resolution // self.up
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] != in_res or x.shape[3] != in_res:
            raise ValueError(
                f"expected input [N, {self.in_channels}, {in_res}, {in_res}], got {tuple(x.shape)}"
            )
        styles = self.affine(w)  # [NI]

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength  # [N1HW]
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # [HW], broadcast over N and C

        x = modulated_conv2d(
            x=x, weight=self.weight, styles=styles, noise=noise, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, flip_weight=(self.up == 1), fused_modconv=fused_modconv,
        )
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"resolution={self.resolution}, up={self.up}, activation={self.activation}"
        )


class ToRGBLayer(torch.nn.Module):
    """1x1 modulated convolution (no demodulation) from features to image channels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )  # [OIkk]
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        # Without demodulation the equalized-lr gain must be applied explicitly; folding it into the
        # styles is cheaper than scaling the weight.
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # [NI]
        x = modulated_conv2d(x=x, weight=self.weight, styles=styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)  # [N, img_channels, H, W]

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class SynthesisBlock(torch.nn.Module):
    """One resolution of the generator: (const | 2x-up conv0) -> conv1 -> (torgb), per architecture.

    orig: a single ToRGB at the last block. skip: every block adds its ToRGB output to the
    upsampled image of the previous block. resnet: a 1x1 upsampling `skip` conv bypasses conv0/conv1
    and both paths are scaled by sqrt(0.5) to keep the variance.
    """

    def __init__(
        self,
        in_channels: int,                   # 0 = first block (starts from the learned constant)
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        **layer_kwargs: Any,                # for SynthesisLayer: kernel_size, use_noise, activation
    ) -> None:
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_conv = 0   # ws consumed by convolutions
        self.num_torgb = 0  # ws consumed by ToRGB (shared with the next block's conv0)

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))  # [CHW]
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                resample_filter=resample_filter, conv_clamp=conv_clamp, channels_last=self.channels_last,
                **layer_kwargs,
            )
            self.num_conv += 1

        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim=w_dim, resolution=resolution,
            conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs,
        )
        self.num_conv += 1

        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(
                out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, channels_last=self.channels_last
            )
            self.num_torgb += 1

        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels, out_channels, kernel_size=1, bias=False, up=2,
                resample_filter=resample_filter, channels_last=self.channels_last,
            )

    def forward(
        self,
        x: torch.Tensor | None,             # [N, in_channels, res/2, res/2] or None for the first block
        img: torch.Tensor | None,           # [N, img_channels, res/2, res/2] float32, or None
        ws: torch.Tensor,                   # [N, num_conv + num_torgb, W]
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
        **layer_kwargs: Any,                # noise_mode
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if ws.ndim != 3 or ws.shape[1] != self.num_conv + self.num_torgb or ws.shape[2] != self.w_dim:
            raise ValueError(
                f"ws must be [N, {self.num_conv + self.num_torgb}, {self.w_dim}], got {tuple(ws.shape)}"
            )
        w_iter = iter(ws.unbind(dim=1))
        device = self.const.device if x is None else x.device
        half = fp16_active(self.use_fp16, force_fp32, device)  # cuda-only: sg2.synthesis.block-dtype
        dtype = compute_dtype(half)
        memory_format = block_memory_format(half, self.channels_last)
        if fused_modconv is None:
            fused_modconv = default_fused_modconv(self.training, dtype, int(ws.shape[0]), device)

        if self.in_channels == 0:
            # The memory format applies to the 4-D batch (the official code asks it of the 3-D constant, which
            # fails for channels-last; only a policy with all blocks in reduced precision gets here with it).
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [NCHW]
            x = x.to(memory_format=memory_format)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)

        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=np.sqrt(0.5), **layer_kwargs)
            x = y.add_(x)
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)  # [NOHW]

        # The image path always stays float32 and contiguous: it accumulates over all blocks.
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"architecture={self.architecture}, use_fp16={self.use_fp16}"
        )


class SynthesisNetwork(torch.nn.Module):
    """Blocks b4, b8, ..., b{img_resolution}; channels halve with resolution, capped at channel_max."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,   # channels at resolution r = min(channel_base // r, channel_max)
        channel_max: int = 512,
        num_fp16_res: int = 0,       # the N highest resolutions use fp16 (on CUDA only, see fp16_active)
        **block_kwargs: Any,         # for SynthesisBlock (architecture, conv_clamp, ...) and SynthesisLayer
    ) -> None:
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, channel_base=channel_base,
            channel_max=channel_max, num_fp16_res=num_fp16_res, **block_kwargs,
        ))
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                img_channels=img_channels, is_last=is_last, use_fp16=res >= fp16_resolution, **block_kwargs,
            )
            # A block's ToRGB shares its w with the next block's conv0, so only the last one counts.
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, **block_kwargs: Any) -> torch.Tensor:  # [N, num_ws, W] -> [NCHW]
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur_ws, **block_kwargs)
        return img

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
            f"img_channels={self.img_channels}"
        )
