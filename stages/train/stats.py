"""Training statistics: an explicit collector object (no module globals), reduced across processes.

The loss and the loop call `report(name, value)` as often as they like; values are folded into
running (count, sum, sum of squares) per name on the value's device, so reporting never forces a
device sync. `collect()` reduces over processes and returns num/mean/std per name; `flush()` also
writes one JSON line to `stats.jsonl` (official layout: `{name: {num, mean, std}, ..., timestamp}`).

The curves people look at, as files: `curves.csv` (one row per tick), `quality.csv` (the snapshot metrics
against kimg, for `dvc plots`) and `curves.png` (losses, regularizers, augment p and r_t, quality: one image per
run, rendered locally because DVC's HTML plots fetch their renderer from a CDN).
"""

from __future__ import annotations

import io
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stages.common.fileio import append_jsonl, filter_jsonl, read_jsonl, write_bytes_atomic, write_text_atomic

# An all-reduce(sum) of a float64 tensor across processes; identity when training on one process.
Reducer = Callable[[torch.Tensor], torch.Tensor]


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


class StatsCollector:
    """Accumulates mean/std/num per statistic name between `collect()` calls."""

    def __init__(
        self,
        regex: str = ".*",                   # names to keep
        reduce: Reducer = _no_reduce,        # cross-process all-reduce(sum)
        gather_names: Callable[[list[str]], list[str]] | None = None,  # union of names over processes
        jsonl: str | Path | None = None,     # where `flush` appends (None on non-main processes)
    ) -> None:
        self.jsonl = Path(jsonl) if jsonl is not None else None
        self._regex = re.compile(regex)
        self._reduce = reduce
        # Processes may have reported different names (e.g. timings on the main process only); the
        # union is agreed on before reducing so every process all-reduces the same tensor layout.
        self._gather_names = gather_names or (lambda names: names)
        self._acc: dict[str, torch.Tensor] = {}  # name -> float64 [count, sum, sumsq]

    def report(self, name: str, value: torch.Tensor | float) -> None:
        if not self._regex.fullmatch(name):
            return
        t = torch.as_tensor(value).detach().flatten()
        if t.numel() == 0:
            return
        dev = t.device if t.device.type != "mps" else torch.device("cpu")  # mps has no float64
        t = t.to(dev, torch.float64)
        moments = torch.stack([torch.tensor(float(t.numel()), dtype=torch.float64, device=dev), t.sum(),
                               t.square().sum()])
        acc = self._acc.get(name)
        self._acc[name] = moments if acc is None else acc + moments.to(acc.device)

    def collect(self) -> dict[str, dict[str, float]]:
        """Reduce over processes, reset, and return `{name: {num, mean, std}}` sorted by name."""
        names = sorted(self._gather_names(sorted(self._acc)))
        if not names:
            return {}
        dev = next(iter(self._acc.values())).device if self._acc else torch.device("cpu")
        zero = torch.zeros(3, dtype=torch.float64, device=dev)
        stacked = torch.stack([self._acc.get(n, zero).to(dev) for n in names])
        stacked = self._reduce(stacked).cpu()
        self._acc.clear()
        out = {}
        for name, (num, s, sq) in zip(names, stacked.tolist()):
            mean = s / num if num else math.nan
            var = max(sq / num - mean**2, 0.0) if num else math.nan
            out[name] = {"num": num, "mean": mean, "std": math.sqrt(var)}
        return out

    def mean(self, name: str) -> float:
        """Collect only to read one mean (the ADA controller's r_t); NaN when nothing was reported."""
        return self.collect().get(name, {}).get("mean", math.nan)

    def flush(self, tick_info: dict[str, float] | None = None) -> dict[str, float]:
        """Collect, append one JSON line to `stats.jsonl`, and return `{name: mean}` for the tracker."""
        stats: dict[str, Any] = self.collect()
        for k, v in (tick_info or {}).items():
            stats.setdefault(k, {"num": 1, "mean": float(v), "std": 0.0})
        if self.jsonl is not None:
            append_jsonl(self.jsonl, dict(stats, timestamp=time.time()))
        return {k: v["mean"] for k, v in stats.items()}

    # Checkpointing: partial sums between collections are part of the training state (the ADA
    # accumulator in particular), so a resumed run adjusts p exactly as the uninterrupted one.
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self._acc.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        self._acc = {k: v.to(device, torch.float64) for k, v in state.items()}


class Tee:
    """Forward each report to several collectors (the loss sees one sink); None entries are skipped."""

    def __init__(self, *sinks: StatsCollector | None) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def report(self, name: str, value: torch.Tensor | float) -> None:
        for s in self.sinks:
            s.report(name, value)


def truncate_stats_jsonl(path: str | Path, before_tick: int) -> int:
    """Drop records of ticks >= `before_tick`: logged after the checkpoint a run resumes from, and about
    to be logged again. Returns how many were dropped."""
    return filter_jsonl(path, lambda r: r.get("Progress/tick", {}).get("mean", -1) < before_tick)


