"""The training loop: init, restore, then `while not done: step; maybe_log; maybe_snapshot; maybe_checkpoint`.

Method and constants follow Karras et al. 2020 (StyleGAN2-ADA) and its reference loop: phases
Gmain/Greg/Dmain/Dreg with lazy regularization (`phases`), G_ema with a half-life in kimg, ADA adjusting p
every `ada_interval` minibatches from the mean sign of D(real). Every process runs this function
(Accelerate or torchrun); files are written by the main process only.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

import ops
from models.loss import StyleGAN2Loss
from models.projected import ProjectedGANLoss
from models.training_rules import ada_adjustment, ema_beta
from stages.common.config import flatten
from stages.common.dataset import ImageFolderDataset
from stages.common.fileio import write_json_atomic
from stages.common.tracking import git_commit, make_tracker
from stages.train import checkpoint as ckpt
from stages.train.collectives import Collectives
from stages.train.config import TrainConfig
from stages.train.console import RunLog, stop_on_signals, tick_line
from stages.train.data import InfiniteBatchSampler, make_loader
from stages.train.networks import build_networks, load_pretrained, transfer_weights
from stages.train.options import TrainingOptions, config_hash, diff_keys, format_table, resolve_options
from stages.train.phases import FrozenMapping, TrainingStep, build_phases, optimizers, update_ema
from stages.train.plots import render_curves, write_quality_csv
from stages.train.run_folder import RunPlan, clear_outputs, plan_run
from stages.train.snapshot_metrics import truncate_metric_jsonl
from stages.train.snapshots import SnapshotWriter
from stages.train.state import TrainingState
from stages.train.stats import StatsCollector, Tee, cpu_rss_gb, peak_gpu_gb, truncate_stats_jsonl, write_curves_csv


def train(cfg: TrainConfig) -> Path | None:
    """Train per `cfg`; returns the run folder (None for a dry run). Raises TrainingDiverged on NaN/inf."""
    # --- init -----------------------------------------------------------------------------------------
    start = time.time()
    acc = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available())
    rank, world, device, main = acc.process_index, acc.num_processes, acc.device, acc.is_main_process
    coll = Collectives(world > 1 and torch.distributed.is_initialized())
    dataset = ImageFolderDataset(cfg.data, max_size=cfg.subset, use_labels=cfg.cond, xflip=cfg.mirror,
                                 random_seed=cfg.seed)
    plan, opts, ident = decide_run(cfg, dataset, world, device.type, main, acc)
    if cfg.dry_run:
        if main:
            print(f"run folder: {plan.run_dir}\nresume from: {plan.restore_from or plan.transfer_source or '-'}\n")
            print(format_table(opts))
        return None
    pretrained = load_pretrained(plan.transfer_source) if plan.transfer_source and not plan.restore_from else None
    run_dir = plan.run_dir
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "training_options.json", dict(opts.as_json(), run_dir=str(run_dir)))
    acc.wait_for_everyone()
    log = RunLog(run_dir / "log.txt" if main else None)
    log(f"run folder: {run_dir}  ({world} process{'es' if world > 1 else ''} on {device.type})")
    if plan.note:
        log(f"note: {plan.note}")

    np.random.seed(opts.random_seed * world + rank)
    torch.manual_seed(opts.random_seed * world + rank)
    torch.backends.cudnn.benchmark = opts.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = opts.allow_tf32
    nets = build_networks(opts, device)
    G, D, G_ema, augment_pipe = nets["G"], nets["D"], nets["G_ema"], nets["augment_pipe"]
    stats = StatsCollector(reduce=coll.all_reduce_sum, gather_names=coll.union if coll.dist else None,
                           jsonl=run_dir / "stats.jsonl" if main else None)
    ada_stats = StatsCollector("Loss/signs/real", reduce=coll.all_reduce_sum) if opts.ada_target is not None else None
    loss = make_loss(opts, G, D, augment_pipe, Tee(stats, ada_stats), device)
    phases = build_phases(G, D, opts)
    state = TrainingState({"G": G, "D": D, "G_ema": G_ema}, augment_pipe, optimizers(phases), loss, stats, ada_stats)

    # --- restore --------------------------------------------------------------------------------------
    if plan.restore_from is not None:
        restore(state, plan, cfg, ident, run_dir, log, rank, world, device, main)
    elif pretrained is not None:
        log(f"starting from network weights {plan.transfer_source} (transfer learning)")
        transfer_weights(plan.transfer_source, pretrained, state.nets)
    coll.broadcast_modules(G, D, G_ema, augment_pipe)  # restored and transferred weights are equal already
    prog = state.progress
    sampler = InfiniteBatchSampler(len(dataset), opts.batch_size, opts.random_seed, rank, world,
                                   start=prog.batch_idx * opts.batch_size)
    batches = iter(make_loader(dataset, sampler, opts.data_loader_kwargs, opts.random_seed))
    tracker, note = make_tracker(cfg.mlflow) if main else make_tracker(False)
    if note:
        log(f"note: {note}")
    # Params: the options as resolved (the gamma actually used, the batch split...) plus the preset's name.
    tracker.start(f"train {run_dir.name}", {"cfg": cfg.cfg, **flatten(opts.as_json())}, tags={
        "stage": "train", "run_dir": str(run_dir), "dataset_hash": ident["dataset_hash"],
        "git_commit": git_commit(Path(__file__).parent) or "unknown",
        "resumed": str(plan.restore_from is not None).lower()})
    snapshots = SnapshotWriter(opts, dataset, G_ema, run_dir, device, main, tracker, log)
    if plan.restore_from is not None:
        snapshots.resumed_at(prog.cur_nimg)
    step = TrainingStep(phases, loss, dataset, opts, G.z_dim, device, coll, rank, world)
    log(f"training for {opts.total_kimg:g} kimg, batch {opts.batch_size} ({opts.batch_gpu} per round per process)\n")
    if prog.cur_nimg >= opts.total_nimg:
        # Resumed a run that already reached its length (e.g. `dvc repro` after a code change that does not
        # touch the trajectory): nothing to train, and no extra step beyond --kimg.
        log(f"already trained {prog.cur_nimg / 1e3:g} kimg of {opts.total_kimg:g}; nothing to do")
        if main:
            write_run_plots(run_dir)
        tracker.end("FINISHED")
        return run_dir

    # --- train ----------------------------------------------------------------------------------------
    status, ops_tagged = "FAILED", False
    try:
        if prog.cur_nimg == 0:
            snapshots.start_images()
        with stop_on_signals() as stop:
            tick_start, maintenance = time.time(), time.time() - start
            while True:
                real_img, real_c = next(batches)
                step(real_img, real_c, prog.batch_idx, prog.cur_nimg,
                     f"tick {prog.cur_tick} (kimg {prog.cur_nimg / 1e3:.3f}, batch {prog.batch_idx})")
                update_ema(G_ema, G, ema_beta(opts.batch_size, opts.ema_kimg, prog.cur_nimg, opts.ema_rampup))
                prog.cur_nimg += opts.batch_size
                prog.batch_idx += 1
                if ada_stats is not None and prog.batch_idx % opts.ada_interval == 0:
                    p = ada_adjustment(float(augment_pipe.p), ada_stats.mean("Loss/signs/real"), opts.ada_target,
                                       opts.batch_size, opts.ada_interval, opts.ada_kimg)
                    augment_pipe.p.copy_(torch.as_tensor(p))
                stopping = coll.any(stop.signum is not None)
                done = prog.cur_nimg >= opts.total_nimg
                tick_due = prog.cur_tick == 0 or prog.cur_nimg >= prog.tick_start_nimg + opts.kimg_per_tick * 1000
                if not (done or stopping or tick_due):
                    continue

                # maybe_log: one status line and one stats.jsonl record per tick.
                tick_end = time.time()
                info = {"Progress/tick": prog.cur_tick, "Progress/kimg": prog.cur_nimg / 1e3,
                        "Timing/total_sec": prog.elapsed_sec + tick_end - start,
                        "Timing/sec_per_tick": tick_end - tick_start,
                        "Timing/sec_per_kimg": (tick_end - tick_start) / max(prog.cur_nimg - prog.tick_start_nimg, 1)
                        * 1e3, "Timing/maintenance_sec": maintenance, "Resources/cpu_mem_gb": cpu_rss_gb(),
                        "Resources/peak_gpu_mem_gb": peak_gpu_gb(device),
                        "Progress/augment": float(augment_pipe.p) if augment_pipe is not None else 0.0}
                log(tick_line(prog.cur_tick, prog.cur_nimg, opts.total_nimg, info))
                for name, value in info.items():
                    stats.report(name, value)
                tracker.log_metrics(stats.flush(), step=prog.cur_nimg // 1000)
                if not ops_tagged:  # known once every op has run (after the first step)
                    tracker.set_tags({f"ops.{k}": v for k, v in ops.implementations_in_use().items()})
                    ops_tagged = True
                if main:
                    write_curves_csv(run_dir / "stats.jsonl", run_dir / "curves.csv")

                # maybe_snapshot: fakes grid, code-free network snapshot and its metrics.
                final = done or stopping
                if final or prog.cur_tick % opts.image_snapshot_ticks == 0:
                    snapshots.fakes(prog.cur_nimg)
                if final or prog.cur_tick % opts.network_snapshot_ticks == 0:
                    snapshots.network({**state.nets, "augment_pipe": augment_pipe}, prog.cur_nimg, prog.cur_tick)

                # maybe_checkpoint: full state, after the tick counters moved on (resume continues here).
                checkpoint_due = final or prog.cur_tick % opts.checkpoint_ticks == 0
                prog.cur_tick += 1
                prog.tick_start_nimg = prog.cur_nimg
                if checkpoint_due:
                    contents = state.capture(coll, time.time() - start)
                    if main:
                        path = ckpt.save_checkpoint(run_dir, contents, prog.cur_nimg,
                                                    {"config_hash": config_hash(ident), "identity": ident,
                                                     "resume_pkl": opts.resume_pkl}, keep=opts.keep_checkpoints)
                        log(f"checkpoint {path.name}")
                acc.wait_for_everyone()
                if stopping:
                    log(f"\nstopped by signal {stop.signum} at kimg {prog.cur_nimg / 1e3:.3f}; "
                        f"continue with --resume latest")
                    status = "KILLED"
                    break
                if done:
                    status = "FINISHED"
                    break
                tick_start = time.time()
                maintenance = tick_start - tick_end
    finally:
        if main:
            write_run_plots(run_dir)
            tracker.log_artifacts([run_dir / n for n in ("stats.jsonl", "curves.csv", "quality.csv", "curves.png",
                                                         "log.txt")])
        tracker.end(status)
    log("exiting")
    return run_dir


def make_loss(opts: TrainingOptions, G: torch.nn.Module, D: torch.nn.Module, augment_pipe: torch.nn.Module | None,
              stats: Tee, device: torch.device) -> StyleGAN2Loss | ProjectedGANLoss:
    """StyleGAN2's objective (StyleGAN3 too), or Projected GAN's hinge loss; both run the same phases."""
    mapping = G.mapping if not opts.freeze_mapping else FrozenMapping(G.mapping)
    if opts.projected:
        return ProjectedGANLoss(mapping, G.synthesis, D, stats=stats, device=device,
                                synthesis_takes_c=opts.G_class == "FastGANGenerator")
    return StyleGAN2Loss(mapping, G.synthesis, D, augment_pipe=augment_pipe, stats=stats, device=device,
                         update_emas_explicitly=opts.G_class == "StyleGAN3Generator", **opts.loss_kwargs)


def write_run_plots(run_dir: Path) -> None:
    """curves.csv, quality.csv and curves.png from what the run logged; a plotting problem is warned about,
    never allowed to fail a run whose checkpoints are written."""
    write_curves_csv(run_dir / "stats.jsonl", run_dir / "curves.csv")
    write_quality_csv(run_dir)
    try:
        render_curves(run_dir)
    except Exception as exc:  # matplotlib missing or a backend problem: the CSVs are there
        warnings.warn(f"curves.png not drawn ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)


def decide_run(cfg: TrainConfig, dataset: ImageFolderDataset, world: int, device_type: str, main: bool,
               acc: Accelerator) -> tuple[RunPlan, TrainingOptions, dict]:
    """The run folder, the resolved options and the run identity. With `resume: auto`, a checkpoint written
    with other options means a new experiment (DVC keeps the run folder between runs): its outputs are
    cleared and the run starts over in the same folder; a crash with unchanged options continues."""
    plan = plan_run(cfg, dataset.name, world)
    opts = resolve_options(cfg, dataset, world, device_type, transfer_source=plan.transfer_source)
    ident = opts.identity(dataset.content_hash())
    if plan.restore_from is not None and cfg.resume == "auto":
        saved = ckpt.read_meta(plan.restore_from)
        if saved.get("config_hash") != config_hash(ident):
            if main and not cfg.dry_run:
                changes = "; ".join(diff_keys(saved.get("identity", {}), ident))
                print(f"options changed since {plan.restore_from.name} ({changes}); starting a new run")
                clear_outputs(plan.run_dir)
            acc.wait_for_everyone()
            plan = RunPlan(plan.run_dir, None, None)
            opts = resolve_options(cfg, dataset, world, device_type, transfer_source=None)
            ident = opts.identity(ident["dataset_hash"])
    return plan, opts, ident


def restore(state: TrainingState, plan: RunPlan, cfg: TrainConfig, ident: dict, run_dir: Path, log: RunLog,
            rank: int, world: int, device: torch.device, main: bool) -> None:
    """Continue from `plan.restore_from`. With latest/auto a checkpoint that fails to load is named and the
    previous intact one is used; a checkpoint the user named has no silent substitute."""
    notes: list[str] = []

    def apply(path: Path, contents: dict, meta: dict) -> None:
        if meta.get("config_hash") != config_hash(ident):
            raise ckpt.OptionsMismatchError(f"{path} was written with different options: "
                                            + "; ".join(diff_keys(meta.get("identity", {}), ident)))
        notes[:] = state.restore(contents, str(path), rank, world, device)

    if cfg.resume in ("latest", "auto"):
        path, meta, skipped = ckpt.load_newest_intact(run_dir, plan.restore_from, apply)
        for reason in skipped:
            log(f"warning: {reason}; used an older checkpoint")
    else:
        path = plan.restore_from
        contents, meta = ckpt.load_checkpoint(path)
        apply(path, contents, meta)
    log(f"resuming from checkpoint {path}")
    for note in notes:
        log(f"note: {note}")
    if main:
        set_aside = ckpt.set_aside_newer(run_dir, path)
        if set_aside is not None:
            log(f"note: checkpoints newer than {path.name} moved to {set_aside} (not deleted)")
        if dropped := truncate_stats_jsonl(run_dir / "stats.jsonl", state.progress.cur_tick):
            log(f"note: {dropped} stats.jsonl record(s) written after {path.name} removed")
        if dropped := truncate_metric_jsonl(run_dir, float(meta.get("saved_at", float("inf")))):
            log(f"note: {dropped} metric-*.jsonl line(s) written after {path.name} removed")
