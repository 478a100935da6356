"""Bias + activation + gain + clamp, the epilogue of every layer in the networks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .impl import resolve_impl


@dataclass(frozen=True)
class ActivationSpec:
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    # True when autograd's backward for `func` reads the function's input rather than its output,
    # so the output buffer may be scaled/clamped in place without corrupting saved tensors.
    output_mutable: bool


# Default gains follow the official table: the ReLU family (and swish) get sqrt(2) to keep
# the signal magnitude roughly constant under He-initialised weights. `alpha` only matters for
# lrelu; the other functions use their textbook parameterisation regardless of it.
activation_funcs: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, alpha: x, 0.0, 1.0, True),
    "relu": ActivationSpec(lambda x, alpha: F.relu(x), 0.0, math.sqrt(2), False),
    "lrelu": ActivationSpec(lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2), True),
    "tanh": ActivationSpec(lambda x, alpha: torch.tanh(x), 0.0, 1.0, False),
    "sigmoid": ActivationSpec(lambda x, alpha: torch.sigmoid(x), 0.0, 1.0, False),
    "elu": ActivationSpec(lambda x, alpha: F.elu(x), 0.0, 1.0, True),
    "selu": ActivationSpec(lambda x, alpha: F.selu(x), 0.0, 1.0, True),
    "softplus": ActivationSpec(lambda x, alpha: F.softplus(x), 0.0, 1.0, True),
    "swish": ActivationSpec(lambda x, alpha: torch.sigmoid(x) * x, 0.0, math.sqrt(2), True),
}


def _parse_args(
    x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float | None, gain: float | None, clamp
) -> tuple[ActivationSpec, float, float, float | None]:
    if not isinstance(x, torch.Tensor):
        raise TypeError("x must be a tensor")
    if act not in activation_funcs:
        raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(activation_funcs)}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"clamp must be None or >= 0, got {clamp}")
    if b is not None:
        if not (isinstance(b, torch.Tensor) and b.ndim == 1):
            raise ValueError("b must be a 1-D tensor")
        if not 0 <= dim < x.ndim:
            raise ValueError(f"dim={dim} out of range for a {x.ndim}-D input")
        if b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias has {b.shape[0]} elements but x.shape[{dim}] = {x.shape[dim]}")
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp) if clamp is not None else None
    return spec, alpha, gain, clamp


def _bias_shape(x: torch.Tensor, dim: int) -> list[int]:
    return [-1 if i == dim else 1 for i in range(x.ndim)]


def _bias_act_ref(x, b, dim, spec, alpha, gain, clamp):
    if b is not None:
        x = x + b.reshape(_bias_shape(x, dim))
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _bias_act_fast(x, b, dim, spec, alpha, gain, clamp):
    # Same sequence of float ops as the reference (so results are bit-identical), but the gain and
    # clamp reuse the activation's output buffer instead of allocating two more full-size tensors.
    # That is only legal when the buffer is ours (not the caller's x) and autograd did not save it.
    if b is not None:
        x = x + b.reshape(_bias_shape(x, dim))
    y = spec.func(x, alpha)
    owned = y is not x if b is None else True
    if not (owned and spec.output_mutable):
        return _bias_act_ref(y, None, dim, activation_funcs["linear"], alpha, gain, clamp)
    if gain != 1:
        y = y.mul_(gain)
    if clamp is not None:
        y = y.clamp_(-clamp, clamp)
    return y


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Add bias ``b`` along ``dim``, apply ``act``, scale by ``gain``, clamp to [-clamp, clamp].

    ``alpha``/``gain`` default to the activation's entries in ``activation_funcs``. Returns a
    tensor of the same shape and dtype as ``x``.
    """
    spec, alpha, gain, clamp = _parse_args(x, b, dim, act, alpha, gain, clamp)
    if resolve_impl("bias_act", impl) == "fast":
        return _bias_act_fast(x, b, dim, spec, alpha, gain, clamp)
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)