# Columns of `curves.csv` (DVC plots): tick means of the statistics people watch, x axis kimg.
CURVE_COLUMNS = {
    "kimg": "Progress/kimg",
    "G_loss": "Loss/G/loss",
    "D_loss": "Loss/D/loss",
    "r1_penalty": "Loss/r1_penalty",
    "pl_penalty": "Loss/pl_penalty",
    "real_sign": "Loss/signs/real",
    "augment_p": "Progress/augment",
    "sec_per_kimg": "Timing/sec_per_kimg",
}


def write_curves_csv(stats_jsonl: str | Path, out_csv: str | Path) -> int:
    """Rewrite `out_csv` from `stats.jsonl` (one row per tick); returns the row count.

    Derived from the jsonl every time rather than appended, so a resumed run (whose jsonl continues)
    and a crash mid-write both leave a consistent file. Missing statistics are empty cells.
    """
    rows = [[record.get(name, {}).get("mean", "") for name in CURVE_COLUMNS.values()]
            for record in read_jsonl(stats_jsonl)]
    lines = [",".join(CURVE_COLUMNS)]
    lines += [",".join("" if v == "" else f"{float(v):.6g}" for v in row) for row in rows]
    write_text_atomic(out_csv, "\n".join(lines) + "\n")
    return len(rows)


def cpu_rss_gb() -> float:
    """Resident memory of this process in GiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_gpu_gb(device: torch.device) -> float:
    """Peak CUDA memory since the last call, in GiB (0 off CUDA)."""
    if device.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


_SNAPSHOT_KIMG = re.compile(r"network-snapshot-(\d+(?:\.\d+)?)\.")


def quality_rows(run_dir: Path) -> tuple[list[str], list[list[float | str]]]:
    """(metric names, rows of [kimg, value per metric]) from the run's `metric-<name>.jsonl` files."""
    by_kimg: dict[float, dict[str, float]] = {}
    for path in sorted(run_dir.glob("metric-*.jsonl")):
        for record in read_jsonl(path):
            m = _SNAPSHOT_KIMG.search(str(record.get("snapshot_pkl") or ""))
            if m is None:
                continue
            for key, value in (record.get("results") or {}).items():
                by_kimg.setdefault(float(m[1]), {})[key] = float(value)
    names = sorted({k for values in by_kimg.values() for k in values})
    rows = [[kimg, *[values.get(n, "") for n in names]] for kimg, values in sorted(by_kimg.items())]
    return names, rows


def write_quality_csv(run_dir: Path) -> int:
    """`quality.csv`: kimg and every snapshot metric (empty cells where one was not measured)."""
    names, rows = quality_rows(run_dir)
    lines = [",".join(["kimg", *names])]
    lines += [",".join("" if v == "" else f"{float(v):.6g}" for v in row) for row in rows]
    write_text_atomic(run_dir / "quality.csv", "\n".join(lines) + "\n")
    return len(rows)


def render_curves(run_dir: Path) -> Path | None:
    """`curves.png` from `stats.jsonl` and the metric files; None when there is nothing to draw yet."""
    records = read_jsonl(run_dir / "stats.jsonl")
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    def series(name: str) -> tuple[list[float], list[float]]:
        pts = [(r["Progress/kimg"]["mean"], r[name]["mean"]) for r in records if name in r and "Progress/kimg" in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    names, rows = quality_rows(run_dir)
    panels = [("losses", ["Loss/G/loss", "Loss/D/loss"]), ("regularizers", ["Loss/r1_penalty", "Loss/pl_penalty"]),
              ("augmentation", ["Progress/augment", "Loss/signs/real"])]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=80)
    for ax, (title, keys) in zip(axes, panels):
        drawn = 0
        for key in keys:
            x, y = series(key)
            if x:
                ax.plot(x, y, label=key)
                drawn += 1
        ax.set_title(title if drawn else f"{title}: not used")
        ax.set_xlabel("kimg")
        if drawn:
            ax.legend(fontsize=7)
    ax = axes[3]
    for i, name in enumerate(names):
        pts = [(row[0], row[i + 1]) for row in rows if row[i + 1] != ""]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_title("quality (snapshot metrics)" if names else "quality: no --metrics")
    ax.set_xlabel("kimg")
    if names:
        ax.legend(fontsize=7)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_bytes_atomic(run_dir / "curves.png", buf.getvalue())


def write_run_curves(run_dir: Path) -> None:
    """curves.csv, quality.csv and curves.png from what the run logged; a plotting problem is warned about,
    never allowed to fail a run whose checkpoints are written."""
    write_curves_csv(run_dir / "stats.jsonl", run_dir / "curves.csv")
    write_quality_csv(run_dir)
    try:
        render_curves(run_dir)
    except Exception as exc:  # matplotlib missing or a backend problem: the CSVs are there
        warnings.warn(f"curves.png not drawn ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
