"""CPU inference side by side: the official fp32 generator, ours in fp32 and bf16, and onnxruntime (CPU provider),
at 64/128/256 px and batch 1/8; bf16 parity in grey levels; bf16 FD change against its seed-to-seed noise.

    python tests/benchmarks/bench_cpu_inference.py --official-repo /path/to/stylegan2-ada-pytorch [--fd] [--json out]

Networks: the official `--cfg auto` generator at each resolution (channel_base 16384, 2 mapping layers,
num_fp16_res 4, conv_clamp 256), built by the official code with its parameters perturbed away from their init
(tests/benchmarks/parity_official.py) and copied into ours, so all sides compute the same function. Timing: one
thread pool (torch.set_num_threads, default 2), `noise_mode='const'`, psi 1; the variants are measured in turn,
`--rounds` times, best of rounds kept, so they share the machine's noise. Run on an idle machine only.

Parity: bf16 images vs ours fp32 over `--parity-n` seeds, in uint8 grey levels (the official conversion): max,
99.9th percentile, mean. FD (`--fd`): Fréchet distance in EfficientNet-Lite0 space of a 32 px `cifar` generator
(random init, perturbed) against 1,000 scikit-learn digits: fp32 with seeds 0 and 1 (their difference is the
run-to-run noise), the generator in bf16 (seeds 0 and 1), and generator and feature network in bf16 (seed 0).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing  # noqa: E402
from parity_official import copy_into_ours, import_official, official_cfg_kwargs, perturb_  # noqa: E402

from models.precision import generator_precision  # noqa: E402
from models.stylegan2.generator import Generator  # noqa: E402
from stages.common.images import to_uint8  # noqa: E402


def twins(N: Any, cfg: str, res: int, seed: int = 0) -> tuple[torch.nn.Module, Generator]:
    g, _ = official_cfg_kwargs(cfg, res, 0, 3)
    torch.manual_seed(seed)
    off = N.Generator(**copy.deepcopy(g)).eval()
    perturb_(off, torch.Generator().manual_seed(seed))
    ours = Generator(**copy.deepcopy(g)).eval()
    copy_into_ours(off, ours)
    return off.requires_grad_(False), ours.requires_grad_(False)


def best_rates(fns: dict[str, Any], batch: int, rounds: int, min_time: float) -> dict[str, float]:
    rates = timing.best_rates(fns, batch, rounds, min_time, warmup=2, min_calls=2)
    return {k: round(v, 2) for k, v in rates.items()}


@torch.no_grad()
def grey_levels(G: Generator, n: int, batch: int = 8) -> dict[str, float]:
    diffs = []
    for start in range(0, n, batch):
        z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in
                                       range(start, min(start + batch, n))]).astype(np.float32))
        ref = to_uint8(G(z, None, noise_mode="const")).to(torch.int16)
        with generator_precision("bf16", G):
            out = to_uint8(G(z, None, noise_mode="const")).to(torch.int16)
        diffs.append((out - ref).abs().flatten().numpy())
    d = np.concatenate(diffs)
    return {"images": n, "max": int(d.max()), "p99.9": float(np.percentile(d, 99.9)),
            "p99": float(np.percentile(d, 99)), "mean": round(float(d.mean()), 4),
            "share_differing": round(float((d > 0).mean()), 4)}


@torch.no_grad()
def bench_case(N: Any, res: int, batches: list[int], rounds: int, min_time: float, parity_n: int) -> dict[str, Any]:
    from stages.export.onnx_export import export_generator
    from stages.export.parity import ort_session

    off, ours = twins(N, "auto", res)
    t0 = time.perf_counter()
    sess = ort_session(export_generator(ours), ["CPUExecutionProvider"])
    out: dict[str, Any] = {"resolution": res, "cfg": "auto", "export_seconds": round(time.perf_counter() - t0, 1)}
    for batch in batches:
        z = torch.from_numpy(np.random.RandomState(batch).randn(batch, ours.z_dim).astype(np.float32))
        feeds = {"z": z.numpy(), "truncation_psi": np.ones([batch, 1], np.float32)}

        def bf16(z: torch.Tensor = z) -> torch.Tensor:
            with generator_precision("bf16", ours):
                return ours(z, None, noise_mode="const")

        fns = {
            "official_fp32": lambda z=z: off(z, None, noise_mode="const", force_fp32=True),
            "ours_fp32": lambda z=z: ours(z, None, noise_mode="const"),
            "ours_bf16": bf16,
            "onnxruntime_fp32": lambda feeds=feeds: sess.run(None, feeds),
        }
        rates = best_rates(fns, batch, rounds, min_time)
        ref = off(z, None, noise_mode="const", force_fp32=True)
        out[f"batch{batch}"] = {
            "img_s": rates,
            "speedup_vs_official": {k: round(v / rates["official_fp32"], 2) for k, v in rates.items()},
            "max_abs_vs_official": {"ours_fp32": float((ours(z, None, noise_mode="const") - ref).abs().max()),
                                    "onnxruntime_fp32": float(np.abs(sess.run(None, feeds)[0] - ref.numpy()).max()),
                                    "ours_bf16": float((bf16() - ref).abs().max())},
        }
        print(f"  {res} px batch {batch}: {rates}", file=sys.stderr, flush=True)
    out["bf16_grey_levels"] = grey_levels(ours, parity_n)
    return out


def digits_zip(path: Path, n: int = 1000, res: int = 32) -> Path:
    """scikit-learn's 8x8 digits as white-on-black RGB at `res` px (bilinear), in the dataset ZIP layout."""
    import PIL.Image
    from sklearn.datasets import load_digits

    images = load_digits().images[:n]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i, im in enumerate(images):
            pil = PIL.Image.fromarray((im / 16 * 255).astype(np.uint8)).resize((res, res), PIL.Image.BILINEAR)
            buf = io.BytesIO()
            pil.convert("RGB").save(buf, "PNG")
            zf.writestr(f"00000/img{i:08d}.png", buf.getvalue())
        zf.writestr("dataset.json", json.dumps({"labels": None}))
    return path


