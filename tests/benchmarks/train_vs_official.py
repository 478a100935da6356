"""Training against the official StyleGAN2-ADA code on CPU: per-phase gradients, then sec/kimg.

    python tests/benchmarks/train_vs_official.py --official-repo /path/to/stylegan2-ada-pytorch
        [--grad-batch 8] [--iters 3] [--blocks 2] [--threads 2] [--skip-speed] [--skip-gradients]

On 2 CPU cores one cifar iteration (batch 64) takes 25-40 s, so the defaults run about 25 minutes.

Gradients. For `cifar` (32 px, 10 classes, D `orig`, no path length, no mixing) and `auto` (32 px,
path length and style mixing on), the official networks are built, perturbed away from their init,
and copied into ours. For each phase (Gmain, Greg, Dmain, Dreg), with augmentation off, the same
inputs and the same torch seed, the official `StyleGAN2Loss.accumulate_gradients` and ours accumulate
gradients with the official gains; the script prints the largest absolute and relative difference over
all parameter gradients (and the path-length mean). Both consume the RNG in the same order (style-mixing
cutoff, second latent, synthesis noise, path-length noise), so the draws are identical.

Speed. The `cifar` spec at 32 px as a one-process run resolves it here (batch 64 in 2 rounds of 32,
fp32 on CPU for both: the official fp16 layers would run emulated on a CPU). Ours runs
`stages.train.loop.step` and its G_ema update. The official side runs the official loss, networks
and ops inside a transcription of the official loop body (phases with their intervals, requires_grad
toggling, zero_grad, per-round accumulation, nan_to_num of the gradients, Adam, G_ema); its
`training_loop()` itself cannot run on a CPU (it hard-codes a CUDA device). Blocks of iterations
alternate between the two so both see the same machine load; the per-block sec/kimg is printed and
the median ratio is the figure to quote.

The official code is imported only from --official-repo, at run time; it is never part of the package.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from parity_official import copy_into_ours, import_official, perturb_  # noqa: E402

from models import Discriminator, Generator  # noqa: E402
from models.loss import StyleGAN2Loss  # noqa: E402
from models.training_rules import ema_beta  # noqa: E402
from stages.common.dataset import ImageFolderDataset  # noqa: E402
from stages.train.config import TrainConfig  # noqa: E402
from stages.train.context import Collectives, RunContext  # noqa: E402
from stages.train.options import TrainingOptions, resolve_options  # noqa: E402
from stages.train.phases import TrainingStep, build_phases, update_ema  # noqa: E402
from stages.train.state import Progress  # noqa: E402
from tests.test_train import make_zip  # noqa: E402

PHASES = [("Gmain", 1), ("Greg", 4), ("Dmain", 1), ("Dreg", 16)]


def make_dataset(path: Path, n: int = 64, res: int = 32, classes: int = 10) -> ImageFolderDataset:
    return ImageFolderDataset(str(make_zip(path, n=n, res=res, labels=True, classes=classes)), use_labels=True)


def resolved(cfg: str, dataset: ImageFolderDataset) -> TrainingOptions:
    return resolve_options(TrainConfig(data=dataset._path, cfg=cfg, cond=True, aug="noaug"), dataset)


# ----------------------------------------------------------------------------------------------------
# Gradients.


def twin_networks(N: Any, opts: dict[str, Any], seed: int) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    off = {"G": N.Generator(**copy.deepcopy(opts["G_kwargs"])).train().requires_grad_(False),
           "D": N.Discriminator(**copy.deepcopy(opts["D_kwargs"])).train().requires_grad_(False)}
    ours = {"G": Generator(**copy.deepcopy(opts["G_kwargs"])).train().requires_grad_(False),
            "D": Discriminator(**copy.deepcopy(opts["D_kwargs"])).train().requires_grad_(False)}
    for k in off:
        perturb_(off[k], gen)
        copy_into_ours(off[k], ours[k])
    return off, ours


def compare_gradients(L: Any, N: Any, opts: dict[str, Any], batch: int, seed: int) -> dict[str, Any]:
    off, ours = twin_networks(N, opts, seed)
    lk = opts["loss_kwargs"]
    loss_off = L.StyleGAN2Loss(torch.device("cpu"), off["G"].mapping, off["G"].synthesis, off["D"], **lk)
    loss_ours = StyleGAN2Loss(ours["G"].mapping, ours["G"].synthesis, ours["D"], **lk)
    g = opts["G_kwargs"]
    gen = torch.Generator().manual_seed(seed + 1)
    res = g["img_resolution"]
    real = torch.rand([batch, g["img_channels"], res, res], generator=gen) * 2 - 1
    c = torch.nn.functional.one_hot(torch.randint(g["c_dim"], [batch], generator=gen), g["c_dim"]).float()
    z = torch.randn([batch, g["z_dim"]], generator=gen)
    out: dict[str, Any] = {}
    for phase, interval in PHASES:
        net = phase[0]
        grads = []
        for side, loss_obj, nets in (("official", loss_off, off), ("ours", loss_ours, ours)):
            nets[net].requires_grad_(True)
            for p in nets[net].parameters():
                p.grad = None
            torch.manual_seed(seed + 100 + len(out))
            kwargs = dict(sync=True) if side == "official" else {}
            loss_obj.accumulate_gradients(phase, real, c, z, c, gain=float(interval), **kwargs)
            nets[net].requires_grad_(False)
            grads.append({n: p.grad.clone() for n, p in nets[net].named_parameters() if p.grad is not None})
        a, b = grads
        if set(a) != set(b):
            raise SystemExit(f"{phase}: parameters with gradients differ: {sorted(set(a) ^ set(b))}")
        if not a:
            out[phase] = {"params_with_grad": 0, "note": "no-op phase for this config (weight 0)"}
            continue
        worst = max(a, key=lambda n: float((a[n] - b[n]).abs().max()))
        num = sum(float((a[n] - b[n]).double().square().sum()) for n in a) ** 0.5
        den = sum(float(a[n].double().square().sum()) for n in a) ** 0.5
        out[phase] = {"params_with_grad": len(a), "max_abs_diff": float((a[worst] - b[worst]).abs().max()),
                      "worst_param": worst, "max_abs_grad": max(float(a[n].abs().max()) for n in a),
                      "relative_l2_diff": num / max(den, 1e-30)}
    out["pl_mean |official - ours|"] = float((loss_off.pl_mean - loss_ours.pl_mean).abs())
    return out


# ----------------------------------------------------------------------------------------------------
# Speed.


class OfficialIteration:
    """The official training iteration's body around the official loss, networks and ops."""

    def __init__(self, L: Any, N: Any, misc: Any, opts: dict[str, Any], dataset: ImageFolderDataset) -> None:
        torch.manual_seed(0)
        self.G = N.Generator(**copy.deepcopy(opts["G_kwargs"])).train().requires_grad_(False)
        self.D = N.Discriminator(**copy.deepcopy(opts["D_kwargs"])).train().requires_grad_(False)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.misc, self.dataset, self.opts = misc, dataset, opts
        self.loss = L.StyleGAN2Loss(torch.device("cpu"), self.G.mapping, self.G.synthesis, self.D,
                                    **opts["loss_kwargs"])
        self.phases = []
        for name, module, okw, interval in (("G", self.G, opts["G_opt_kwargs"], opts["G_reg_interval"]),
                                            ("D", self.D, opts["D_opt_kwargs"], opts["D_reg_interval"])):
            ratio = interval / (interval + 1)
            opt = torch.optim.Adam(module.parameters(), lr=okw["lr"] * ratio,
                                   betas=[b ** ratio for b in okw["betas"]], eps=okw["eps"])
            self.phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
        self.batch_idx, self.cur_nimg = 0, 0

    def __call__(self, real_u8: torch.Tensor, real_c: torch.Tensor) -> None:
        batch, batch_gpu = self.opts["batch_size"], self.opts["batch_gpu"]
        real = (real_u8.to(torch.float32) / 127.5 - 1).split(batch_gpu)
        rc = real_c.split(batch_gpu)
        n = len(self.phases)
        all_z = torch.randn([n * batch, self.G.z_dim]).split(batch)
        picks = np.random.randint(len(self.dataset), size=n * batch)
        all_c = torch.from_numpy(np.stack([self.dataset.get_label(i) for i in picks])).split(batch)
        for (name, module, opt, interval), z, c in zip(self.phases, all_z, all_c):
            if self.batch_idx % interval != 0:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            rounds = list(zip(real, rc, z.split(batch_gpu), c.split(batch_gpu)))
            for r, (ri, rci, zi, ci) in enumerate(rounds):
                self.loss.accumulate_gradients(phase=name, real_img=ri, real_c=rci, gen_z=zi, gen_c=ci,
                                               sync=r == len(rounds) - 1, gain=interval)
            module.requires_grad_(False)
            for p in module.parameters():
                if p.grad is not None:
                    self.misc.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            opt.step()
        beta = ema_beta(batch, self.opts["ema_kimg"], self.cur_nimg, self.opts["ema_rampup"])
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        self.cur_nimg += batch
        self.batch_idx += 1


