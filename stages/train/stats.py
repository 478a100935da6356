"""Training statistics: an explicit collector object (no module globals), reduced across processes.

The loss and the loop call `report(name, value)` as often as they like; values are folded into
running (count, sum, sum of squares) per name on the value's device, so reporting never forces a
device sync. `collect()` reduces over processes and returns num/mean/std per name; `flush()` also
writes one JSON line to `stats.jsonl` (official layout: `{name: {num, mean, std}, ..., timestamp}`).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stages.common.fileio import append_jsonl, filter_jsonl, read_jsonl, write_text_atomic

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
