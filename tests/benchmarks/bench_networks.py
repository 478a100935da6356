"""Network throughput benchmark (`make bench`): generator and discriminator images/s on this machine.

Prints one JSON document. Configs follow the official presets: `cifar` at 32 px (conditional, 10
classes) and `auto` at 64 and 128 px. Forward passes only, batch 8, noise_mode='const', float32 on CPU.
Run by hand; never part of the test suite (timings on shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ops
from models import Discriminator, Generator
from models.families import network_kwargs
from models.presets import resolve_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import images_per_second

CASES = [("cifar", 32, 10), ("auto", 64, 0), ("auto", 128, 0)]


@torch.no_grad()
def bench_case(cfg: str, res: int, c_dim: int, batch: int, device: torch.device, min_time: float) -> dict:
    spec = resolve_preset(cfg, res, gpus=1)
    g_kwargs, d_kwargs = network_kwargs(spec, res, 3, c_dim)
    G = Generator(**g_kwargs).eval().requires_grad_(False).to(device)
    D = Discriminator(**d_kwargs).eval().requires_grad_(False).to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(batch, G.z_dim, generator=gen).to(device)
    c = torch.zeros(batch, c_dim, device=device)
    if c_dim:
        c[torch.arange(batch), torch.arange(batch) % c_dim] = 1
    img = torch.randn(batch, 3, res, res, generator=gen).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def g_step() -> None:
        G(z, c, noise_mode="const")
        sync()

    def d_step() -> None:
        D(img, c)
        sync()

    return {
        "config": cfg,
        "resolution": res,
        "c_dim": c_dim,
        "batch": batch,
        "G_params": sum(p.numel() for p in G.parameters()),
        "D_params": sum(p.numel() for p in D.parameters()),
        "G_img_per_s": round(images_per_second(g_step, batch, min_time, warmup=1, min_calls=2), 2),
        "D_img_per_s": round(images_per_second(d_step, batch, min_time, warmup=1, min_calls=2), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds to time each measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = [bench_case(cfg, res, c, args.batch, device, args.min_time) for cfg, res, c in CASES]
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ops": ops.implementations_in_use(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