def fd_noise(N: Any, num_gen: int, tmp: Path) -> dict[str, Any]:
    """FD of one generator against the digits: fp32 (seeds 0, 1: their difference is the noise), G in bf16 with fp32
    features (seeds 0, 1), and G and features both in bf16 (seed 0)."""
    from stages.metrics.registry import parse_metric
    from stages.metrics.runner import MetricOptions, compute_metric

    _, G = twins(N, "cifar", 32, seed=3)
    data = digits_zip(tmp / "digits.zip")
    spec = parse_metric(f"fd_effnet{num_gen}_full")
    kwargs = dict(path=str(data), use_labels=False, xflip=False, resolution=32)
    out: dict[str, Any] = {"metric": spec.name, "generator": "cifar 32 px, random init (perturbed)",
                           "reference": "1,000 scikit-learn digits at 32 px"}
    runs = [("fp32", "fp32", 0), ("fp32", "fp32", 1), ("bf16", "fp32", 0), ("bf16", "fp32", 1), ("bf16", "bf16", 0)]
    for g_prec, f_prec, seed in runs:
        opts = MetricOptions(cache_dir=tmp / "stats", batch_size=50, progress=False, seed=seed,
                             G_kwargs=dict(noise_mode="const"), precision=g_prec, feature_precision=f_prec)
        t0 = time.perf_counter()
        value = compute_metric(spec, G, kwargs, opts)["results"][spec.name]
        out[f"G_{g_prec}_features_{f_prec}_seed{seed}"] = {"fd": value, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  FD G {g_prec} features {f_prec} seed {seed}: {value:.4f}", file=sys.stderr, flush=True)
    fd = {k: v["fd"] for k, v in out.items() if isinstance(v, dict)}
    out["seed_noise"] = abs(fd["G_fp32_features_fp32_seed0"] - fd["G_fp32_features_fp32_seed1"])
    out["G_bf16_change"] = [abs(fd[f"G_bf16_features_fp32_seed{s}"] - fd[f"G_fp32_features_fp32_seed{s}"])
                            for s in (0, 1)]
    out["G_and_features_bf16_change"] = abs(fd["G_bf16_features_bf16_seed0"] - fd["G_fp32_features_fp32_seed0"])
    out["G_bf16_change_below_noise"] = bool(max(out["G_bf16_change"]) < out["seed_noise"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-repo", type=Path, required=True, help="checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resolutions", default="64,128,256")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--parity-n", type=int, default=64, help="seeds for the bf16 grey-level figures")
    ap.add_argument("--fd", action="store_true", help="also the FD change vs seed noise (a few minutes)")
    ap.add_argument("--fd-gen", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    N = import_official(args.official_repo.resolve())
    report: dict[str, Any] = {"host": platform.node(), "torch": torch.__version__, "threads": args.threads,
                              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "loadavg_start": os.getloadavg(), "cases": []}
    for res in (int(r) for r in args.resolutions.split(",") if r):  # --resolutions "" for the FD part alone
        report["cases"].append(bench_case(N, res, [int(b) for b in args.batches.split(",")], args.rounds,
                                          args.min_time, args.parity_n))
    if args.fd:
        with tempfile.TemporaryDirectory() as tmp:
            report["fd"] = fd_noise(N, args.fd_gen, Path(tmp))
    report["loadavg_end"] = os.getloadavg()  # another busy process would show here: rerun on an idle machine
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
