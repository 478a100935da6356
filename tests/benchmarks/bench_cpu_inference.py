"""CPU inference side by side: the official fp32 generator, ours in fp32 and bf16 (eager PyTorch), onnxruntime
(CPU provider, fp32) and OpenVINO (the export's IR, fp32 and bf16), at 64/128/256 px and batch 1/8; bf16 parity in
grey levels; bf16 FD change against its seed-to-seed noise.

    python tests/benchmarks/bench_cpu_inference.py --official-repo /path/to/stylegan2-ada-pytorch [--fd] [--json out]
    python tests/benchmarks/bench_cpu_inference.py              # no official checkout: ratios against ours fp32
    python tests/benchmarks/bench_cpu_inference.py --resolutions 16 --batches 1,2 --rounds 1 --min-time 0.05 \
        --parity-n 2                                            # smoke run (seconds of timing, figures meaningless)

Networks: the official `--cfg auto` generator at each resolution (channel_base 16384, 2 mapping layers,
num_fp16_res 4, conv_clamp 256), built by the official code with its parameters perturbed away from their init
(tests/benchmarks/parity_official.py) and copied into ours, so all sides compute the same function; without
`--official-repo`, ours is built from the same kwargs and perturbed the same way, and the official column is left
out. The graphs are those of the export stage: `export_generator` (dynamic batch, psi an input) for onnxruntime,
and the same ONNX file converted to OpenVINO IR (`stages.export.openvino_export`, float32 weights) compiled for the
CPU with INFERENCE_PRECISION_HINT f32 or bf16, dynamic batch as `serve` runs it. Timing: one thread pool of
`--threads` for every runtime (torch.set_num_threads, onnxruntime intra_op_num_threads, OpenVINO
INFERENCE_NUM_THREADS), `noise_mode='const'`, psi 1; the variants are measured in turn, `--rounds` times, best of
rounds kept, so they share the machine's noise. Run on an idle machine only.

Parity: max abs error of every column against the official fp32 output (ours fp32 without the official code);
bf16 images (eager and OpenVINO) vs ours fp32 over `--parity-n` seeds, in uint8 grey levels (the official
conversion): max, 99.9th percentile, mean. FD (`--fd`): Fréchet distance in EfficientNet-Lite0 space of a 32 px
`cifar` generator (random init, perturbed) against 1,000 scikit-learn digits: fp32 with seeds 0 and 1 (their
difference is the run-to-run noise), the generator in bf16 (seeds 0 and 1), and generator and feature network in
bf16 (seed 0). A markdown table of the images/s goes to stderr at the end (docs/benchmarks.md's layout).
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


def twins(N: Any | None, cfg: str, res: int, seed: int = 0) -> tuple[torch.nn.Module | None, Generator]:
    """(official, ours) with the same perturbed weights; (None, ours perturbed alike) without the official code."""
    g, _ = official_cfg_kwargs(cfg, res, 0, 3)
    torch.manual_seed(seed)
    ours = Generator(**copy.deepcopy(g)).eval()
    if N is None:
        perturb_(ours, torch.Generator().manual_seed(seed))  # same parameter names, same rules
        return None, ours.requires_grad_(False)
    off = N.Generator(**copy.deepcopy(g)).eval()
    perturb_(off, torch.Generator().manual_seed(seed))
    copy_into_ours(off, ours)
    return off.requires_grad_(False), ours.requires_grad_(False)


def best_rates(fns: dict[str, Any], batch: int, rounds: int, min_time: float) -> dict[str, float]:
    rates = timing.best_rates(fns, batch, rounds, min_time, warmup=2, min_calls=2)
    return {k: round(v, 2) for k, v in rates.items()}


@torch.no_grad()
def grey_levels(G: Generator, n: int, batch: int = 8, run: Any = None) -> dict[str, float]:
    """uint8 differences of bf16 images from ours fp32 over seeds 0..n-1: eager bf16, or `run(z) -> NCHW images`."""
    diffs = []
    for start in range(0, n, batch):
        z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in
                                       range(start, min(start + batch, n))]).astype(np.float32))
        ref = to_uint8(G(z, None, noise_mode="const")).to(torch.int16)
        if run is None:
            with generator_precision("bf16", G):
                out = to_uint8(G(z, None, noise_mode="const")).to(torch.int16)
        else:
            out = to_uint8(torch.as_tensor(run(z))).to(torch.int16)
        diffs.append((out - ref).abs().flatten().numpy())
    d = np.concatenate(diffs)
    return {"images": n, "max": int(d.max()), "p99.9": float(np.percentile(d, 99.9)),
            "p99": float(np.percentile(d, 99)), "mean": round(float(d.mean()), 4),
            "share_differing": round(float((d > 0).mean()), 4)}


def ort_cpu_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def bench_case(N: Any | None, res: int, batches: list[int], rounds: int, min_time: float, parity_n: int,
               threads: int, openvino: bool = True) -> dict[str, Any]:
    from stages.export.onnx_export import export_generator, save_model

    off, ours = twins(N, "auto", res)
    base = "official_fp32" if off is not None else "ours_fp32"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # the stage's files: generator.onnx, generator.xml/.bin
        onnx_path = save_model(export_generator(ours), Path(tmp) / "generator.onnx")
        out: dict[str, Any] = {"resolution": res, "cfg": "auto", "threads": threads,
                               "export_seconds": round(time.perf_counter() - t0, 1), "baseline": base}
        sess = ort_cpu_session(onnx_path, threads)
        ov_sessions: dict[str, Any] = {}
        if openvino:
            from stages.export.openvino_export import OpenVINOSession, convert_to_ir, openvino_version

            t0 = time.perf_counter()
            xml = convert_to_ir(onnx_path, Path(tmp) / "generator.xml")
            out["openvino_convert_seconds"] = round(time.perf_counter() - t0, 1)
            ov_sessions = {f"openvino_{p}": OpenVINOSession(xml, p, threads=threads) for p in ("fp32", "bf16")}
            out["openvino"] = {"version": openvino_version(),
                               **{k: v.describe()["inference_precision"] for k, v in ov_sessions.items()}}
    for batch in batches:
        z = torch.from_numpy(np.random.RandomState(batch).randn(batch, ours.z_dim).astype(np.float32))
        feeds = {"z": z.numpy(), "truncation_psi": np.ones([batch, 1], np.float32)}

        def bf16(z: torch.Tensor = z) -> torch.Tensor:
            with generator_precision("bf16", ours):
                return ours(z, None, noise_mode="const")

        fns = {
            "ours_fp32": lambda z=z: ours(z, None, noise_mode="const"),
            "ours_bf16": bf16,
            "onnxruntime_fp32": lambda feeds=feeds: sess.run(None, feeds),
            **{name: (lambda feeds=feeds, s=s: s.run(None, feeds)) for name, s in ov_sessions.items()},
        }
        if off is not None:
            fns = {"official_fp32": lambda z=z: off(z, None, noise_mode="const", force_fp32=True), **fns}
        rates = best_rates(fns, batch, rounds, min_time)
        ref = (off(z, None, noise_mode="const", force_fp32=True) if off is not None
               else ours(z, None, noise_mode="const")).numpy()
        errors = {"ours_fp32": ours(z, None, noise_mode="const").numpy(), "ours_bf16": bf16().float().numpy(),
                  "onnxruntime_fp32": sess.run(None, feeds)[0],
                  **{name: s.run(None, feeds)[0] for name, s in ov_sessions.items()}}
        who = base.removesuffix("_fp32")  # "official" (the keys of earlier reports), or "ours"
        out[f"batch{batch}"] = {
            "img_s": rates,
            f"speedup_vs_{who}": {k: round(v / rates[base], 2) for k, v in rates.items()},
            f"max_abs_vs_{who}": {k: float(np.abs(v - ref).max()) for k, v in errors.items() if k != base},
        }
        print(f"  {res} px batch {batch}: {rates}", file=sys.stderr, flush=True)
    out["bf16_grey_levels"] = grey_levels(ours, parity_n)
    if "openvino_bf16" in ov_sessions:
        bf16_ir = ov_sessions["openvino_bf16"]
        out["openvino_bf16_grey_levels"] = grey_levels(
            ours, parity_n, run=lambda z: bf16_ir.run(None, {"z": z.numpy(),
                                                              "truncation_psi": np.ones([len(z), 1], np.float32)})[0])
    return out


COLUMNS = ("official_fp32", "ours_fp32", "ours_bf16", "onnxruntime_fp32", "openvino_fp32", "openvino_bf16")


def markdown_table(report: dict[str, Any]) -> str:
    """images/s per column, with the ratio to the baseline (official fp32, else ours fp32) in brackets."""
    cases = report["cases"]
    cols = [c for c in COLUMNS if any(c in v["img_s"] for case in cases for k, v in case.items()
                                      if k.startswith("batch"))]
    lines = ["| px | batch | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
             "| --- | --- | " + " | ".join("---" for _ in cols) + " |"]
    for case in cases:
        for key in (k for k in case if k.startswith("batch")):
            rates, base = case[key]["img_s"], case["baseline"]
            cells = [f"{rates[c]:.2f}" if c == base else f"{rates[c]:.2f} ({rates[c] / rates[base]:.2f}x)"
                     for c in cols]
            lines.append(f"| {case['resolution']} | {key.removeprefix('batch')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    ap.add_argument("--official-repo", type=Path, help="checkout of NVlabs/stylegan2-ada-pytorch (else no official "
                    "column; ratios against ours fp32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resolutions", default="64,128,256")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--parity-n", type=int, default=64, help="seeds for the bf16 grey-level figures")
    ap.add_argument("--fd", action="store_true", help="also the FD change vs seed noise (a few minutes)")
    ap.add_argument("--fd-gen", type=int, default=1000)
    ap.add_argument("--no-openvino", dest="openvino", action="store_false", help="leave the OpenVINO columns out")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    N = import_official(args.official_repo.resolve()) if args.official_repo else None
    report: dict[str, Any] = {"host": platform.node(), "torch": torch.__version__, "threads": args.threads,
                              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "official": str(args.official_repo) if args.official_repo else None,
                              "loadavg_start": os.getloadavg(), "cases": []}
    for res in (int(r) for r in args.resolutions.split(",") if r):  # --resolutions "" for the FD part alone
        report["cases"].append(bench_case(N, res, [int(b) for b in args.batches.split(",")], args.rounds,
                                          args.min_time, args.parity_n, args.threads, args.openvino))
    if args.fd:
        with tempfile.TemporaryDirectory() as tmp:
            report["fd"] = fd_noise(N, args.fd_gen, Path(tmp))
    report["loadavg_end"] = os.getloadavg()  # another busy process would show here: rerun on an idle machine
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    if report["cases"]:
        print(markdown_table(report), file=sys.stderr)


if __name__ == "__main__":
    main()
