"""Parity and speed of our networks against the official StyleGAN2-ADA networks, on CPU.

    python tests/benchmarks/parity_official.py --official-repo /path/to/stylegan2-ada-pytorch

For several configurations taken from the official `train.py --cfg` table (at small resolutions so
that the script runs in a few minutes on a laptop), it builds the official G and D, perturbs all of
their parameters and buffers (so that noise strengths, biases and w_avg are not trivially zero),
copies the official state_dict into ours with strict name matching, and reports the largest absolute
difference of:

  G(z, c) with psi in {1, 0.7} (and a truncation cutoff), G.mapping, G.synthesis (eval and train
  mode, fused and non-fused modconv, noise_mode const / random from the same seed), the w_avg
  update in train mode, D(img, c), and the R1 gradient dD/dimg.

Then it times forward passes (images/s, batch 8, torch.set_num_threads(2) by default) of ours and
the official networks side by side, alternating between the two to share the machine's noise.

The official code is imported only from --official-repo, at run time, and only here; it is never
part of the package. Its ops fall back to their reference formulations on CPU; the official side
always runs with force_fp32=True (its fp16 blocks would otherwise run emulated half precision on CPU).
Exit status 1 when any error exceeds --tol.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from models.stylegan2.discriminator import Discriminator  # noqa: E402
from models.stylegan2.generator import Generator  # noqa: E402


def official_cfg_kwargs(cfg: str, res: int, c_dim: int, img_channels: int) -> tuple[dict, dict]:
    """G and D kwargs as the official train.py builds them for `--cfg` (values of its cfg_specs table)."""
    specs = {  # fmaps, map, mbstd; `auto` is derived from resolution for one GPU
        "stylegan2": (1, 8, 4),
        "paper256": (0.5, 8, 8),
        "paper512": (1, 8, 8),
        "cifar": (1, 2, 32),
    }
    if cfg == "auto":
        mb = max(min(min(4096 // res, 32), 64), 1)
        fmaps, mapping_layers, mbstd = (1 if res >= 512 else 0.5), 2, min(mb, 4)
    else:
        fmaps, mapping_layers, mbstd = specs[cfg]
    channel_base = int(fmaps * 32768)
    g = dict(
        z_dim=512, w_dim=512, c_dim=c_dim, img_resolution=res, img_channels=img_channels,
        mapping_kwargs=dict(num_layers=mapping_layers),
        synthesis_kwargs=dict(channel_base=channel_base, channel_max=512, num_fp16_res=4, conv_clamp=256),
    )
    d = dict(
        c_dim=c_dim, img_resolution=res, img_channels=img_channels,
        channel_base=channel_base, channel_max=512, num_fp16_res=4, conv_clamp=256,
        block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=mbstd),
    )
    if cfg == "cifar":
        d["architecture"] = "orig"
    return g, d


def build_cases(quick: bool) -> list[dict[str, Any]]:
    cases = []

    def add(name: str, cfg: str, res: int, c_dim: int, ch: int, g_arch: str = "skip", d_arch: str | None = None,
            conv_clamp: float | None = None, timing: bool = False) -> None:
        g, d = official_cfg_kwargs(cfg, res, c_dim, ch)
        g["synthesis_kwargs"]["architecture"] = g_arch
        if d_arch is not None:
            d["architecture"] = d_arch
        if conv_clamp is not None:  # a tiny clamp makes the clamping code paths do real work
            g["synthesis_kwargs"]["conv_clamp"] = d["conv_clamp"] = conv_clamp
        if quick:  # same structure, narrower layers
            for kw in (g["synthesis_kwargs"], d):
                kw["channel_base"] //= 8
                kw["channel_max"] //= 8
            g["z_dim"] = g["w_dim"] = 64
        cases.append(dict(name=name, G=g, D=d, timing=timing))

    add("cifar 32px c10 (G skip, D orig)", "cifar", 32, 10, 3, timing=True)
    add("auto 64px (G skip, D resnet)", "auto", 64, 0, 3, timing=True)
    add("paper256@64px (G orig, D resnet)", "paper256", 64, 0, 3, g_arch="orig")
    add("stylegan2@32px gray c4 (G resnet, D skip)", "stylegan2", 32, 4, 1, g_arch="resnet", d_arch="skip")
    add("auto 32px c3 clamp=0.5 (G resnet, D resnet)", "auto", 32, 3, 3, g_arch="resnet", conv_clamp=0.5)
    return cases


def import_official(repo: Path):
    """Import training.networks from the given checkout, with run-time patches for new torch versions."""
    if not (repo / "training" / "networks.py").is_file():
        raise SystemExit(f"{repo} does not look like a stylegan2-ada-pytorch checkout")
    sys.path.insert(0, str(repo))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        networks = importlib.import_module("training.networks")
    # Torch >= 2 is newer than the versions the official code knows; on CPU its ops take their
    # reference paths anyway. Keep the gradfix ops from trying custom kernels, should they be asked.
    try:
        gradfix = importlib.import_module("torch_utils.ops.conv2d_gradfix")
        gradfix.enabled = False
    except ImportError:
        pass
    return networks


def perturb_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Move every float tensor of the official network away from its init (zeros, ones) in place."""
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point() or name.endswith("resample_filter"):
                continue
            if name.endswith("noise_strength"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
            elif name.endswith("w_avg"):
                t.copy_(torch.randn(t.shape, generator=gen))
            elif name.endswith("bias"):
                t.add_(torch.randn(t.shape, generator=gen) * 0.1)
            else:
                t.mul_(1 + 0.1 * torch.randn(t.shape, generator=gen))


def copy_into_ours(official: torch.nn.Module, ours: torch.nn.Module) -> None:
    sd_off, sd_ours = official.state_dict(), ours.state_dict()
    if list(sd_off) != list(sd_ours):
        missing, extra = sorted(set(sd_off) - set(sd_ours)), sorted(set(sd_ours) - set(sd_off))
        if missing or extra:
            raise SystemExit(f"state_dict names differ: missing in ours {missing}, extra in ours {extra}")
        print("  note: same state_dict names, different order", file=sys.stderr)
    for k, v in sd_off.items():
        if v.shape != sd_ours[k].shape:
            raise SystemExit(f"shape mismatch for {k}: official {tuple(v.shape)}, ours {tuple(sd_ours[k].shape)}")
    ours.load_state_dict(sd_off, strict=True)


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise SystemExit(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.detach().double() - b.detach().double()).abs().max())


