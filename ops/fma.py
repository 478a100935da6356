"""Fused multiply-add, used where demodulation and noise meet in the non-fused modulated conv."""

from __future__ import annotations

import torch

from .impl import resolve_impl


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Return ``a * b + c`` with broadcasting.

    The fast path is ``torch.addcmul``, a single kernel with a built-in derivative (first and
    second order, reducing gradients over broadcast dimensions itself), so no custom autograd
    Function is needed.
    """
    if resolve_impl("fma", impl) == "fast":
        # addcmul's output has c's shape only after broadcasting; it broadcasts all three itself.
        return torch.addcmul(c, a, b)
    return a * b + c
