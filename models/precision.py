"""Reduced precision of the networks: which blocks run in a 16-bit float type, which type, and on which devices.

The official rule, and the default here (nothing changes unless a context below is entered): blocks marked
`use_fp16` (the top `num_fp16_res` resolutions) run in float16 on CUDA devices only, with activations clamped to
±conv_clamp, the image path and D's 4x4 epilogue kept in float32, and `force_fp32=True` turning it all off. This
module holds that rule as one policy object, read by `models.layers.fp16_active` and `compute_dtype`, so that

- tests can run the float16 branches on CPU, `with reduced_precision(torch.float16, ("cpu",)):`, and compare them
  with float32: every line that otherwise only a CUDA device reaches runs in the CPU test suite (the list of those
  lines and their covering tests is `CUDA_ONLY_BRANCHES`, checked complete by tests/test_mixed_precision.py);
- CPU inference can run every block in bfloat16, `with generator_precision("bf16", G, "cpu"):`, which AVX-512 BF16
  units execute 2-3x faster than float32 convolutions (README "Fast CPU inference" has the measured figures).

The policy is process-wide (a module global, not thread-local: `torch.compile` guards on a global but breaks its
graph on thread-local reads), changed only by the context managers here, which restore it on exit. Which
precision the generator and the feature networks last ran in is recorded like the ops' implementations
(`precision_in_use()`, next to `ops.implementations_in_use()`), so a run can report it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")  # the user-facing choice for inference (evaluate, render, serve)


@dataclass(frozen=True)
class ReducedPrecision:
    """Where and how blocks run in reduced precision."""

    dtype: torch.dtype = torch.float16                 # float16 | bfloat16
    # cuda-only: precision.official-policy
    device_types: tuple[str, ...] = ("cuda",)          # device types on which reduced precision is allowed
    all_blocks: bool = False                           # every block, not only those marked `use_fp16`
    channels_last: bool | None = None                  # None = each block's `fp16_channels_last` setting

    def __post_init__(self) -> None:
        if self.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"reduced precision dtype must be float16 or bfloat16, got {self.dtype}")


OFFICIAL = ReducedPrecision()  # cuda-only: precision.official-policy
_policy: ReducedPrecision = OFFICIAL
_lock = threading.Lock()
_in_use: dict[str, str] = {}


def current_policy() -> ReducedPrecision:
    return _policy


@contextlib.contextmanager
def reduced_precision(
    dtype: torch.dtype = torch.float16,
    device_types: tuple[str, ...] | list[str] = ("cuda",),  # cuda-only: precision.official-policy
    all_blocks: bool = False,
    channels_last: bool | None = None,
) -> Iterator[ReducedPrecision]:
    """Within the block, reduced-precision blocks follow this policy (process-wide; restored on exit).

    `reduced_precision(torch.float16, ("cpu",))` is the testing hook that runs the official CUDA float16 path on
    CPU (slowly: CPU float16 convolutions are emulated). It is never on by default.
    """
    global _policy
    new = ReducedPrecision(dtype, tuple(device_types), all_blocks, channels_last)
    with _lock:
        previous, _policy = _policy, new
    try:
        yield new
    finally:
        with _lock:
            _policy = previous


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def has_reduced_precision_blocks(module: torch.nn.Module) -> bool:
    """Whether the network has blocks that follow the policy (StyleGAN2 and StyleGAN3 do, FastGAN does not)."""
    return any(hasattr(m, "use_fp16") for m in module.modules())


def record_precision(role: str, precision: str) -> None:
    """Remember that `role` ("generator", "features", ...) ran in `precision` (see `precision_in_use`)."""
    if _in_use.get(role) != precision:
        with _lock:
            _in_use[role] = precision


def precision_in_use() -> dict[str, str]:
    """Map of role -> precision most recently used for it in this process (e.g. an MLflow tag)."""
    with _lock:
        return dict(_in_use)


def _reset_for_tests() -> None:
    with _lock:
        _in_use.clear()


@contextlib.contextmanager
def generator_precision(precision: str, G: torch.nn.Module, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run generator forward passes within the block in `precision`.

    fp32: the network as it is (the official behaviour: float32 on CPU, its float16 blocks on CUDA).
    bf16: every synthesis block in bfloat16, channels-last, clamped as the network's conv_clamp says; mapping,
    styles, demodulation coefficients and the image accumulator stay float32 as in the official fp16 path. A
    network without such blocks (FastGAN) runs under `torch.autocast` instead.
    """
    check_precision(precision)
    device = torch.device(device)
    record_precision("generator", precision)
    if precision == "fp32":
        yield
        return
    if has_reduced_precision_blocks(G):
        with reduced_precision(torch.bfloat16, (device.type,), all_blocks=True, channels_last=True):
            yield
    else:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield


@contextlib.contextmanager
def feature_precision(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run feature networks (Inception TorchScript, EfficientNet-Lite0) within the block in `precision`:
    bf16 is `torch.autocast` (convolutions and matrix products in bfloat16; it reaches into TorchScript too)."""
    check_precision(precision)
    device = torch.device(device)
    record_precision("features", precision)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


@torch.no_grad()
def generate_images(
    G: torch.nn.Module,
    z: torch.Tensor,                     # [N, z_dim]
    c: torch.Tensor | None,              # [N, c_dim] or None
    precision: str = "fp32",
    **G_kwargs: Any,                     # truncation_psi, noise_mode, ...
) -> torch.Tensor:                       # [NCHW] float32, as G returns it
    """`G(z, c, **G_kwargs)` in `precision`, for callers such as the generate stage."""
    device = z.device
    with generator_precision(precision, G, device):
        return G(z, c, **G_kwargs).to(torch.float32)


# The code paths that only a CUDA device reaches under the official policy, each marked in the code with a
# `# cuda-only: <id>` comment, and the CPU test that runs it (tests/test_mixed_precision.py). That test module
# fails when a condition on CUDA, float16, channels-last or a block's `half` flag in models/ or ops/ carries no
# registered marker, when a marker or an entry has no counterpart, or when a marked line does not run on CPU.
CUDA_ONLY_BRANCHES: dict[str, str] = {
    "precision.official-policy": "test_official_policy_is_cuda_float16_only",
    "layers.reduced-dtype": "test_fp16_generator_matches_fp32_on_cpu",
    "layers.channels-last": "test_channels_last_outputs_equal",
    "sg2.fused-modconv-cuda-rule": "test_fused_modconv_cuda_rule",
    "sg2.synthesis.block-dtype": "test_fp16_generator_matches_fp32_on_cpu",
    "sg2.discriminator.block-dtype": "test_fp16_discriminator_matches_fp32_on_cpu",
    "sg3.layer-dtype": "test_fp16_stylegan3_matches_fp32_on_cpu",
    "ops.modconv-fp16-prenorm": "test_fp16_generator_matches_fp32_on_cpu",
}
