"""Which onnxruntime-gpu wheel matches this machine's CUDA, and whether its CUDA and TensorRT providers load.

    python tests/gpu/ort_gpu.py --spec          # prints e.g. onnxruntime-gpu[cuda,cudnn]==1.25.1 (nothing: no CUDA)
    python tests/gpu/ort_gpu.py --report        # JSON: CUDA version, wheel, installed package, providers, why not

onnxruntime-gpu is built for one CUDA major version: 1.31.x and 1.27.x for CUDA 13, 1.25.x, 1.24.x and 1.23.x for
CUDA 12 (the wheels' `cuda` / `cudnn` extras pull the matching NVIDIA runtime wheels). Its TensorRT provider also
needs NVIDIA's TensorRT libraries (libnvinfer), which no installable package provides in a form that builds
engines (`tensorrt-cu12-libs` is a stub; the lean/dispatch runtimes only run prebuilt plans), so the report says
why that provider does not load instead of failing. `make gpu-check` installs the wheel this prints, where the
package index is reachable, before it runs (the GPU image installs it at build time; infra/docker/Dockerfile).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

# CUDA major version -> the onnxruntime-gpu release built for it (newest known good of that major).
ORT_GPU_FOR_CUDA: dict[int, str] = {12: "1.25.1", 13: "1.31.1"}


def cuda_major(version: str | None) -> int | None:
    """12 for "12.8", None for None/"" (a CPU build of torch)."""
    if not version:
        return None
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def wheel_spec(cuda_version: str | None) -> str | None:
    """The pip requirement of the onnxruntime-gpu matching `cuda_version`, or None (no CUDA, or unknown major)."""
    major = cuda_major(cuda_version)
    if major not in ORT_GPU_FOR_CUDA:
        return None
    return f"onnxruntime-gpu[cuda,cudnn]=={ORT_GPU_FOR_CUDA[major]}"


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tiny_model(path: Path) -> Path:
    """A one-node ONNX graph (Identity) to open a session with each provider."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def provider_status(provider: str) -> str:
    """"ok", or one line saying why `provider` does not load (not in this build, or its libraries are absent)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime not installed"
    if provider not in ort.get_available_providers():
        return f"not in this onnxruntime build ({', '.join(ort.get_available_providers())})"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sess = ort.InferenceSession(str(_tiny_model(Path(tmp) / "probe.onnx")), providers=[provider])
        except Exception as exc:  # onnxruntime raises its own types; the message names the missing library
            return f"fails to load: {' '.join(str(exc).split())[:300]}"
        used = sess.get_providers()
    # onnxruntime falls back to the CPU provider when a requested one cannot initialise (libnvinfer missing...).
    return "ok" if used and used[0] == provider else f"fell back to {used[0] if used else 'nothing'} (libraries " \
        "missing: TensorRT needs libnvinfer, CUDA needs the CUDA/cuDNN runtime)"


def report(cuda_version: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"cuda": cuda_version, "wheel": wheel_spec(cuda_version),
                           "installed": {name: _installed(name) for name in ("onnxruntime", "onnxruntime-gpu")}}
    out["providers"] = {p: provider_status(p) for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")}
    return out


def torch_cuda_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", action="store_true", help="print the matching wheel's pip requirement")
    parser.add_argument("--report", action="store_true", help="print the providers report as JSON")
    parser.add_argument("--cuda", default=None, help="CUDA version to match (default: torch.version.cuda)")
    args = parser.parse_args(argv)
    cuda = args.cuda or torch_cuda_version()
    if args.spec:
        print(wheel_spec(cuda) or "")
    if args.report or not args.spec:
        print(json.dumps(report(cuda), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
