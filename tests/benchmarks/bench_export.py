"""Export benchmark: PyTorch eager vs onnxruntime images/s for the exported generator.

CPU (always): `auto` preset channels (channel_base 16384, channel_max 512, z/w 512, 2-layer mapping) at
64 px, batch 8, noise_mode='const', float32. GPU (when torch.cuda.is_available()): 256 px, batch 1 and
32: eager fp32, eager fp16 (the preset's fp16 layers), torch.compile, onnxruntime CUDA provider.
Prints one JSON document. Run by hand; never part of the test suite (timings on shared machines are noisy).

    .venv/bin/python tests/benchmarks/bench_export.py [--min-time 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models import Generator
from models.families import network_kwargs
from models.presets import resolve_preset
from stages.export.onnx_export import export_generator
from stages.export.parity import make_inputs, ort_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import images_per_second as rate


def _generator(res: int) -> Generator:
    g_kwargs, _ = network_kwargs(resolve_preset("auto", res, gpus=1), res, 3, 0)
    return Generator(**g_kwargs).eval().requires_grad_(False)


@torch.no_grad()
def bench_cpu(res: int, batch: int, min_time: float) -> dict:
    G = _generator(res)
    model = export_generator(G)
    feeds = make_inputs(G, batch, (0.7,))
    z, psi = torch.from_numpy(feeds["z"]), 0.7
    sess = ort_session(model, ["CPUExecutionProvider"])
    eager = rate(lambda: G(z, None, truncation_psi=psi, noise_mode="const"), batch, min_time)
    ort_rate = rate(lambda: sess.run(None, feeds), batch, min_time)
    return {"resolution": res, "batch": batch, "channel_base": G.synthesis.init_kwargs["channel_base"],
            "torch_eager_img_s": eager, "onnxruntime_cpu_img_s": ort_rate, "ort_speedup": ort_rate / eager}


@torch.no_grad()
def bench_gpu(res: int, batches: tuple[int, ...], min_time: float) -> dict:
    G = _generator(res)
    model = export_generator(G)  # exported on CPU; the graph carries the weights
    G = G.cuda()
    sess = ort_session(model, ["CUDAExecutionProvider"])
    compiled = torch.compile(G)
    out: dict = {"resolution": res, "ort_providers": sess.get_providers()}

    def sync_after(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            fn()
            torch.cuda.synchronize()
        return run

    for b in batches:
        feeds = make_inputs(G, b, (0.7,))
        z = torch.from_numpy(feeds["z"]).cuda()
        out[f"batch{b}"] = {
            "eager_fp32_img_s": rate(sync_after(lambda z=z: G(z, None, truncation_psi=0.7, noise_mode="const",
                                                                force_fp32=True)), b, min_time),
            "eager_fp16_img_s": rate(sync_after(lambda z=z: G(z, None, truncation_psi=0.7, noise_mode="const")),
                                      b, min_time),
            "torch_compile_img_s": rate(sync_after(lambda z=z: compiled(z, None, truncation_psi=0.7,
                                                                         noise_mode="const", force_fp32=True)),
                                         b, min_time, warmup=3),
            "onnxruntime_cuda_img_s": rate(lambda feeds=feeds: sess.run(None, feeds), b, min_time),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    result = {
        "host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": bench_cpu(64, 8, args.min_time),
    }
    if torch.cuda.is_available():
        result["gpu"] = {"device": torch.cuda.get_device_name(), **bench_gpu(256, (1, 32), args.min_time)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