def compare_case(case: dict[str, Any], N: Any, batch: int, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    G_off = N.Generator(**copy.deepcopy(case["G"])).eval()
    D_off = N.Discriminator(**copy.deepcopy(case["D"])).eval()
    perturb_(G_off, gen)
    perturb_(D_off, gen)
    G = Generator(**copy.deepcopy(case["G"])).eval()
    D = Discriminator(**copy.deepcopy(case["D"])).eval()
    copy_into_ours(G_off, G)
    copy_into_ours(D_off, D)

    g = case["G"]
    z = torch.randn(batch, g["z_dim"], generator=gen)
    c = torch.zeros(batch, g["c_dim"])
    if g["c_dim"]:
        c[torch.arange(batch), torch.randint(g["c_dim"], (batch,), generator=gen)] = 1
    res, ch = g["img_resolution"], g["img_channels"]
    img = torch.randn(batch, ch, res, res, generator=gen)
    cutoff = max(G.num_ws // 2, 1)
    errs: dict[str, float] = {}

    with torch.no_grad():
        for psi, cut in [(1, None), (0.7, None), (0.7, cutoff)]:
            key = f"G psi={psi}" + (f" cutoff={cut}" if cut else "")
            a = G(z, c, truncation_psi=psi, truncation_cutoff=cut, noise_mode="const", force_fp32=True)
            b = G_off(z, c, truncation_psi=psi, truncation_cutoff=cut, noise_mode="const", force_fp32=True)
            errs[key] = maxerr(a, b)
        ws = G.mapping(z, c, truncation_psi=0.7)
        errs["G.mapping psi=0.7"] = maxerr(ws, G_off.mapping(z, c, truncation_psi=0.7))
        ws = ws + 0.3 * torch.randn(ws.shape, generator=gen)  # distinct w per layer, as in style mixing
        errs["G.synthesis const"] = maxerr(
            G.synthesis(ws, noise_mode="const"), G_off.synthesis(ws, noise_mode="const", force_fp32=True)
        )
        errs["G.synthesis const, fused"] = maxerr(
            G.synthesis(ws, noise_mode="const", fused_modconv=True),
            G_off.synthesis(ws, noise_mode="const", fused_modconv=True, force_fp32=True),
        )
        errs["G.synthesis none, unfused"] = maxerr(
            G.synthesis(ws, noise_mode="none", fused_modconv=False),
            G_off.synthesis(ws, noise_mode="none", fused_modconv=False, force_fp32=True),
        )
        torch.manual_seed(seed + 1)
        a = G.synthesis(ws, noise_mode="random")
        torch.manual_seed(seed + 1)
        b = G_off.synthesis(ws, noise_mode="random", force_fp32=True)
        errs["G.synthesis random (same seed)"] = maxerr(a, b)
        errs["D(img, c)"] = maxerr(D(img, c), D_off(img, c, force_fp32=True))

    # Train mode: non-fused modconv by default, and the mapping network updates w_avg.
    G.train()
    G_off.train()
    a = G(z, c, noise_mode="const")
    b = G_off(z, c, noise_mode="const", force_fp32=True)
    errs["G train mode"] = maxerr(a, b)
    errs["w_avg after train step"] = maxerr(G.mapping.w_avg, G_off.mapping.w_avg)

    # R1: gradient of D's logits with respect to the real images.
    x1 = img.clone().requires_grad_(True)
    x2 = img.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(D(x1, c).sum(), x1)
    (g2,) = torch.autograd.grad(D_off(x2, c, force_fp32=True).sum(), x2)
    errs["dD/dimg (R1)"] = maxerr(g1, g2)

    errs["param count G (ours - official)"] = float(
        sum(p.numel() for p in G.parameters()) - sum(p.numel() for p in G_off.parameters())
    )
    errs["param count D (ours - official)"] = float(
        sum(p.numel() for p in D.parameters()) - sum(p.numel() for p in D_off.parameters())
    )
    return errs


def rate_pair(fn_ours, fn_off, batch: int, rounds: int, min_time: float) -> tuple[float, float]:
    """Best-of-rounds images/s for two callables, measured alternately."""
    fn_ours()
    fn_off()  # warm-up (allocator, lazy init)
    best = [0.0, 0.0]
    for _ in range(rounds):
        for i, fn in enumerate((fn_ours, fn_off)):
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                dt = time.perf_counter() - t0
                if dt >= min_time:
                    break
            best[i] = max(best[i], n * batch / dt)
    return best[0], best[1]


def time_case(case: dict[str, Any], N: Any, batch: int, rounds: int, min_time: float) -> dict[str, float]:
    torch.manual_seed(0)
    G_off = N.Generator(**copy.deepcopy(case["G"])).eval().requires_grad_(False)
    D_off = N.Discriminator(**copy.deepcopy(case["D"])).eval().requires_grad_(False)
    G = Generator(**copy.deepcopy(case["G"])).eval().requires_grad_(False)
    D = Discriminator(**copy.deepcopy(case["D"])).eval().requires_grad_(False)
    G.load_state_dict(G_off.state_dict())
    D.load_state_dict(D_off.state_dict())
    g = case["G"]
    z = torch.randn(batch, g["z_dim"])
    c = torch.zeros(batch, g["c_dim"])
    if g["c_dim"]:
        c[torch.arange(batch), torch.arange(batch) % g["c_dim"]] = 1
    img = torch.randn(batch, g["img_channels"], g["img_resolution"], g["img_resolution"])
    with torch.no_grad():
        g_ours, g_off = rate_pair(
            lambda: G(z, c, noise_mode="const"),
            lambda: G_off(z, c, noise_mode="const", force_fp32=True),
            batch, rounds, min_time,
        )
        d_ours, d_off = rate_pair(lambda: D(img, c), lambda: D_off(img, c, force_fp32=True), batch, rounds, min_time)
    return {
        "G img/s ours": round(g_ours, 2), "G img/s official": round(g_off, 2), "G speedup": round(g_ours / g_off, 3),
        "D img/s ours": round(d_ours, 2), "D img/s official": round(d_off, 2), "D speedup": round(d_ours / d_off, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", type=Path, required=True, help="checkout of NVlabs/stylegan2-ada-pytorch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tol", type=float, default=1e-4, help="largest acceptable max abs error")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (best is kept)")
    parser.add_argument("--min-time", type=float, default=1.5, help="seconds per timing measurement")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="8x narrower layers (structure unchanged)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    N = import_official(args.official_repo.resolve())
    import ops  # after sys.path is set up; only for the report of which op formulations ran

    results: list[dict[str, Any]] = []
    worst = 0.0
    for case in build_cases(args.quick):
        if args.only not in case["name"]:
            continue
        print(f"== {case['name']}")
        errs = compare_case(case, N, args.batch, seed=len(results))
        for k, v in errs.items():
            print(f"   {k:<36s} {v:.3g}")
            if not k.startswith("param count"):
                worst = max(worst, v)
            elif v != 0:
                worst = float("inf")
        entry: dict[str, Any] = dict(name=case["name"], G_kwargs=case["G"], D_kwargs=case["D"], max_abs_err=errs)
        if case["timing"] and not args.no_timing:
            timing = time_case(case, N, args.batch, args.rounds, args.min_time)
            for k, v in timing.items():
                print(f"   {k:<36s} {v}")
            entry["timing"] = timing
        results.append(entry)

    ok = worst <= args.tol
    print(f"worst max abs error {worst:.3g} (tol {args.tol:g}): {'OK' if ok else 'FAIL'}")
    if args.json:
        impls = ops.implementations_in_use() if hasattr(ops, "implementations_in_use") else None
        args.json.write_text(json.dumps(dict(
            torch=torch.__version__, threads=torch.get_num_threads(), batch=args.batch,
            machine=platform.processor() or platform.machine(), ops=impls,
            worst=worst, tol=args.tol, ok=ok, cases=results,
        ), indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
