"""Discriminator forward+backward on CPU, side by side with the official StyleGAN2-ADA discriminator.

    python tests/benchmarks/bench_d.py --official-repo /path/to/stylegan2-ada-pytorch [--json out.json]
    python tests/benchmarks/bench_d.py --official-repo PATH --configs auto@16 --channel-div 8 --rounds 1 \
        --min-time 0.05                       # smoke run (seconds; its figures mean nothing)

What is timed is what the Dmain and Dreg phases of training ask of D: `D(img, c).sum().backward()` with the
images requiring grad and D's parameters requiring grad (their gradients are reset to None before every call,
as the training step's `zero_grad(set_to_none=True)` does), D in train mode. Configs as the official train.py
builds them (tests/benchmarks/parity_official.py `official_cfg_kwargs`): `cifar` at 32 px (10 classes, D `orig`,
mbstd group 32), `auto` at 64 and 128 px (unconditional, D `resnet`, channel_base 16384), batch `--batch` (8).

Variants, measured in turn `--rounds` times (best of rounds kept, so they share the machine's noise;
tests/benchmarks/timing.py `best_rates`):

- `official_fp32`: the official Discriminator with `force_fp32=True` (its fp16 blocks would run emulated half
  precision on a CPU); its ops take their reference paths on CPU.
- `ours_fp32`: ours, float32.
- `ours_bf16`: ours inside `FAMILIES['stylegan2'].training_precision('bf16', 'cpu', 'Dmain')`, exactly the
  precision the training loop gives the Dmain phase (every D block in bfloat16, channels-last, float32 master
  weights and epilogue). Dreg (R1) runs float32 in training: its figure is the fp32 one.

Same weights on both sides: the official D is built, its parameters and buffers perturbed away from their
init, and its state_dict copied into ours (parity_official.py `perturb_`, `copy_into_ours`). Parity: the
largest absolute difference of the logits, of dD/dimg and of every parameter gradient between official and
ours in fp32 (and, for information, ours bf16 against ours fp32: max abs of the logits and relative L2 of the
gradients). Ratios are images/s of ours over the official's (without --official-repo: over ours fp32).

The official code is imported only from --official-repo, at run time; it is never part of the package.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing  # noqa: E402
from parity_official import copy_into_ours, import_official, official_cfg_kwargs, perturb_  # noqa: E402

from models.families import FAMILIES  # noqa: E402
from models.stylegan2.discriminator import Discriminator  # noqa: E402

DEFAULT_CONFIGS = "cifar@32,auto@64,auto@128"
TARGETS = {"ours_fp32": 1.5, "ours_bf16": 3.0}  # issue 26: D forward+backward against the official fp32


def d_kwargs(cfg: str, res: int, channel_div: int = 1) -> dict[str, Any]:
    """The official train.py's D kwargs for `--cfg cfg` at `res` (cifar: 10 classes); channel_div narrows it."""
    _, d = official_cfg_kwargs(cfg, res, 10 if cfg == "cifar" else 0, 3)
    if channel_div > 1:  # same structure, narrower layers (smoke runs)
        d["channel_base"] //= channel_div
        d["channel_max"] //= channel_div
    return d


def twins(N: Any | None, kwargs: dict[str, Any], seed: int = 0) -> tuple[torch.nn.Module | None, Discriminator]:
    """(official, ours) with the same perturbed weights, both in train mode; (None, ours perturbed alike)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ours = Discriminator(**copy.deepcopy(kwargs)).train()
    if N is None:
        perturb_(ours, gen)
        return None, ours
    off = N.Discriminator(**copy.deepcopy(kwargs)).train()
    perturb_(off, gen)
    copy_into_ours(off, ours)
    return off, ours


def inputs(kwargs: dict[str, Any], batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    res, c_dim = kwargs["img_resolution"], kwargs["c_dim"]
    img = torch.rand([batch, kwargs["img_channels"], res, res], generator=gen) * 2 - 1
    c = torch.zeros([batch, c_dim])
    if c_dim:
        c[torch.arange(batch), torch.randint(c_dim, (batch,), generator=gen)] = 1
    return img, c


def fwd_bwd(D: torch.nn.Module, img: torch.Tensor, c: torch.Tensor, precision: str | None,
            official: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One Dmain-like pass: logits, dD/dimg and the parameter gradients (reset before the pass)."""
    D.zero_grad(set_to_none=True)
    x = img.detach().requires_grad_(True)
    if official:
        logits = D(x, c, force_fp32=True)
        logits.sum().backward()
    else:
        with FAMILIES["stylegan2"].training_precision(precision or "fp32", "cpu", "Dmain"):
            logits = D(x, c)
            logits.sum().backward()
    grads = {n: p.grad for n, p in D.named_parameters() if p.grad is not None}
    return logits.detach().float(), x.grad, grads


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def compare(ref: tuple, other: tuple) -> dict[str, Any]:
    """Largest differences of `other` (logits, dimg, param grads) from `ref`."""
    (l0, x0, g0), (l1, x1, g1) = ref, other
    if set(g0) != set(g1):
        raise SystemExit(f"parameters with gradients differ: {sorted(set(g0) ^ set(g1))}")
    worst = max(g0, key=lambda n: max_abs(g0[n], g1[n]))
    num = sum(float((g0[n].double() - g1[n].double()).square().sum()) for n in g0) ** 0.5
    den = sum(float(g0[n].double().square().sum()) for n in g0) ** 0.5
    return {"logits_max_abs": max_abs(l0, l1), "dimg_max_abs": max_abs(x0, x1),
            "param_grad_max_abs": max_abs(g0[worst], g1[worst]), "worst_param": worst,
            "param_grad_rel_l2": num / max(den, 1e-30), "params_with_grad": len(g0)}


