"""Equal wall-clock comparison of training configs (issue: Projected GAN vs StyleGAN2 on small data).

Trains each `--cfg` on the same dataset for the same wall-clock budget (the run is stopped with SIGTERM,
which the training loop answers with a checkpoint), one run after the other (never in parallel: two
trainings on the same cores slow each other far more than 2x). Every tick writes a network snapshot;
afterwards snapshots are scored with every `--metric` (default: Inception `kid1k_full` and `fid1k_full`, the fair
referee, and the `fd_effnet1k_full` proxy, which favours Projected GAN because its discriminator trains in
those very features), outside the budget, so evaluation cost does not eat into either run's training time.
`--eval-every N` scores every Nth snapshot and the last. Writes under `--outdir`:

    <cfg>/                 the training run folders (stats.jsonl, fakes*.png, snapshots)
    comparison.csv         cfg, snapshot, kimg, train_sec, one column per metric
    comparison.png         each metric vs training seconds and vs kimg, one line per cfg
    comparison.json        the same rows plus the settings and each run's final sec/kimg

Usage (about 2 x minutes + evaluation):

    python tests/benchmarks/compare_families.py --data data/datasets/digits.zip --minutes 10 \\
        --cfg tiny:2 --cfg fastgan_tiny:0.5 --outdir reports/compare

`--cfg NAME:TICK_KIMG` sets each run's tick (and snapshot) length, so that both get ~10 snapshots.
`--mlflow` logs one MLflow run per cfg (params, the metric per snapshot with its kimg as step, grids).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stages.common.fileio import read_jsonl, write_json_atomic  # noqa: E402


def train(cfg: str, tick_kimg: float, data: str, run_dir: Path, minutes: float, extra: list[str]) -> float:
    """Train `cfg` into `run_dir` for `minutes` of wall clock; returns the seconds it actually ran."""
    if run_dir.exists():
        sys.exit(f"error: {run_dir} exists; pick another --outdir (or --skip-train to re-evaluate it)")
    cmd = [sys.executable, "-m", "stages.train", "--data", data, "--run-dir", str(run_dir), "--cfg", cfg,
           "--kimg", "100000", "--tick-kimg", str(tick_kimg), "--snap", "1", "--image-snapshot-ticks", "1",
           "--checkpoint-ticks", "1000000", "--metrics", "none", *extra]
    print("$", " ".join(cmd), flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "SG2_MLFLOW": "0"})
    try:
        proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the loop writes a checkpoint and exits
        proc.wait()
    return time.monotonic() - start


def snapshot_rows(run_dir: Path) -> list[dict]:
    """(snapshot, kimg, train_sec) per network snapshot: kimg from the snapshot's own header (`meta.cur_nimg`),
    seconds from the tick record at that kimg (a snapshot is written at the end of its tick)."""
    from models.serialization.snapshot import read_header

    ticks = {round(r["Progress/kimg"]["mean"] * 1000): r["Timing/total_sec"]["mean"]
             for r in read_jsonl(run_dir / "stats.jsonl")}
    rows = []
    for snap in sorted(run_dir.glob("network-snapshot-*.safetensors")):
        nimg = (read_header(snap).get("meta") or {}).get("cur_nimg")
        if nimg in ticks:
            rows.append({"snapshot": snap.name, "kimg": nimg / 1000, "train_sec": ticks[nimg], "path": snap})
    return rows


def evaluate(snapshot: Path, metrics: list[str], data: str, workdir: Path) -> dict[str, float]:
    """All `metrics` of one snapshot in one evaluate call (FID and KID of one size share their feature passes)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{snapshot.stem}.{'+'.join(metrics)}.json"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "stages.evaluate", "--network", str(snapshot), "--metrics",
                        ",".join(metrics), "--data", data, "--out", str(out), "--run-dir", str(workdir), "--no-mlflow",
                        "--no-skip-missing-detectors"], cwd=ROOT, check=True, env={**os.environ, "SG2_MLFLOW": "0"})
    results = json.loads(out.read_text())
    return {m: float(results[m]) for m in metrics}


