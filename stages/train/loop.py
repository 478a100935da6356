"""The training loop: open the run, build it, restore it, then `while not done: step; log; snapshot; checkpoint`.

Method and constants follow Karras et al. 2020 (StyleGAN2-ADA) and its reference loop: phases
Gmain/Greg/Dmain/Dreg with lazy regularization (`phases`), G_ema with a half-life in kimg, ADA adjusting p
every `ada_interval` minibatches from the mean sign of D(real). The model family (`models.families`) supplies
the networks' options and the loss. Every process runs this function (Accelerate or torchrun); files are
written by the main process only. One tick, read in order: `train` -> `TrainingStep` (phases.py) ->
`log_tick` -> `write_snapshots` (artifacts.py) -> `checkpoint_when_due` (state.py, checkpoint.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

import ops
from models.training_rules import ada_adjustment, ema_beta
from stages.common.config import flatten
from stages.common.dataset import ImageFolderDataset
from stages.train.artifacts import RunArtifacts
from stages.train.config import TrainConfig
from stages.train.context import Collectives, RunContext, stop_on_signals, tick_line
from stages.train.data import InfiniteBatchSampler, make_loader
from stages.train.networks import build_loss, build_networks, load_pretrained, transfer_weights
from stages.train.options import TrainingOptions, format_table
from stages.train.phases import TrainingStep, build_phases, optimizers, update_ema
from stages.train.run_folder import decide_run
from stages.train.state import TrainingState, checkpoint_when_due, restore_run
from stages.train.stats import StatsCollector, Tee, cpu_rss_gb, peak_gpu_gb, write_curves_csv


@dataclass
class Tick:
    """Timing of the tick in progress (for the status line and stats.jsonl)."""

    start: float          # when the session started (for total time)
    tick_start: float     # when this tick started
    maintenance: float    # seconds spent between the previous tick's end and this one's start
    ops_tagged: bool = False


def train(cfg: TrainConfig) -> Path | None:
    """Train per `cfg`; returns the run folder (None for a dry run). Raises TrainingDiverged on NaN/inf."""
    start = time.time()
    acc = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available())
    ctx = RunContext(acc, Collectives(acc.num_processes > 1 and torch.distributed.is_initialized()))
    dataset = ImageFolderDataset(cfg.data, max_size=cfg.subset, use_labels=cfg.cond, xflip=cfg.mirror,
                                 random_seed=cfg.seed)
    plan, opts, ident = decide_run(ctx, cfg, dataset)
    if cfg.dry_run:
        if ctx.main:
            print(f"run folder: {plan.run_dir}\nresume from: {plan.restore_from or plan.transfer_source or '-'}\n")
            print(format_table(opts))
        return None
    pretrained = load_pretrained(plan.transfer_source) if plan.transfer_source and not plan.restore_from else None
    ctx.open(plan.run_dir, opts.as_json(), plan.note)

    # --- build and restore -------------------------------------------------------------------------------
    np.random.seed(opts.random_seed * ctx.world + ctx.rank)
    torch.manual_seed(opts.random_seed * ctx.world + ctx.rank)
    torch.backends.cudnn.benchmark = opts.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = opts.allow_tf32
    nets = build_networks(opts, ctx.device)
    coll = ctx.coll
    stats = StatsCollector(reduce=coll.all_reduce_sum, gather_names=coll.union if coll.dist else None,
                           jsonl=plan.run_dir / "stats.jsonl" if ctx.main else None)
    ada_stats = StatsCollector("Loss/signs/real", reduce=coll.all_reduce_sum) if opts.ada_target is not None else None
    loss = build_loss(opts, nets, Tee(stats, ada_stats), ctx.device)
    phases = build_phases(nets["G"], nets["D"], opts)
    state = TrainingState({k: nets[k] for k in ("G", "D", "G_ema")}, nets["augment_pipe"], optimizers(phases), loss,
                          stats, ada_stats)
    if plan.restore_from is not None:
        restore_run(ctx, state, plan.restore_from, cfg.resume, ident)
    elif pretrained is not None:
        ctx.log(f"starting from network weights {plan.transfer_source} (transfer learning)")
        transfer_weights(plan.transfer_source, pretrained, state.nets)
    coll.broadcast_modules(*state.nets.values(), state.augment_pipe)  # restored/transferred weights are equal
    prog = state.progress
    sampler = InfiniteBatchSampler(len(dataset), opts.batch_size, opts.random_seed, ctx.rank, ctx.world,
                                   start=prog.batch_idx * opts.batch_size)
    batches = iter(make_loader(dataset, sampler, opts.data_loader_kwargs, opts.random_seed))
    # Params: the options as resolved (the gamma actually used, the batch split...) plus the preset's name.
    ctx.start_tracking(cfg.mlflow, {"cfg": cfg.cfg, **flatten(opts.as_json())}, tags={
        "dataset_hash": ident["dataset_hash"], "family": opts.family.name,
        "resumed": str(plan.restore_from is not None).lower()})
    artifacts = RunArtifacts(ctx, opts, dataset, nets["G_ema"])
    if plan.restore_from is not None:
        artifacts.resumed_at(prog.cur_nimg)
    step = TrainingStep(ctx, phases, loss, dataset, opts, nets["G"].z_dim)
    ctx.log(f"training for {opts.total_kimg:g} kimg, batch {opts.batch_size} ({opts.batch_gpu} per round per "
            "process)\n")
    if prog.cur_nimg >= opts.total_nimg:
        # Resumed a run that already reached its length (e.g. `dvc repro` after a code change that does not
        # touch the trajectory): nothing to train, and no extra step beyond --kimg.
        ctx.log(f"already trained {prog.cur_nimg / 1e3:g} kimg of {opts.total_kimg:g}; nothing to do")
        ctx.close("FINISHED")
        return plan.run_dir

    # --- train --------------------------------------------------------------------------------------------
    status = "FAILED"
    try:
        if prog.cur_nimg == 0:
            artifacts.start_images()
        with stop_on_signals() as stop:
            tick = Tick(start, time.time(), time.time() - start)
            while True:
                real_img, real_c = next(batches)
                step(real_img, real_c, prog.batch_idx, prog.cur_nimg,
                     f"tick {prog.cur_tick} (kimg {prog.cur_nimg / 1e3:.3f}, batch {prog.batch_idx})")
                update_ema(nets["G_ema"], nets["G"],
                           ema_beta(opts.batch_size, opts.ema_kimg, prog.cur_nimg, opts.ema_rampup))
                prog.cur_nimg += opts.batch_size
                prog.batch_idx += 1
                maybe_adjust_augment(state, opts)
                stopping = coll.any(stop.signum is not None)
                done = prog.cur_nimg >= opts.total_nimg
                if not (done or stopping or prog.cur_tick == 0
                        or prog.cur_nimg >= prog.tick_start_nimg + opts.kimg_per_tick * 1000):
                    continue
                tick_end = log_tick(ctx, state, opts, tick)
                final = done or stopping
                write_snapshots(state, opts, artifacts, final)
                checkpoint_when_due(ctx, state, opts, ident, time.time() - start, final)
                if stopping:
                    ctx.log(f"\nstopped by signal {stop.signum} at kimg {prog.cur_nimg / 1e3:.3f}; "
                            f"continue with --resume latest")
                    status = "KILLED"
                    break
                if done:
                    status = "FINISHED"
                    break
                tick.tick_start = time.time()
                tick.maintenance = tick.tick_start - tick_end
    finally:
        ctx.close(status)
    ctx.log("exiting")
    return plan.run_dir


def maybe_adjust_augment(state: TrainingState, opts: TrainingOptions) -> None:
    """ADA: every `ada_interval` minibatches move p toward the r_t target (StyleGAN2-ADA Sec. 3)."""
    if state.ada_stats is None or state.progress.batch_idx % opts.ada_interval != 0:
        return
    pipe = state.augment_pipe
    p = ada_adjustment(float(pipe.p), state.ada_stats.mean("Loss/signs/real"), opts.ada_target, opts.batch_size,
                       opts.ada_interval, opts.ada_kimg)
    pipe.p.copy_(torch.as_tensor(p))


def log_tick(ctx: RunContext, state: TrainingState, opts: TrainingOptions, tick: Tick) -> float:
    """One status line and one stats.jsonl record per tick; returns when the tick ended."""
    prog, pipe = state.progress, state.augment_pipe
    tick_end = time.time()
    info = {"Progress/tick": prog.cur_tick, "Progress/kimg": prog.cur_nimg / 1e3,
            "Timing/total_sec": prog.elapsed_sec + tick_end - tick.start,
            "Timing/sec_per_tick": tick_end - tick.tick_start,
            "Timing/sec_per_kimg": (tick_end - tick.tick_start) / max(prog.cur_nimg - prog.tick_start_nimg, 1) * 1e3,
            "Timing/maintenance_sec": tick.maintenance, "Resources/cpu_mem_gb": cpu_rss_gb(),
            "Resources/peak_gpu_mem_gb": peak_gpu_gb(ctx.device),
            "Progress/augment": float(pipe.p) if pipe is not None else 0.0}
    ctx.log(tick_line(prog.cur_tick, prog.cur_nimg, opts.total_nimg, info))
    for name, value in info.items():
        state.stats.report(name, value)
    ctx.tracker.log_metrics(state.stats.flush(), step=prog.cur_nimg // 1000)
    if not tick.ops_tagged:  # known once every op has run (after the first step of this session)
        ctx.tracker.set_tags({f"ops.{k}": v for k, v in ops.implementations_in_use().items()})
        tick.ops_tagged = True
    if ctx.main:
        write_curves_csv(ctx.run_dir / "stats.jsonl", ctx.run_dir / "curves.csv")
    return tick_end


def write_snapshots(state: TrainingState, opts: TrainingOptions, artifacts: RunArtifacts, final: bool) -> None:
    """The fakes grid and the code-free network snapshot (with its metrics) when due, and always at the end."""
    prog = state.progress
    if final or prog.cur_tick % opts.image_snapshot_ticks == 0:
        artifacts.fakes(prog.cur_nimg)
    if final or prog.cur_tick % opts.network_snapshot_ticks == 0:
        artifacts.network({**state.nets, "augment_pipe": state.augment_pipe}, prog.cur_nimg, prog.cur_tick)