def bench_case(N: Any | None, cfg: str, res: int, batch: int, rounds: int, min_time: float,
               channel_div: int) -> dict[str, Any]:
    kwargs = d_kwargs(cfg, res, channel_div)
    off, ours = twins(N, kwargs)
    img, c = inputs(kwargs, batch)
    out: dict[str, Any] = {"cfg": cfg, "resolution": res, "c_dim": kwargs["c_dim"], "batch": batch,
                           "architecture": kwargs.get("architecture", "resnet"),
                           "channel_base": kwargs["channel_base"], "channel_max": kwargs["channel_max"],
                           "mbstd_group_size": kwargs["epilogue_kwargs"]["mbstd_group_size"],
                           "params": sum(p.numel() for p in ours.parameters()),
                           "baseline": "official_fp32" if off is not None else "ours_fp32"}

    # Parity first (fresh gradients), then timing.
    ours_fp32 = fwd_bwd(ours, img, c, "fp32")
    if off is not None:
        out["parity_fp32_vs_official"] = compare(fwd_bwd(off, img, c, None, official=True), ours_fp32)
    out["bf16_vs_ours_fp32"] = compare(ours_fp32, fwd_bwd(ours, img, c, "bf16"))

    fns = {"ours_fp32": lambda: fwd_bwd(ours, img, c, "fp32"), "ours_bf16": lambda: fwd_bwd(ours, img, c, "bf16")}
    if off is not None:
        fns = {"official_fp32": lambda: fwd_bwd(off, img, c, None, official=True), **fns}
    rates = timing.best_rates(fns, batch, rounds, min_time, warmup=1, min_calls=2)
    base = out["baseline"]
    out["img_s"] = {k: round(v, 2) for k, v in rates.items()}
    out["speedup"] = {k: round(v / rates[base], 3) for k, v in rates.items() if k != base}
    if off is not None:
        out["targets"] = {k: {"target": t, "met": out["speedup"][k] >= t} for k, t in TARGETS.items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-repo", type=Path, help="checkout of NVlabs/stylegan2-ada-pytorch (else no official "
                    "column; ratios against ours fp32)")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma list of cfg@resolution (cfg: cifar, auto, "
                    f"stylegan2, paper256, paper512; cifar is conditional on 10 classes); default {DEFAULT_CONFIGS}")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds, variants in turn, best kept")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per variant per round")
    ap.add_argument("--channel-div", type=int, default=1, help="divide channel_base/max (smoke runs only)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    N = import_official(args.official_repo.resolve()) if args.official_repo else None
    report: dict[str, Any] = {
        "host": platform.node(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "batch": args.batch, "rounds": args.rounds,
        "min_time": args.min_time, "channel_div": args.channel_div,
        "official": str(args.official_repo) if args.official_repo else None,
        "loadavg_start": os.getloadavg(), "cases": {},
    }
    for spec in (s.strip() for s in args.configs.split(",") if s.strip()):
        cfg, _, res = spec.partition("@")
        case = bench_case(N, cfg, int(res or 32), args.batch, args.rounds, args.min_time, args.channel_div)
        report["cases"][f"{cfg}@{case['resolution']}"] = case
        parity = case.get("parity_fp32_vs_official", {})
        print(f"  D {cfg} {case['resolution']} px: img/s {case['img_s']}, speed-up {case['speedup']}"
              + (f", fp32 parity: logits {parity['logits_max_abs']:.2g}, dimg {parity['dimg_max_abs']:.2g}, "
                 f"param grads {parity['param_grad_max_abs']:.2g}" if parity else "")
              + f"; bf16 vs fp32: logits {case['bf16_vs_ours_fp32']['logits_max_abs']:.2g}, "
                f"grad rel L2 {case['bf16_vs_ours_fp32']['param_grad_rel_l2']:.2g}", file=sys.stderr, flush=True)
    report["loadavg_end"] = os.getloadavg()  # another busy process shows here: rerun on an idle machine
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
