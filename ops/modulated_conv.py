"""Modulated convolution (StyleGAN2 weight modulation/demodulation)."""

from __future__ import annotations

import torch

from .conv2d_resample import conv2d_resample
from .fma import fma
from .impl import check_impl, static_shape
from .upfirdn2d import Padding


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
    impl: str = "auto",
) -> torch.Tensor:
    """Convolve ``x`` [NIHW] with ``weight`` [OIkk] scaled per sample by ``styles`` [NI].

    With ``demodulate`` each sample's modulated weights are rescaled to unit L2 norm per output
    channel. ``fused_modconv`` runs one grouped conv with a per-sample weight; otherwise the
    styles scale the activations before a shared-weight conv and the demodulation scales them
    after (same result, different cost profile; the non-fused path is also the export-friendly
    one). ``noise`` is added to the output. ``impl`` selects the resampling implementation.
    """
    check_impl(impl)
    if weight.ndim != 4 or x.ndim != 4 or static_shape(x)[1] != static_shape(weight)[1]:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(weight.shape)} are incompatible")
    batch_size = static_shape(x)[0]
    _, in_channels, kh, kw = static_shape(weight)
    if static_shape(styles) != [batch_size, in_channels]:
        raise ValueError(f"styles must be [{batch_size}, {in_channels}], got {tuple(styles.shape)}")

    # In float16 the modulated weights and their squared sums can overflow. Demodulation makes the
    # result invariant to a per-output-channel scale of weight and to a per-sample scale of
    # styles, so both may be brought to max-abs ~1 first at no cost to the math (the 1/sqrt(fan_in)
    # further keeps the sum of squares of order one).
    if x.dtype == torch.float16 and demodulate:  # cuda-only: ops.modconv-fp16-prenorm
        weight = weight * (
            1 / (in_channels * kh * kw) ** 0.5 / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        )  # max_Ikk
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)  # max_I

    w = None
    dcoefs = None
    if fused_modconv or (demodulate and impl == "ref"):
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)  # [NOIkk]
    if demodulate and w is not None:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [NO]
    elif demodulate:
        # sum_ik (W_oik s_ni)^2 = sum_i s_ni^2 sum_k W_oik^2: a [NI]x[IO] matmul instead of
        # materialising the per-sample weights, which took ~40% of G's CPU time when unfused.
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [NO]
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)  # [NOIkk]

    if not fused_modconv:
        # Modulation is per input channel, demodulation per output channel, so both commute with
        # a shared-weight convolution and can be applied to the activations instead.
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)  # [NIHW]
        x = conv2d_resample(
            x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
            flip_weight=flip_weight, impl=impl,
        )  # [NOHW]
        if demodulate and noise is not None:
            x = fma(x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1), noise.to(x.dtype), impl=impl)
        elif demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    # Fused: fold the batch into channels so each sample is one group with its own weights.
    x = x.reshape(1, -1, *x.shape[2:])  # [1,(N*I),H,W]
    w = w.reshape(-1, in_channels, kh, kw)  # [(N*O)Ikk]
    x = conv2d_resample(
        x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
        groups=batch_size, flip_weight=flip_weight, impl=impl,
    )  # [1,(N*O),H,W]
    x = x.reshape(batch_size, -1, *x.shape[2:])  # [NOHW]
    if noise is not None:
        x = x + noise.to(x.dtype)  # in float16 blocks an fp32 noise would promote the activations to fp32
    return x
