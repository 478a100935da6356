"""TensorRT engine build (Python API), verification and timing, plus the equivalent `trtexec` line.

Written against the documented TensorRT Python API (8.6 and 10.x): `trt.Builder`, `create_network`,
`trt.OnnxParser`, an optimization profile with min/opt/max batch, FP16/TF32 builder flags,
`set_memory_pool_limit(WORKSPACE)`, a timing cache, `build_serialized_network`; inference with the
name-based tensor API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`, TRT >= 8.5) on
torch CUDA tensors, so no pycuda is needed.

`tensorrt` is imported inside the functions: everything else in the export stage works without it, and
a machine without it or without a CUDA GPU gets a one-line refusal (`TensorRTUnavailable`). The
`trtexec` command in `build_engine.sh` lets an operator build the same engine on the target GPU.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import EnvironmentFault
from stages.common.fileio import write_bytes_atomic

Shape = tuple[int, ...]


class TensorRTUnavailable(EnvironmentFault):
    """TensorRT or a CUDA GPU is missing on this machine."""


@dataclass(frozen=True)
class BatchProfile:
    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


def profile_shapes(inputs: Sequence[dict[str, Any]], profile: BatchProfile) -> dict[str, tuple[Shape, Shape, Shape]]:
    """name -> (min, opt, max) shapes; `inputs` as from `describe_io` (first dim symbolic = batch)."""
    shapes = {}
    for spec in inputs:
        rest = tuple(int(d) for d in spec["shape"][1:])
        if any(d <= 0 for d in rest):
            raise ValueError(f"{spec['name']}: only the batch dimension may be dynamic, got {spec['shape']}")
        shapes[spec["name"]] = tuple((b, *rest) for b in (profile.min, profile.opt, profile.max))
    return shapes


def _shape_arg(shapes: dict[str, tuple[Shape, Shape, Shape]], which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in s[which])}" for name, s in shapes.items())


def trtexec_command(
    onnx_path: str,
    engine_path: str,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    fp16: bool = True,
    workspace_mb: int = 4096,
    timing_cache: str | None = None,
    trtexec: str = "trtexec",
) -> str:
    """The `trtexec` equivalent of `build_engine` (same profile, precision and workspace)."""
    args = [
        trtexec,
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={_shape_arg(shapes, 0)}",
        f"--optShapes={_shape_arg(shapes, 1)}",
        f"--maxShapes={_shape_arg(shapes, 2)}",
        # A bare number is MiB in both trtexec 8.6 and 10.x (unit suffixes are 10.x only).
        f"--memPoolSize=workspace:{int(workspace_mb)}",
    ]
    if fp16:
        args.append("--fp16")
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return " ".join(a if a.startswith("$") else shlex.quote(a) for a in args)


def install_commands(plan: str, repository: str, model: str, config: str) -> list[str]:
    """Shell lines that put a built plan into the Triton repository as model `model` (version 1).

    The plan first, the config last: a polling Triton (--model-control-mode=poll) sees a complete model or none.
    """
    q = shlex.quote
    root = f"{repository}/{model}"
    return [
        f"# Serve {plan} as a second Triton model, {model}, next to the ONNX one.",
        f"mkdir -p {q(root + '/1')}",
        f"cp {q(plan)} {q(root + '/1/model.plan')}",
        f"cp {q(config)} {q(root + '/config.pbtxt')}",
        f'echo "installed {root}: restart Triton, or POST /v2/repository/models/{model}/load '
        f'with --model-control-mode=explicit"',
    ]


def build_script(commands: Sequence[str], install: Sequence[str] = ()) -> str:
    """A bash script that runs the trtexec commands from its own directory (paths are relative), then `install`."""
    lines = [
        "#!/usr/bin/env bash",
        "# Build TensorRT engines from the exported ONNX graphs on the target GPU (engines are GPU- and",
        "# TensorRT-version specific, so they are built where they run: use the TensorRT release of the Triton",
        "# server that will load them, e.g. the nvcr.io tensorrt and tritonserver containers of the same yy.mm).",
        "# Override the binary with TRTEXEC=...",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        *commands,
        *install,
        "",
    ]
    return "\n".join(lines)


def require_tensorrt() -> Any:
    """Import tensorrt and check for a CUDA GPU, or raise TensorRTUnavailable with one clear line."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed (pip install tensorrt on a CUDA machine); run exports/build_engine.sh "
            "with trtexec on the target GPU instead"
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU available: TensorRT engines can only be built and run on a GPU")
    return trt


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    fp16: bool = True,
    tf32: bool = True,
    workspace_mb: int = 4096,
    timing_cache: str | os.PathLike | None = None,
) -> Path:
    """Parse the ONNX graph, build a serialized engine with one batch profile, write it atomically."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TRT 8 needs the explicit-batch flag for ONNX models; in TRT 10 explicit batch is the only mode
    # and the flag is deprecated, so it is set only where it exists and matters.
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        if not builder.platform_has_fast_fp16:
            raise TensorRTUnavailable("this GPU has no fast FP16; build without --fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    if tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)

    profile = builder.create_optimization_profile()
    for name, (smin, sopt, smax) in shapes.items():
        profile.set_shape(name, smin, sopt, smax)
    config.add_optimization_profile(profile)

    # A timing cache makes rebuilds (same GPU and TRT version) take seconds instead of minutes.
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT engine build failed for {onnx_path} (see the TensorRT log above)")
    if timing_cache:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return write_bytes_atomic(engine_path, bytes(serialized))


class TensorRTRunner:
    """Runs a serialized engine on torch CUDA tensors (TRT >= 8.5 name-based I/O API)."""

    def __init__(self, engine_path: str | os.PathLike) -> None:
        trt = require_tensorrt()
        import torch

        self.trt, self.torch = trt, torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize {engine_path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str) -> Any:
        trt, torch = self.trt, self.torch
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8}
        if hasattr(trt, "uint8"):
            table[trt.uint8] = torch.uint8
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """feeds: name -> numpy array or torch tensor; returns name -> torch CUDA tensor."""
        torch = self.torch
        for name in self.inputs:
            t = torch.as_tensor(feeds[name]).to("cuda", self._torch_dtype(name)).contiguous()
            feeds = {**feeds, name: t}
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return outputs


def verify_engine(runner: TensorRTRunner, reference: Callable[[dict[str, np.ndarray]], np.ndarray],
                  feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Engine output vs the PyTorch reference on the same feeds: max abs error and PSNR."""
    from stages.export.parity import psnr

    out = next(iter(runner(feeds).values())).float().cpu().numpy()
    ref = reference(feeds)
    return {"max_abs_err": float(np.abs(out - ref).max()), "psnr_db": psnr(out, ref)}


def time_engine(runner: TensorRTRunner, make_feeds: Callable[[int], dict[str, np.ndarray]],
                batches: Sequence[int] = (1, 8, 32), warmup: int = 5, iters: int = 20) -> dict[str, dict[str, float]]:
    """Latency (ms per call) and throughput (images/s) per batch size, inputs resident on the GPU."""
    torch = runner.torch
    results = {}
    for b in batches:
        feeds = {k: torch.as_tensor(v).cuda() for k, v in make_feeds(b).items()}
        for _ in range(warmup):
            runner(feeds)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            runner(feeds)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
        results[str(b)] = {"latency_ms": dt * 1e3, "images_per_s": b / dt}
    return results
