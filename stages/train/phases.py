"""One training step: the phases Gmain, Greg, Dmain, Dreg (StyleGAN2 Sec. 3.1, lazy regularization), each
accumulating its gradients over rounds of `batch_gpu`, reduced over processes, checked, then applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.families import Loss
from models.training_rules import lazy_regularization
from stages.common.errors import StageError
from stages.train.context import Collectives, RunContext
from stages.train.options import TrainingOptions


class TrainingDiverged(StageError):
    """A gradient became NaN/inf; the run stopped and its last good checkpoint was kept (exit 3)."""

    exit_code = 3


@dataclass
class Phase:
    name: str                          # Gmain | Greg | Dmain | Dreg
    params: list[torch.nn.Parameter]   # what its optimizer updates
    opt: torch.optim.Optimizer         # shared by the main and the reg phase of one network
    interval: int                      # runs when batch_idx % interval == 0


def build_phases(G: torch.nn.Module, D: torch.nn.Module, opts: TrainingOptions) -> list[Phase]:
    """Gmain, Greg, Dmain, Dreg with lazy-regularization-rescaled Adam (official order and intervals); a network
    without a regularization interval (StyleGAN3's G) has one main phase and plain Adam."""
    phases = []
    for name, module, opt_kwargs, interval in [("G", G, opts.G_opt_kwargs, opts.G_reg_interval),
                                                ("D", D, opts.D_opt_kwargs, opts.D_reg_interval)]:
        params = [p for n, p in module.named_parameters()
                  if not (name == "G" and opts.freeze_mapping and n.startswith("mapping."))]
        if interval is None:
            opt = torch.optim.Adam(params, lr=opt_kwargs["lr"], betas=tuple(opt_kwargs["betas"]), eps=opt_kwargs["eps"])
            phases.append(Phase(name + "main", params, opt, 1))
            continue
        lr, betas = lazy_regularization(opt_kwargs["lr"], tuple(opt_kwargs["betas"]), interval)
        opt = torch.optim.Adam(params, lr=lr, betas=betas, eps=opt_kwargs["eps"])
        phases += [Phase(name + "main", params, opt, 1), Phase(name + "reg", params, opt, interval)]
    return phases


def optimizers(phases: list[Phase]) -> dict[str, torch.optim.Optimizer]:
    """{'G': Adam, 'D': Adam}: one per network (its main and reg phase share it)."""
    return {ph.name[0]: ph.opt for ph in phases}


class FrozenMapping(torch.nn.Module):
    """Mapping network kept fixed: its output becomes a leaf that requires grad, so the path-length
    regularizer (a gradient w.r.t. w) still works while no gradient reaches the mapping weights."""

    def __init__(self, mapping: torch.nn.Module) -> None:
        super().__init__()
        self.mapping = mapping

    def forward(self, z: torch.Tensor, c: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        ws = self.mapping(z, c, **kwargs)
        return ws.detach().requires_grad_(torch.is_grad_enabled())


class TrainingStep:
    """Runs every phase due at a batch index. Latents, labels and in-phase randomness are pure functions of
    (seed, batch index, phase, global round), so N processes reproduce one process and a resumed run needs
    no RNG state to continue exactly."""

    def __init__(self, ctx: RunContext, phases: list[Phase], loss: Loss, dataset: Any, opts: TrainingOptions,
                 z_dim: int) -> None:
        self.phases, self.loss, self.dataset = phases, loss, dataset
        self.seed, self.batch_gpu, self.z_dim = opts.random_seed, opts.batch_gpu, z_dim
        self.device, self.coll, self.rank, self.world = ctx.device, ctx.coll, ctx.rank, ctx.world
        self.family, self.precision = opts.family, opts.training_precision

    def _latents(self, batch_idx: int, local: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """This process's slice of the global batch's z and labels, one row per phase."""
        n = len(self.phases)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_idx)
        global_z = torch.randn([n, local * self.world, self.z_dim], generator=gen)
        picks = np.random.RandomState([self.seed, batch_idx]).randint(len(self.dataset), size=[n, local * self.world])
        mine = slice(self.rank * local, (self.rank + 1) * local)
        zs = list(global_z[:, mine].to(self.device).unbind(0))
        cs = [torch.from_numpy(np.stack([self.dataset.get_label(i) for i in row[mine]])).to(self.device)
              for row in picks]
        return zs, cs

    def __call__(self, real_img: torch.Tensor, real_c: torch.Tensor, batch_idx: int, cur_nimg: int, where: str) -> None:
        real_imgs = (real_img.to(self.device).to(torch.float32) / 127.5 - 1).split(self.batch_gpu)  # [NCHW] [-1, 1]
        real_cs = real_c.to(self.device).split(self.batch_gpu)
        all_z, all_c = self._latents(batch_idx, real_img.shape[0])
        rounds = len(real_imgs)
        for phase_idx, (phase, gen_z, gen_c) in enumerate(zip(self.phases, all_z, all_c)):
            if batch_idx % phase.interval != 0:
                continue
            phase.opt.zero_grad(set_to_none=True)
            for p in phase.params:
                p.requires_grad_(True)
            for r, (real, rc, z, c) in enumerate(zip(real_imgs, real_cs, gen_z.split(self.batch_gpu),
                                                     gen_c.split(self.batch_gpu))):
                # Reseed per (step, phase, global round): synthesis noise, style-mixing cutoff, path-length
                # noise and augmentation are then the same whichever process runs the round.
                torch.manual_seed(((self.seed * 1_000_003 + batch_idx) * 8 + phase_idx) * 65_536
                                  + self.rank * rounds + r)
                # gain / rounds: the accumulated gradient is the mean over the global batch however it is split
                # into rounds and processes (the official loop sums round means, so its gradient scale changed
                # with batch_gpu; Adam hides most, not all, of that through eps).
                with self.family.training_precision(self.precision, self.device.type, phase.name):
                    self.loss.accumulate_gradients(phase.name, real, rc, z, c, gain=phase.interval / rounds,
                                                   cur_nimg=cur_nimg)
            for p in phase.params:
                p.requires_grad_(False)
            if not reduce_gradients(phase.params, self.coll):
                raise TrainingDiverged(f"non-finite gradient in phase {phase.name} at {where}; stopped without "
                                       f"writing a checkpoint, the last complete one is kept")
            phase.opt.step()


def reduce_gradients(params: list[torch.nn.Parameter], coll: Collectives) -> bool:
    """Average gradients over processes (one flat all-reduce) and say whether all of them are finite."""
    if coll.dist:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]  # same layout everywhere
        has_grad = torch.tensor([float(p.grad is not None) for p in params], device=grads[0].device)
        flat = coll.all_reduce_sum(torch.cat([g.flatten() for g in grads] + [has_grad])).to(grads[0].device)
        flat, has_grad = flat[:-len(params)] / torch.distributed.get_world_size(), flat[-len(params):]
        for p, g, has in zip(params, flat.split([g.numel() for g in grads]), has_grad.tolist()):
            # A parameter no process computed a gradient for stays at None, so Adam skips it exactly as it
            # does in a single process (a zero gradient would still advance its moments).
            p.grad = g.view_as(p) if has > 0 else None
        return bool(flat.isfinite().all())
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """G_ema <- lerp(G, G_ema, beta) for parameters; buffers are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)