def plot(rows: list[dict], metrics: list[str], dest: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10, 3.6 * len(metrics)), squeeze=False)
    for row, metric in zip(axes, metrics):
        for cfg in dict.fromkeys(r["cfg"] for r in rows):
            mine = [r for r in rows if r["cfg"] == cfg and metric in r]
            row[0].plot([r["train_sec"] / 60 for r in mine], [r[metric] for r in mine], "o-", label=cfg)
            row[1].plot([r["kimg"] for r in mine], [r[metric] for r in mine], "o-", label=cfg)
        row[0].set_xlabel("training minutes (2 CPU cores)")
        row[1].set_xlabel("kimg (real images shown, thousands)")
        for ax in row:
            ax.set_ylabel(metric)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    plt.close(fig)


def log_mlflow(cfg: str, run_dir: Path, rows: list[dict], metrics: list[str], settings: dict) -> None:
    from stages.common.tracking import make_tracker, named_run
    tracker, note = make_tracker(True)
    if note:
        print("note:", note)
    tracker.start(named_run(f"compare-{cfg}"), params={**settings, "cfg": cfg}, tags={"stage": "compare"})
    for r in rows:  # step = images shown, so the MLflow chart's x axis is training progress
        tracker.log_metrics({**{m: r[m] for m in metrics if m in r}, "train_sec": r["train_sec"]},
                            step=round(r["kimg"] * 1000))
    fakes = sorted(run_dir.glob("fakes*.png"))
    tracker.log_artifacts([p for p in (run_dir / "reals.png", *fakes[-1:]) if p.exists()])
    tracker.end()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--cfg", action="append", required=True, help="NAME:TICK_KIMG, repeat per config")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--metric", action="append", default=None,
                    help="metric to score snapshots with; repeat (default: kid1k_full, fid1k_full, fd_effnet1k_full)")
    ap.add_argument("--eval-every", type=int, default=1, help="score every Nth snapshot (and always the last)")
    ap.add_argument("--outdir", default="reports/compare")
    ap.add_argument("--cond", action="store_true", help="train class-conditional (both runs)")
    ap.add_argument("--mlflow", action="store_true")
    ap.add_argument("--skip-train", action="store_true", help="only (re)evaluate existing run folders")
    args = ap.parse_args()
    metrics = args.metric or ["kid1k_full", "fid1k_full", "fd_effnet1k_full"]
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--cond" if args.cond else "--no-cond"]
    rows, summary = [], {"data": args.data, "minutes": args.minutes, "metrics": metrics, "runs": {}}
    for spec in args.cfg:
        cfg, _, tick = spec.partition(":")
        run_dir = out / cfg
        ran = None if args.skip_train else train(cfg, float(tick or 1), args.data, run_dir, args.minutes, extra)
        mine = snapshot_rows(run_dir)
        mine = [r for i, r in enumerate(mine) if i % args.eval_every == 0 or i == len(mine) - 1]
        for r in mine:
            r.update(evaluate(r.pop("path"), metrics, args.data, out / "eval" / cfg))
            r["cfg"] = cfg
            values = "  ".join(f"{m} {r[m]:.4g}" for m in metrics)
            print(f"{cfg:14s} kimg {r['kimg']:7.3f}  train {r['train_sec']:7.1f} s  {values}", flush=True)
        rows += mine
        last = mine[-1] if mine else {}
        summary["runs"][cfg] = {"tick_kimg": float(tick or 1), "wall_sec": ran, "snapshots": len(mine),
                                "final_kimg": last.get("kimg"), "final_train_sec": last.get("train_sec"),
                                "final": {m: last.get(m) for m in metrics},
                                "best": {m: min((r[m] for r in mine), default=None) for m in metrics},
                                "sec_per_kimg": (last["train_sec"] / last["kimg"]) if last.get("kimg") else None}
        if args.mlflow and mine:
            log_mlflow(cfg, run_dir, mine, metrics, {"minutes": args.minutes, "data": args.data})
    with open(out / "comparison.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["cfg", "snapshot", "kimg", "train_sec", *metrics])
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(out / "comparison.json", {**summary, "rows": rows})
    if rows:
        plot(rows, metrics, out / "comparison.png")
    print(json.dumps(summary["runs"], indent=1))


if __name__ == "__main__":
    main()
