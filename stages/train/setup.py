"""Construction and restoration helpers of the training loop (kept out of loop.py so it reads top to bottom)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.training_rules import lazy_regularization
from stages.common.config import ConfigError
from stages.train import checkpoint as ckpt
from stages.train.options import TrainConfig, run_description


class TrainingDiverged(RuntimeError):
    """A gradient became NaN/inf; the run stopped and its last good checkpoint was kept."""


@dataclass
class Progress:
    cur_nimg: int = 0          # real images shown so far (all processes)
    cur_tick: int = 0
    batch_idx: int = 0
    tick_start_nimg: int = 0
    elapsed_sec: float = 0.0   # training time before this process started (resume)


@dataclass
class Phase:
    name: str                  # Gmain | Greg | Dmain | Dreg
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    interval: int
    timing: float = field(default=0.0)


# ----------------------------------------------------------------------------------------------------
# Run folder and resume source.


def _numbered_runs(outdir: Path) -> list[Path]:
    if not outdir.is_dir():
        return []
    runs = [p for p in outdir.iterdir() if p.is_dir() and p.name[:5].isdigit()]
    return sorted(runs, key=lambda p: int(p.name[:5]))


def locate_run(cfg: TrainConfig, dataset_name: str, opts: dict[str, Any]) -> tuple[Path, Path | None, bool]:
    """(run_dir, checkpoint to restore or None, transfer-learning flag) for `cfg.resume`.

    - no resume: a fresh run (`run_dir`, or `<outdir>/<id:05d>-<desc>`); an explicit run_dir that
      already holds checkpoints is refused rather than silently overwritten;
    - `auto`: like `latest`, but a checkpoint written with other options starts a new run instead;
    - `latest`: the newest complete checkpoint of `run_dir`, or of the newest numbered run in `outdir`;
      none yet means a fresh start (so a retried job needs no special case);
    - a checkpoint folder: full state;
    - anything else: a network snapshot/pickle/URL to start from (transfer learning).
    """
    explicit = Path(cfg.run_dir) if cfg.run_dir else None
    outdir = Path(cfg.outdir)

    def fresh() -> Path:
        if explicit is not None:
            return explicit
        runs = _numbered_runs(outdir)
        next_id = int(runs[-1].name[:5]) + 1 if runs else 0
        return outdir / f"{next_id:05d}-{run_description(cfg, dataset_name, opts)}"

    if cfg.resume is None:
        if explicit is not None and ckpt.find_latest(explicit) is not None:
            raise ConfigError(f"{explicit} already has checkpoints; pass --resume latest to continue it")
        return fresh(), None, False
    if cfg.resume in ("latest", "auto"):
        candidates = [explicit] if explicit is not None else list(reversed(_numbered_runs(outdir)))
        for run in candidates:
            found = ckpt.find_latest(run)
            if found is not None:
                return run, found, False
        return fresh(), None, False
    path = Path(cfg.resume)
    if path.is_dir():
        if not ckpt.is_complete(path):
            raise ConfigError(f"resume: {path} is not a complete checkpoint folder")
        return explicit or path.parent.parent, path, False
    if "://" not in cfg.resume and not path.is_file():
        raise ConfigError(f"resume: {cfg.resume} does not exist")
    return fresh(), None, True


# ----------------------------------------------------------------------------------------------------
# Networks and optimizers.


def build_phases(G: torch.nn.Module, D: torch.nn.Module, opts: dict[str, Any]) -> list[Phase]:
    """Gmain, Greg, Dmain, Dreg with lazy-regularization-rescaled Adam (official order and intervals)."""
    phases = []
    for name, module, opt_kwargs, interval in [("G", G, opts["G_opt_kwargs"], opts["G_reg_interval"]),
                                                ("D", D, opts["D_opt_kwargs"], opts["D_reg_interval"])]:
        params = [p for n, p in module.named_parameters()
                  if not (name == "G" and opts["freeze_mapping"] and n.startswith("mapping."))]
        lr, betas = lazy_regularization(opt_kwargs["lr"], tuple(opt_kwargs["betas"]), interval)
        opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=opt_kwargs["eps"])
        phases += [Phase(name + "main", module, params, opt, 1), Phase(name + "reg", module, params, opt, interval)]
    return phases


def build_augment_pipe(opts: dict[str, Any], device: torch.device) -> torch.nn.Module | None:
    if opts["augment_kwargs"] is None or (opts["augment_p"] == 0 and opts["ada_target"] is None):
        return None
    try:
        from models.augment import make_augment_pipe
    except ImportError as exc:
        raise ConfigError(f"aug: the augmentation pipeline is unavailable ({exc}); use --aug noaug") from exc
    pipe = make_augment_pipe(opts["augment_kwargs"]["augpipe"], p=float(opts["augment_p"]))
    return pipe.train().requires_grad_(False).to(device)


def transfer_weights(source: str, nets: dict[str, torch.nn.Module]) -> None:
    """Copy G, D, G_ema from a snapshot or official pickle; every differing tensor is named."""
    from models import load_network

    data = load_network(source)
    for name, module in nets.items():
        if name not in data:
            raise ConfigError(f"resume: {source} has no {name}")
        ckpt.load_module_state(module, data[name].state_dict(), f"resume {source} [{name}]")


def ema_copy(G: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(G).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------
# Logging, signals, resources.


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


def cpu_rss_gb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def format_time(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s // 60 % 60:02d}m"
    return f"{s // 86400}d {s // 3600 % 24:02d}h"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def progress_dict(p: Progress) -> dict[str, Any]:
    return dataclasses.asdict(p)


def now() -> float:
    return time.time()


def clear_run_dir(run_dir: Path) -> None:
    """Empty a run folder before a fresh start in the same place (`--resume auto` after an option change)."""
    for child in run_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