class OurIteration:
    def __init__(self, opts: TrainingOptions, dataset: ImageFolderDataset) -> None:
        # opts.training_precision: "fp32", or "bf16" (G/D blocks in bfloat16, float32 master weights)
        torch.manual_seed(0)
        self.G = Generator(**copy.deepcopy(opts.G_kwargs)).train().requires_grad_(False)
        self.D = Discriminator(**copy.deepcopy(opts.D_kwargs)).train().requires_grad_(False)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.loss = StyleGAN2Loss(self.G.mapping, self.G.synthesis, self.D, **opts.loss_kwargs)
        phases = build_phases(self.G, self.D, opts)
        ctx = RunContext(types.SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"),
                                               is_main_process=True), Collectives(False))
        self.step = TrainingStep(ctx, phases, self.loss, dataset, opts, self.G.z_dim)
        self.opts, self.prog = opts, Progress()

    def __call__(self, real_u8: torch.Tensor, real_c: torch.Tensor) -> None:
        o = self.opts
        self.step(real_u8, real_c, self.prog.batch_idx, self.prog.cur_nimg, "benchmark")
        update_ema(self.G_ema, self.G, ema_beta(o.batch_size, o.ema_kimg, self.prog.cur_nimg, o.ema_rampup))
        self.prog.cur_nimg += o.batch_size
        self.prog.batch_idx += 1


