"""Building blocks shared by the generator and the discriminator.

Every layer uses the "equalized learning rate" trick of StyleGAN: weights are stored with unit
variance and multiplied by a constant (`weight_gain`, He's initializer constant) at run time, so
that Adam sees parameters of comparable scale everywhere. Parameter and buffer names, shapes and
constants follow the official StyleGAN2-ADA networks so that official checkpoints load 1:1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.precision import current_policy
from ops import bias_act, conv2d_resample, setup_filter

# Default output gain of each activation, chosen so that activations keep roughly unit variance
# (sqrt(2) for the rectifiers, which zero or shrink half of their input). Same table as the
# official bias_act op.
ACTIVATION_GAINS: dict[str, float] = {
    "linear": 1.0,
    "relu": float(np.sqrt(2)),
    "lrelu": float(np.sqrt(2)),
    "tanh": 1.0,
    "sigmoid": 1.0,
    "elu": 1.0,
    "selu": 1.0,
    "softplus": 1.0,
    "swish": float(np.sqrt(2)),
}

# The [1,3,3,1] binomial filter used for all up/downsampling in StyleGAN2.
DEFAULT_RESAMPLE_FILTER: tuple[int, ...] = (1, 3, 3, 1)


def activation_gain(activation: str) -> float:
    """The default gain that `bias_act` applies after `activation`."""
    if activation not in ACTIVATION_GAINS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATION_GAINS)}")
    return ACTIVATION_GAINS[activation]


def fp16_active(use_fp16: bool, force_fp32: bool, device: torch.device) -> bool:
    """Whether a block marked `use_fp16` really runs in reduced precision (dtype: `compute_dtype`).

    As official by default: float16 on CUDA only. CPU kernels for half precision convolutions are
    emulated and dozens of times slower, so on CPU every block runs in float32 (which is also what
    `force_fp32=True` gives on any device). `models.precision` changes the rule within a context:
    float16 on CPU for the tests of these branches, bfloat16 in every block for fast CPU inference.
    """
    policy = current_policy()  # device_types is ("cuda",) unless a models.precision context says otherwise
    return (use_fp16 or policy.all_blocks) and not force_fp32 and device.type in policy.device_types


def compute_dtype(half: bool) -> torch.dtype:
    """The dtype of a block's activations: the policy's reduced type when `fp16_active`, else float32."""
    return current_policy().dtype if half else torch.float32  # cuda-only: layers.reduced-dtype


def block_memory_format(half: bool, channels_last: bool) -> torch.memory_format:
    """channels-last for a reduced-precision block whose `channels_last` (or the policy) asks for it."""
    policy = current_policy()
    wanted = channels_last if policy.channels_last is None else policy.channels_last
    return torch.channels_last if half and wanted else torch.contiguous_format  # cuda-only: layers.channels-last


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` so that its mean square along `dim` is one (pixel norm of the latent)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalized learning rate, a learning-rate multiplier and a fused activation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1,
        bias_init: float = 0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        activation_gain(activation)  # fail early on an unknown name
        # Stored weights are N(0, 1/lr_multiplier^2); the run-time factor lr_multiplier brings the
        # effective weights back to N(0, 1/in_features) while Adam's steps shrink by lr_multiplier.
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = (
            torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        )
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [NI] -> [NO]
        w = self.weight.to(x.dtype) * self.weight_gain  # [OI]
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            # One BLAS call does matmul and bias together.
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    """Convolution with equalized learning rate, optional FIR up/downsampling, bias, activation, clamp.

    With `trainable=False` (Freeze-D) weight and bias become buffers under the same names, so a
    checkpoint loads the same way either way and the optimizer never sees them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        channels_last: bool = False,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * (kernel_size**2))
        self.act_gain = activation_gain(activation)

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(
            memory_format=memory_format
        )  # [OIkk]
        bias_tensor = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_tensor) if bias_tensor is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias_tensor is not None:
                self.register_buffer("bias", bias_tensor)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:  # [NCHW] -> [NOHW]
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        # Correlation (flip_weight=True) is the cheaper path without upsampling; the transposed
        # convolution used for up=2 wants the convolution convention instead.
        flip_weight = self.up == 1
        x = conv2d_resample(
            x=x, w=w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
            padding=self.padding, flip_weight=flip_weight,
        )
        # `gain` scales both the output and the clamp so that e.g. the sqrt(0.5) of residual
        # branches does not change where clamping bites relative to the signal.
        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"activation={self.activation}, up={self.up}, down={self.down}"
        )
