"""The official StyleGAN2-ADA code beside ours, for gpu-check: find the checkout, build its CUDA plugins, time
its training phases with the same harness as ours.

    python -m tests.gpu.official --repo .official/stylegan2-ada-pytorch --batches 32,64 --json out.json

Run as its own process by gpu_check (a plugin build that hangs or crashes must not take our figures with it).
The plugins (bias_act, upfirdn2d) are compiled by the official `custom_ops` through torch.utils.cpp_extension,
which needs `nvcc` and `ninja`; when the build fails the official code falls back to its reference ops with a
warning, and the figures are then labelled "reference-op fallback" with the build error's first line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_ENV = "SG2_OFFICIAL_REPO"
DEFAULT_OFFICIAL = ROOT / ".official" / "stylegan2-ada-pytorch"


def find_official_repo(path: str | os.PathLike | None = None) -> Path | None:
    """--official-repo, else $SG2_OFFICIAL_REPO, else .official/stylegan2-ada-pytorch in the checkout."""
    for candidate in (path, os.environ.get(OFFICIAL_ENV), DEFAULT_OFFICIAL):
        if candidate and (Path(candidate) / "training" / "networks.py").is_file():
            return Path(candidate).resolve()
    return None


def build_plugins(device: torch.device) -> dict[str, Any]:
    """Compile (or load from the cache) the official plugins now, timed; which ones work and why not."""
    out: dict[str, Any] = {}
    if device.type != "cuda":
        return {"plugins": "none (CPU: the official ops take their reference paths)"}
    if torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        major, minor = torch.cuda.get_device_capability(device)
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # one architecture: a quarter of the build time
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    for name in ("bias_act", "upfirdn2d"):
        module = importlib.import_module(f"torch_utils.ops.{name}")
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok = bool(module._init())
        out[name] = {"built": ok, "seconds": round(time.perf_counter() - t0, 1)}
        if not ok:
            text = "\n".join(str(w.message) for w in caught)
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            out[name]["error"] = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines
                                      else "unknown")[:300]
    built = all(v["built"] for v in out.values() if isinstance(v, dict))
    out["plugins"] = "CUDA plugins" if built else "reference-op fallback (plugin build failed)"
    return out


class OfficialLossAdapter:
    """The official `StyleGAN2Loss.accumulate_gradients` under our call (bench_train.time_phase drives both)."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss

    def accumulate_gradients(self, phase: str, real: torch.Tensor, real_c: torch.Tensor, gen_z: torch.Tensor,
                             gen_c: torch.Tensor, gain: float) -> None:
        self.loss.accumulate_gradients(phase=phase, real_img=real, real_c=real_c, gen_z=gen_z, gen_c=gen_c,
                                       sync=True, gain=gain)


def train_rates(side: str, g_kwargs: dict, d_kwargs: dict, batch: int, steps: int, device: torch.device,
                official: Any = None) -> dict[str, Any]:
    """sec/kimg (Gmain + Dmain + Greg/4 + Dreg/16, as lazy regularization amortizes) and peak GPU memory, for
    `side` "ours" or "official" (then `official` = (networks module, loss module))."""
    import copy

    from tests.benchmarks.bench_train import time_phase

    d_kwargs = copy.deepcopy(d_kwargs)
    d_kwargs["epilogue_kwargs"]["mbstd_group_size"] = min(d_kwargs["epilogue_kwargs"]["mbstd_group_size"], batch)
    torch.manual_seed(0)
    if side == "ours":
        from models import Discriminator, Generator
        from models.loss import StyleGAN2Loss

        G = Generator(**copy.deepcopy(g_kwargs)).train().requires_grad_(False).to(device)
        D = Discriminator(**d_kwargs).train().requires_grad_(False).to(device)
        loss: Any = StyleGAN2Loss(G.mapping, G.synthesis, D, r1_gamma=1.0, pl_weight=2.0, style_mixing_prob=0.9,
                                  device=device)
    else:
        N, L = official
        G = N.Generator(**copy.deepcopy(g_kwargs)).train().requires_grad_(False).to(device)
        D = N.Discriminator(**d_kwargs).train().requires_grad_(False).to(device)
        loss = OfficialLossAdapter(L.StyleGAN2Loss(device, G.mapping, G.synthesis, D, r1_gamma=1.0, pl_weight=2.0,
                                                   style_mixing_prob=0.9))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    sec = {ph: time_phase(loss, ph, G if ph[0] == "G" else D, batch, g_kwargs["img_resolution"], g_kwargs["z_dim"],
                          0, steps, device) for ph in ("Gmain", "Greg", "Dmain", "Dreg")}
    per_batch = sec["Gmain"] + sec["Dmain"] + sec["Greg"] / 4 + sec["Dreg"] / 16
    return {"batch": batch, "steps": steps, "phase_sec": {k: round(v, 4) for k, v in sec.items()},
            "sec_per_kimg": round(per_batch * 1000 / batch, 2),
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda"
            else None}


def run_official(repo: Path, g_kwargs: dict, d_kwargs: dict, batches: list[int], steps: int,
                 device: torch.device) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
    from parity_official import import_official

    N = import_official(repo)
    L = importlib.import_module("training.loss")
    result: dict[str, Any] = {"repo": str(repo), **build_plugins(device)}
    result["runs"] = [train_rates("official", g_kwargs, d_kwargs, b, steps, device, official=(N, L)) for b in batches]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--kwargs", required=True, help="JSON file with {'G': g_kwargs, 'D': d_kwargs}")
    ap.add_argument("--batches", default="32,64")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", required=True, help="write the result here")
    args = ap.parse_args(argv)
    kw = json.loads(Path(args.kwargs).read_text())
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the official training loop
    out = run_official(Path(args.repo), kw["G"], kw["D"], [int(b) for b in args.batches.split(",")], args.steps,
                       device)
    Path(args.json).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
