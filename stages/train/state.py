"""Everything a run needs to continue exactly, captured and restored by one object (cf. EDM2's checkpoint
object): G, D, G_ema, augment pipe (p), both optimizers, progress counters, the path-length mean, the
statistics partial sums (the ADA accumulator among them), the RNG states and the sampler position.

`capture` and `restore` are mirror images; what is per process (RNG states, running means, partial sums)
is saved as one entry per process, and a run resumed on another process count shares it out so totals
are kept (see `checkpoint.share_sums` / `share_mean`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from models.loss import StyleGAN2Loss
from stages.train import checkpoint as ckpt
from stages.train.collectives import Collectives
from stages.train.stats import StatsCollector


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
    loss: StyleGAN2Loss                              # holds pl_mean
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
            "pl_mean": coll.gather_objects(self.loss.pl_mean.detach().cpu().clone()),
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
        self.loss.pl_mean.copy_(ckpt.share_mean(state["pl_mean"], rank, world))
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
