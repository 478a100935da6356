"""bf16 training against fp32 on the demo's data, several seeds: final quality and speed per run, one table.

    python tests/benchmarks/bf16_fidelity.py --data data/datasets/digits.zip --kimg 6 --seeds 0,1,2 \\
        --out reports/bf16_fidelity

Each (seed, precision) trains the demo's config (`tiny`, conditional, its params.yaml settings for ADA) for
`--kimg` into `<out>/<precision>-s<seed>/`, one run after the other (never in parallel on 2 cores), then its
final snapshot is scored with the demo's metrics (Inception `kid500`/`fid500`, the `fd_effnet1k_full` proxy) in one
evaluate call. Writes `<out>/fidelity.json` and `<out>/fidelity.md` (per seed, both precisions, the
sec/kimg of each run and the mean and spread per precision). Idle machine only: the speed column is wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("kid500", "fid500", "fd_effnet1k_full")  # the demo's evaluate metrics


def train(data: str, run_dir: Path, seed: int, precision: str, kimg: float) -> float:
    cmd = [sys.executable, "-m", "stages.train", "--data", data, "--run-dir", str(run_dir), "--cfg", "tiny",
           "--cond", "--kimg", str(kimg), "--seed", str(seed), "--precision", precision, "--snap", "1000",
           "--tick-kimg", "1", "--metrics", "none", "--grid-w", "8", "--grid-h", "10", "--workers", "1",
           "--no-mlflow"]
    start = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "SG2_MLFLOW": "0", "SG2_PARAMS": os.devnull})
    return time.monotonic() - start


def evaluate(run_dir: Path, data: str) -> dict[str, float]:
    out = run_dir / "fidelity-metrics.json"
    subprocess.run([sys.executable, "-m", "stages.evaluate", "--network", str(run_dir), "--metrics", ",".join(METRICS),
                    "--data", data, "--out", str(out), "--run-dir", str(run_dir), "--no-mlflow", "--no-progress"],
                   cwd=ROOT, check=True, env={**os.environ, "SG2_MLFLOW": "0", "SG2_PARAMS": os.devnull})
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--kimg", type=float, default=6.0)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="reports/bf16_fidelity")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for precision in ("fp32", "bf16"):
            run_dir = out / f"{precision}-s{seed}"
            seconds = train(args.data, run_dir, seed, precision, args.kimg)
            row = {"seed": seed, "precision": precision, "train_sec": round(seconds, 1),
                   "sec_per_kimg": round(seconds / args.kimg, 1), **evaluate(run_dir, args.data)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for precision in ("fp32", "bf16"):
        mine = [r for r in rows if r["precision"] == precision]
        summary[precision] = {m: {"mean": statistics.mean(r[m] for r in mine),
                                  "stdev": statistics.stdev(r[m] for r in mine) if len(mine) > 1 else 0.0}
                              for m in (*METRICS, "sec_per_kimg")}
    (out / "fidelity.json").write_text(json.dumps({"kimg": args.kimg, "rows": rows, "summary": summary}, indent=2))
    lines = [f"bf16 vs fp32 training, `tiny` on the digits, {args.kimg:g} kimg per run (wall clock includes start-up)",
             "", "| seed | precision | sec/kimg | " + " | ".join(METRICS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    lines += [f"| {r['seed']} | {r['precision']} | {r['sec_per_kimg']} | "
              + " | ".join(f"{r[m]:.4g}" for m in METRICS) + " |" for r in rows]
    lines += [f"| mean ± sd | {p} | {s['sec_per_kimg']['mean']:.1f} | "
              + " | ".join(f"{s[m]['mean']:.4g} ± {s[m]['stdev']:.2g}" for m in METRICS) + " |"
              for p, s in summary.items()]
    (out / "fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
