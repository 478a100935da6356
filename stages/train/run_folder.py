"""Where a run lives and what it starts from: a fresh numbered folder, a checkpoint to continue, or
pretrained weights (transfer learning); and the files a training run writes into its folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.serialization.loading import pretrained_url
from stages.common.config import ConfigError
from stages.train import checkpoint as ckpt
from stages.train.config import TrainConfig
from stages.train.context import RunContext
from stages.train.options import TrainingOptions, config_hash, diff_keys, resolve_options, run_description

# What training writes into a run folder: `auto` clears exactly these before a fresh start in the same
# folder, and nothing else a user may have put there.
RUN_OUTPUTS = ("checkpoints", "network-snapshot-*", "fakes*.png", "reals.png", "training_options.json", "log.txt",
               "stats.jsonl", "curves.csv", "metric-*.jsonl")


@dataclass(frozen=True)
class RunPlan:
    run_dir: Path
    restore_from: Path | None     # checkpoint to continue from
    transfer_source: str | None   # network the run's weights started from (also when continuing such a run)
    note: str | None = None       # said in the log (e.g. `latest` found nothing to continue)


def numbered_runs(outdir: Path) -> list[Path]:
    if not outdir.is_dir():
        return []
    runs = [p for p in outdir.iterdir() if p.is_dir() and p.name[:5].isdigit()]
    return sorted(runs, key=lambda p: int(p.name[:5]))


def plan_run(cfg: TrainConfig, dataset_name: str, num_processes: int) -> RunPlan:
    """The run folder and starting point for `cfg.resume`:

    - none: a fresh run (`run_dir`, or `<outdir>/<id:05d>-<desc>`); an explicit run_dir that already holds
      checkpoints is refused rather than silently overwritten;
    - `latest`: the newest complete checkpoint of `run_dir`, or of the newest numbered run in `outdir`;
      none yet means a fresh start, said in the log (so a retried job needs no special case);
    - `auto`: like `latest` (the caller starts over when the options changed, see `clear_outputs`);
    - a checkpoint folder: continue it;
    - anything else: a network snapshot/pickle/URL to start from (transfer learning).
    """
    explicit = Path(cfg.run_dir) if cfg.run_dir else None
    outdir = Path(cfg.outdir)

    def fresh() -> Path:
        if explicit is not None:
            return explicit
        runs = numbered_runs(outdir)
        next_id = int(runs[-1].name[:5]) + 1 if runs else 0
        return outdir / f"{next_id:05d}-{run_description(cfg, dataset_name, num_processes)}"

    if cfg.resume is None:
        if explicit is not None and ckpt.find_latest(explicit) is not None:
            raise ConfigError(f"{explicit} already has checkpoints; pass --resume latest to continue it")
        return RunPlan(fresh(), None, None)
    if cfg.resume in ("latest", "auto"):
        candidates = [explicit] if explicit is not None else list(reversed(numbered_runs(outdir)))
        for run in candidates:
            found = ckpt.find_latest(run)
            if found is not None:
                return RunPlan(run, found, _transfer_source_of(found))
        where = explicit if explicit is not None else outdir
        return RunPlan(fresh(), None, None, note=f"--resume {cfg.resume}: no checkpoint in {where}; starting a new run")
    path = Path(cfg.resume)
    if path.is_dir():
        if not ckpt.is_complete(path):
            raise ConfigError(f"resume: {path} is not a complete checkpoint folder")
        return RunPlan(explicit or path.parent.parent, path, _transfer_source_of(path))
    if "://" not in cfg.resume and not path.is_file() and pretrained_url(cfg.resume) is None:
        raise ConfigError(f"resume: {cfg.resume} does not exist (nor is it a known network name such as ffhq256)")
    return RunPlan(fresh(), None, cfg.resume)


def _transfer_source_of(checkpoint: Path) -> str | None:
    """A run that began from pretrained weights keeps its transfer-learning settings when continued."""
    try:
        meta = json.loads((checkpoint / ckpt.META).read_text())
    except (OSError, ValueError):
        return None  # loading the checkpoint reports the problem
    return meta.get("resume_pkl") if meta.get("identity", {}).get("transfer") else None


def clear_outputs(run_dir: Path) -> list[str]:
    """Remove what an earlier run wrote into `run_dir` (see RUN_OUTPUTS); returns the removed names."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(run_dir.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def decide_run(ctx: RunContext, cfg: TrainConfig, dataset: Any) -> tuple[RunPlan, TrainingOptions, dict]:
    """The run folder, the resolved options and the run identity. With `resume: auto`, a checkpoint written
    with other options means a new experiment (DVC keeps the run folder between runs): its outputs are
    cleared and the run starts over in the same folder; a crash with unchanged options continues."""
    plan = plan_run(cfg, dataset.name, ctx.world)
    opts = resolve_options(cfg, dataset, ctx.world, ctx.device.type, transfer_source=plan.transfer_source)
    ident = opts.identity(dataset.content_hash())
    if plan.restore_from is not None and cfg.resume == "auto":
        saved = ckpt.read_meta(plan.restore_from)
        if saved.get("config_hash") != config_hash(ident):
            if ctx.main and not cfg.dry_run:
                changes = "; ".join(diff_keys(saved.get("identity", {}), ident))
                print(f"options changed since {plan.restore_from.name} ({changes}); starting a new run")
                clear_outputs(plan.run_dir)
            ctx.barrier()
            plan = RunPlan(plan.run_dir, None, None)
            opts = resolve_options(cfg, dataset, ctx.world, ctx.device.type, transfer_source=None)
            ident = opts.identity(ident["dataset_hash"])
    return plan, opts, ident
