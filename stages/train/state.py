"""Everything a run needs to continue exactly, captured and restored by one object (cf. EDM2's checkpoint
object): G, D, G_ema, augment pipe (p), both optimizers, progress counters, the loss's own state (StyleGAN2's
path-length mean), the
statistics partial sums (the ADA accumulator among them), the RNG states and the sampler position.

`capture` and `restore` are mirror images; what is per process (RNG states, running means, partial sums)
is saved as one entry per process, and a run resumed on another process count shares it out so totals
are kept (see `checkpoint.share_sums` / `share_loss_state`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.families import Loss
from stages.train import checkpoint as ckpt
from stages.train.artifacts import truncate_metric_jsonl
from stages.train.context import Collectives, RunContext
from stages.train.options import TrainingOptions, config_hash, diff_keys
from stages.train.stats import StatsCollector, truncate_stats_jsonl


@dataclass
class Progress:
    cur_nimg: int = 0          # real images shown so far (all processes)
    cur_tick: int = 0
    batch_idx: int = 0         # minibatches so far; the sampler and the per-step seeds continue from here
    tick_start_nimg: int = 0
    elapsed_sec: float = 0.0   # training time of earlier sessions of this run (resume)


@dataclass
class TrainingState:
    nets: dict[str, torch.nn.Module]                 # G, D, G_ema
    augment_pipe: torch.nn.Module | None
    optimizers: dict[str, torch.optim.Optimizer]     # G, D
    loss: Loss                                       # its state_dict: e.g. StyleGAN2's path-length mean
    stats: StatsCollector
    ada_stats: StatsCollector | None
    progress: Progress = dataclasses.field(default_factory=Progress)

    def capture(self, coll: Collectives, session_sec: float) -> dict[str, Any]:
        """The checkpoint contents (every process must call it: per-process parts are gathered)."""
        return {
            **{name: m.state_dict() for name, m in self.nets.items()},
            "augment_pipe": self.augment_pipe.state_dict() if self.augment_pipe is not None else {},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "progress": dict(vars(self.progress), elapsed_sec=self.progress.elapsed_sec + session_sec),
            "loss": coll.gather_objects(self.loss.state_dict()),
            "stats": coll.gather_objects(self.stats.state_dict()),
            "ada_stats": coll.gather_objects(self.ada_stats.state_dict() if self.ada_stats is not None else {}),
            "rng": coll.gather_objects(ckpt.rng_state()),
            "sampler_position": self.progress.batch_idx,  # in global batches; InfiniteBatchSampler restarts there
        }

    def restore(self, state: dict[str, Any], where: str, rank: int, world: int, device: torch.device) -> list[str]:
        """Load a checkpoint's contents; returns notes for the log (empty when the continuation is exact)."""
        for name, module in self.nets.items():
            ckpt.load_module_state(module, state[name], f"{where} [{name}]")
        if self.augment_pipe is not None:
            ckpt.load_module_state(self.augment_pipe, state["augment_pipe"], f"{where} [augment_pipe]")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.progress = Progress(**state["progress"])
        self.loss.load_state_dict(ckpt.share_loss_state(_loss_state(state, self.loss), rank, world))
        self.stats.load_state_dict(ckpt.share_sums(state["stats"], rank, world), device)
        if self.ada_stats is not None:
            self.ada_stats.load_state_dict(ckpt.share_sums(state["ada_stats"], rank, world), device)
        rngs = state["rng"]
        if len(rngs) == world:
            ckpt.set_rng_state(rngs[rank])
            return []
        return [f"checkpoint was written by {len(rngs)} processes, this run has {world}: RNG states reseeded and "
                f"the path-length mean averaged, so the run continues close to, not exactly on, its earlier "
                f"trajectory"]


def _loss_state(state: dict[str, Any], loss: Loss) -> list[dict[str, torch.Tensor]]:
    """The per-process loss states of a checkpoint; those written before the loss protocol saved StyleGAN2's
    path-length mean under its own key (and a dummy zero for Projected GAN, which has no state)."""
    if "loss" in state:
        return state["loss"]
    legacy = state["pl_mean"] if isinstance(state["pl_mean"], list) else [state["pl_mean"]]
    return [{"pl_mean": v} if "pl_mean" in loss.state_dict() else {} for v in legacy]


def restore_run(ctx: RunContext, state: TrainingState, checkpoint: Path, resume: str | None, ident: dict) -> None:
    """Continue from `checkpoint`. With latest/auto a checkpoint that fails to load is named and the previous
    intact one is used; a checkpoint the user named has no silent substitute. Records written after the
    checkpoint (stats, metric lines) are dropped and newer checkpoints set aside, never deleted."""
    assert ctx.run_dir is not None
    notes: list[str] = []

    def apply(path: Path, contents: dict, meta: dict) -> None:
        if meta.get("config_hash") != config_hash(ident):
            raise ckpt.OptionsMismatchError(f"{path} was written with different options: "
                                            + "; ".join(diff_keys(meta.get("identity", {}), ident)))
        notes[:] = state.restore(contents, str(path), ctx.rank, ctx.world, ctx.device)

    if resume in ("latest", "auto"):
        path, meta, skipped = ckpt.load_newest_intact(ctx.run_dir, checkpoint, apply)
        for reason in skipped:
            ctx.log(f"warning: {reason}; used an older checkpoint")
    else:
        path = checkpoint
        contents, meta = ckpt.load_checkpoint(path)
        apply(path, contents, meta)
    ctx.log(f"resuming from checkpoint {path}")
    for note in notes:
        ctx.log(f"note: {note}")
    if ctx.main:
        set_aside = ckpt.set_aside_newer(ctx.run_dir, path)
        if set_aside is not None:
            ctx.log(f"note: checkpoints newer than {path.name} moved to {set_aside} (not deleted)")
        if dropped := truncate_stats_jsonl(ctx.run_dir / "stats.jsonl", state.progress.cur_tick):
            ctx.log(f"note: {dropped} stats.jsonl record(s) written after {path.name} removed")
        if dropped := truncate_metric_jsonl(ctx.run_dir, float(meta.get("saved_at", float("inf")))):
            ctx.log(f"note: {dropped} metric-*.jsonl line(s) written after {path.name} removed")


def checkpoint_when_due(ctx: RunContext, state: TrainingState, opts: TrainingOptions, ident: dict,
                        session_sec: float, final: bool) -> None:
    """Advance the tick counters, then save the full state when due (resume continues from here). Every process
    calls it: per-process parts are gathered; the main process writes."""
    prog = state.progress
    due = final or prog.cur_tick % opts.checkpoint_ticks == 0
    prog.cur_tick += 1
    prog.tick_start_nimg = prog.cur_nimg
    if due:
        contents = state.capture(ctx.coll, session_sec)
        if ctx.main:
            path = ckpt.save_checkpoint(ctx.run_dir, contents, prog.cur_nimg,
                                        {"config_hash": config_hash(ident), "identity": ident,
                                         "resume_pkl": opts.resume_pkl}, keep=opts.keep_checkpoints)
            ctx.log(f"checkpoint {path.name}")
    ctx.barrier()
