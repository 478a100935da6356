"""Training throughput: sec/kimg and peak memory for `cifar` at 32 px and `auto` at 64 px on CPU, and
for `paper256` at 256 px on a GPU (`--device cuda`, fp16 in the top 4 resolutions as the official config).

Runs a few real training steps (all four phases, lazy regularization amortized as in training:
Gmain + Dmain every step, Greg every 4th, Dreg every 16th), times them and extrapolates to 1000
images. Prints one JSON object. Usage:

    python tests/benchmarks/bench_train.py [--steps 2] [--batch 8] [--threads 2]
    python tests/benchmarks/bench_train.py --device cuda --batch 64 --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models import Discriminator, Generator
from models.families import network_kwargs
from models.loss import StyleGAN2Loss
from models.presets import resolve_preset

CASES = {"cpu": [("cifar", 32, 10), ("auto", 64, 0)], "cuda": [("paper256", 256, 0)]}  # (preset, res, c_dim)


def time_phase(loss: StyleGAN2Loss, phase: str, module: torch.nn.Module, batch: int, res: int, z_dim: int,
               c_dim: int, steps: int, device: torch.device) -> float:
    """Mean seconds of one phase (forward + backward + Adam step) over `steps` repetitions."""
    opt = torch.optim.Adam(module.parameters(), lr=0.002, betas=(0.0, 0.99))
    real = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    c = (torch.nn.functional.one_hot(torch.arange(batch) % c_dim, c_dim).float() if c_dim
         else torch.zeros(batch, 0)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(steps + 1):  # first repetition warms up allocators (and cuDNN autotuning); discarded
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        module.requires_grad_(True)
        loss.accumulate_gradients(phase, real, c, torch.randn(batch, z_dim, device=device), c, gain=1.0)
        module.requires_grad_(False)
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    return sum(times[1:]) / steps


def bench(cfg: str, res: int, c_dim: int, batch: int, steps: int, device: torch.device) -> dict:
    spec = resolve_preset(cfg, res, 1)
    g_kwargs, d_kwargs = network_kwargs(spec, res, 3, c_dim)
    if device.type != "cuda":
        g_kwargs["synthesis_kwargs"]["num_fp16_res"] = d_kwargs["num_fp16_res"] = 0  # fp32 on CPU (fp16 ~36x slower)
    d_kwargs["epilogue_kwargs"]["mbstd_group_size"] = min(spec.mbstd, batch)
    G = Generator(**g_kwargs).train().requires_grad_(False).to(device)
    D = Discriminator(**d_kwargs).train().requires_grad_(False).to(device)
    loss = StyleGAN2Loss(G.mapping, G.synthesis, D, r1_gamma=spec.gamma, pl_weight=spec.pl_weight,
                         style_mixing_prob=spec.style_mixing_prob, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = {ph: time_phase(loss, ph, G if ph[0] == "G" else D, batch, res, G.z_dim, c_dim, steps, device)
           for ph in ("Gmain", "Greg", "Dmain", "Dreg")}
    per_batch = sec["Gmain"] + sec["Dmain"] + sec["Greg"] / 4 + sec["Dreg"] / 16  # lazy regularization
    return {"cfg": cfg, "resolution": res, "batch": batch, "steps": steps,
            "phase_sec": {k: round(v, 3) for k, v in sec.items()},
            "sec_per_kimg": round(per_batch * 1000 / batch, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
        torch.backends.cudnn.benchmark = True  # as the official loop (unless --nobench)
    results = [bench(cfg, res, c_dim, args.batch, args.steps, device) for cfg, res, c_dim in CASES[args.device]]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": name, "threads": args.threads, "torch": torch.__version__, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