def compare_speed(L: Any, N: Any, misc: Any, opts: TrainingOptions, dataset: ImageFolderDataset, iters: int,
                  blocks: int, precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Any]:
    """Official fp32 against ours in each of `precisions`, blocks alternating so all see the same load."""
    batch = opts.batch_size
    res = dataset.resolution
    gen = torch.Generator().manual_seed(0)
    real = (torch.rand([batch, 3, res, res], generator=gen) * 255).to(torch.uint8)
    real_c = torch.from_numpy(np.stack([dataset.get_label(i % len(dataset)) for i in range(batch)]))
    sides: dict[str, Any] = {"official": OfficialIteration(L, N, misc, opts.as_json(), dataset)}
    for precision in precisions:
        name = "ours" if precision == "fp32" else f"ours_{precision}"
        sides[name] = OurIteration(dataclasses.replace(opts, training_precision=precision), dataset)
    for fn in sides.values():  # warm-up: one iteration with every phase (batch_idx 0)
        fn(real, real_c)
    per_block: dict[str, list[float]] = {k: [] for k in sides}
    for b in range(blocks):
        order = list(sides) if b % 2 == 0 else list(sides)[::-1]
        for name in order:
            t0 = time.perf_counter()
            for _ in range(iters):
                sides[name](real, real_c)
            per_block[name].append((time.perf_counter() - t0) / (iters * batch) * 1000)
            print(f"  block {b} {name:8s} {per_block[name][-1]:.1f} sec/kimg", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"batch": batch, "batch_gpu": opts.batch_gpu, "iters_per_block": iters,
                           "sec_per_kimg": {k: [round(v, 1) for v in vs] for k, vs in per_block.items()}}
    for name in sides:
        if name == "official":
            continue
        ratios = [o / u for o, u in zip(per_block["official"], per_block[name])]
        out[f"speedup_per_block (official / {name})"] = [round(r, 3) for r in ratios]
        out[f"speedup_median {name}"] = round(statistics.median(ratios), 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", type=Path, required=True, help="checkout of NVlabs/stylegan2-ada-pytorch")
    parser.add_argument("--grad-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3, help="training iterations per timed block")
    parser.add_argument("--blocks", type=int, default=2, help="timed blocks per side, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--speed-configs", default="cifar@32",
                        help="comma list of cfg@resolution for the speed comparison, e.g. cifar@32,auto@64,auto@128")
    parser.add_argument("--precisions", default="fp32", help="our side's training precisions, e.g. fp32,bf16")
    parser.add_argument("--skip-gradients", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    N = import_official(args.official_repo.resolve())
    import importlib

    L = importlib.import_module("training.loss")
    misc = importlib.import_module("torch_utils.misc")
    report: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads, "gradients": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "cifar-like.zip")
        for cfg in () if args.skip_gradients else ("cifar", "auto"):
            opts = resolved(cfg, dataset)
            report["gradients"][f"{cfg}@32px"] = compare_gradients(L, N, opts.as_json(), args.grad_batch, seed=0)
            print(json.dumps({cfg: report["gradients"][f"{cfg}@32px"]}, indent=1), file=sys.stderr, flush=True)
        for spec in [] if args.skip_speed else args.speed_configs.split(","):
            cfg, _, res = spec.partition("@")
            data = make_dataset(Path(tmp) / f"speed-{res}.zip", res=int(res or 32))
            report[f"speed {cfg}@{res}px"] = compare_speed(L, N, misc, resolved(cfg, data), data, args.iters,
                                                           args.blocks, tuple(args.precisions.split(",")))
            print(json.dumps(report[f"speed {cfg}@{res}px"]), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
