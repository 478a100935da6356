"""The context one training process runs in: its place in the process group (Accelerate or torchrun), the
cross-process operations of the loop, the run folder, the log and the tracker, as one object the loop's named
functions share instead of a rank, world, device and main flag passed by hand.

Processes are Accelerate's (or torchrun's) process group; gradients are all-reduced per phase by hand
(`phases.reduce_gradients`) instead of through a DDP wrapper, whose unused-parameter checks clash with the
phase scheme (Gmain/Greg/Dmain/Dreg touch different parameter sets). What the run says while it trains:
`log.txt` + console on the main process, one status line per tick (official layout, plus the ETA), and
SIGTERM/SIGINT turned into a graceful stop at the next step.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.common.fileio import write_json_atomic
from stages.common.progress import format_time
from stages.common.tracking import Tracker, git_commit, make_tracker
from stages.train.stats import write_run_curves


class Collectives:
    """`dist` False: a single process, every operation returns its input."""

    def __init__(self, dist: bool) -> None:
        self.dist = dist

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.dist:
            return t
        t = t.to(self.device)
        torch.distributed.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on one (all processes stop at the same step even when a
        signal reached them at different times)."""
        if not self.dist:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every process."""
        if not self.dist:
            return [obj]
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out

    def union(self, names: list[str]) -> list[str]:
        """The sorted union of name lists over processes (every process then reduces the same layout)."""
        return sorted({n for part in self.gather_objects(names) for n in part})

    def broadcast_modules(self, *modules: torch.nn.Module | None) -> None:
        """Rank 0's parameters and buffers everywhere: each process built its networks from its own seed,
        and the run's weights are rank 0's (what DDP would broadcast at construction)."""
        if not self.dist:
            return
        for module in modules:
            for t in [*module.parameters(), *module.buffers()] if module is not None else []:
                torch.distributed.broadcast(t.data, src=0)


class RunLog:
    """Console + `log.txt` on the main process; silent elsewhere."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, msg: str = "") -> None:
        if self.path is None:
            return
        print(msg, flush=True)
        with self.path.open("a") as fh:
            fh.write(msg + "\n")


def tick_line(tick: int, cur_nimg: int, total_nimg: int, info: dict[str, float]) -> str:
    """`tick 3  kimg 12.000/25000  time 4m 10s  sec/tick ...  eta 2d 03h 10m ...` from the tick statistics."""
    sec_per_kimg = info["Timing/sec_per_kimg"]
    eta = format_time(max(total_nimg - cur_nimg, 0) / 1000 * sec_per_kimg)
    elapsed = format_time(info["Timing/total_sec"])
    return (f"tick {tick:<5d} kimg {cur_nimg / 1e3:.3f}/{total_nimg / 1e3:g}  time {elapsed}"
            f"  sec/tick {info['Timing/sec_per_tick']:.1f}  sec/kimg {sec_per_kimg:.2f}  eta {eta}"
            f"  maintenance {info['Timing/maintenance_sec']:.1f}  cpumem {info['Resources/cpu_mem_gb']:.2f}"
            f"  gpumem {info['Resources/peak_gpu_mem_gb']:.2f}  augment {info['Progress/augment']:.3f}")


class StopFlag:
    signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGTERM/SIGINT set a flag that the loop checks between steps; a second SIGINT interrupts at once."""
    flag = StopFlag()
    previous: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum

    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class RunContext:
    """One process of one run. `run_dir`, `log` and `tracker` are filled in as the run is opened."""

    acc: Any                                   # accelerate.Accelerator
    coll: Collectives
    run_dir: Path | None = None
    log: RunLog = dataclasses.field(default_factory=lambda: RunLog(None))
    tracker: Tracker | None = None

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def device(self) -> torch.device:
        return self.acc.device

    @property
    def main(self) -> bool:
        """The process that writes files and talks to MLflow."""
        return self.acc.is_main_process

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    def open(self, run_dir: Path, options_json: dict[str, Any], note: str | None) -> None:
        """Create the run folder with its `training_options.json` and start its log."""
        if self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "training_options.json", dict(options_json, run_dir=str(run_dir)))
        self.barrier()
        self.run_dir, self.log = run_dir, RunLog(run_dir / "log.txt" if self.main else None)
        self.log(f"run folder: {run_dir}  ({self.world} process{'es' if self.world > 1 else ''} on "
                 f"{self.device.type})")
        if note:
            self.log(f"note: {note}")

    def start_tracking(self, mlflow: bool, params: dict[str, Any], tags: dict[str, str]) -> None:
        """MLflow (or nothing) on the main process, one run named after the run folder."""
        assert self.run_dir is not None, "open the run first"
        self.tracker, note = make_tracker(mlflow) if self.main else make_tracker(False)
        if note:
            self.log(f"note: {note}")
        self.tracker.start(f"train {self.run_dir.name}", params, tags={
            "stage": "train", "run_dir": str(self.run_dir),
            "git_commit": git_commit(Path(__file__).parent) or "unknown", **tags})

    def close(self, status: str) -> None:
        """The run's curves and logs into the folder and MLflow; the tracker closes with the run's status."""
        if self.main and self.run_dir is not None:
            write_run_curves(self.run_dir)
            if self.tracker is not None:
                self.tracker.log_artifacts([self.run_dir / n for n in ("stats.jsonl", "curves.csv", "quality.csv",
                                                                       "curves.png", "log.txt")])
        if self.tracker is not None:
            self.tracker.end(status)
