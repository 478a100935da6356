"""The StyleGAN2-ADA training loop: init, restore, then `while not done: step; log; snapshot; checkpoint`.

Method and constants follow Karras et al. 2020 (StyleGAN2-ADA) and its reference loop: phases
Gmain/Greg/Dmain/Dreg with lazy regularization (G every 4, D every 16 minibatches), G_ema with a
half-life in kimg, ADA adjusting p every `ada_interval` minibatches from the mean sign of D(real).
Distribution is Accelerate's process group; gradients are all-reduced per phase by hand (no DDP
wrapper, whose unused-parameter checks clash with the phase scheme).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

import ops
from models import Discriminator, Generator, save_snapshot
from models.loss import StyleGAN2Loss
from models.training_rules import ada_adjustment, ema_beta
from stages.common.dataset import ImageFolderDataset
from stages.common.tracking import git_commit
from stages.train import checkpoint as ckpt
from stages.train.data import InfiniteBatchSampler, make_loader
from stages.train.grids import grid_indices, grid_layout, save_grid
from stages.train.options import TrainConfig, config_hash, diff_keys, format_table, identity_options, resolve_options
from stages.train.setup import (
    Phase,
    Progress,
    RunLog,
    TrainingDiverged,
    build_augment_pipe,
    build_phases,
    clear_run_dir,
    cpu_rss_gb,
    ema_copy,
    format_time,
    locate_run,
    now,
    stop_on_signals,
    transfer_weights,
    write_json_atomic,
)
from stages.train.snapshot_metrics import SnapshotMetrics, truncate_metric_jsonl
from stages.train.stats import StatsCollector, Tee, truncate_stats_jsonl, write_curves_csv
from stages.train.tracking import flatten, make_tracker


def train(cfg: TrainConfig) -> Path | None:
    """Train per `cfg`; returns the run folder (None for a dry run). Raises TrainingDiverged on NaN/inf."""
    # --- init -----------------------------------------------------------------------------------
    start = now()
    acc = Accelerator(cpu=cfg.cpu or not torch.cuda.is_available())
    rank, world, device, main = acc.process_index, acc.num_processes, acc.device, acc.is_main_process
    dist = world > 1 and torch.distributed.is_initialized()
    dataset = ImageFolderDataset(cfg.data, max_size=cfg.subset, use_labels=cfg.cond, xflip=cfg.mirror,
                                 random_seed=cfg.seed)
    transfer = cfg.resume not in (None, "latest", "auto") and not Path(cfg.resume).is_dir()
    opts = resolve_options(cfg, dataset, world, device.type, transfer=transfer)
    run_dir, restore_from, transfer = locate_run(cfg, dataset.name, opts)
    if restore_from is not None:
        # A run that began from pretrained weights keeps its transfer-learning settings when resumed.
        first = json.loads((restore_from / ckpt.META).read_text())
        if first.get("identity", {}).get("transfer"):
            opts = dict(resolve_options(cfg, dataset, world, device.type, transfer=True),
                        resume_pkl=first.get("resume_pkl"))
    if cfg.dry_run:
        if main:
            print(f"run folder: {run_dir}\nresume from: {restore_from or opts['resume_pkl'] or '-'}\n")
            print(format_table(cfg, opts))
        return None
    ident = dict(identity_options(opts), dataset_hash=dataset.content_hash(), transfer=opts["resume_pkl"] is not None)
    if restore_from is not None and cfg.resume == "auto":
        saved = json.loads((restore_from / ckpt.META).read_text())
        if saved.get("config_hash") != config_hash(ident):
            # `auto` is for pipelines (DVC keeps the run folder between runs): a crash resumes, but a
            # changed option means a new experiment, so the old run folder is cleared, not continued.
            if main:
                print(f"options changed since {restore_from.name} ("
                      + "; ".join(diff_keys(saved.get("identity", {}), ident)) + "); starting a new run")
                clear_run_dir(run_dir)
            acc.wait_for_everyone()
            restore_from = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "training_options.json", dict(opts, run_dir=str(run_dir)))
    acc.wait_for_everyone()
    log = RunLog(run_dir / "log.txt" if main else None)
    log(f"run folder: {run_dir}  ({world} process{'es' if world > 1 else ''} on {device.type})")

    seed = opts["random_seed"] * world + rank
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = opts["cudnn_benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = opts["allow_tf32"]
    G = Generator(**opts["G_kwargs"]).train().requires_grad_(False).to(device)
    D = Discriminator(**opts["D_kwargs"]).train().requires_grad_(False).to(device)
    G_ema = ema_copy(G)
    augment_pipe = build_augment_pipe(opts, device)
    reduce_sum = _all_reduce_sum if dist else (lambda t: t)
    stats = StatsCollector(reduce=reduce_sum, gather_names=_union_names if dist else None,
                           jsonl=run_dir / "stats.jsonl" if main else None)
    ada_stats = StatsCollector("Loss/signs/real", reduce=reduce_sum) if opts["ada_target"] is not None else None
    g_mapping = G.mapping if not opts["freeze_mapping"] else _FrozenMapping(G.mapping)
    loss = StyleGAN2Loss(g_mapping, G.synthesis, D, augment_pipe=augment_pipe, stats=Tee(stats, *[ada_stats] * bool(
        ada_stats)), device=device, **opts["loss_kwargs"])
    phases = build_phases(G, D, opts)
    batch, batch_gpu = opts["batch_size"], opts["batch_gpu"]
    nets = {"G": G, "D": D, "G_ema": G_ema}

    # --- restore --------------------------------------------------------------------------------
    prog = Progress()
    if restore_from is not None:
        if cfg.resume in ("latest", "auto"):
            restore_from, state, meta, skipped = ckpt.load_newest_intact(run_dir, restore_from)
            for reason in skipped:
                log(f"warning: {reason}; trying the previous checkpoint")
        else:  # a checkpoint named by the user: no silent substitute
            state, meta = ckpt.load_checkpoint(restore_from)
        log(f"resuming from checkpoint {restore_from}")
        if meta["config_hash"] != config_hash(ident):
            raise ckpt.CheckpointError(f"{restore_from} was written with different options: "
                                       + "; ".join(diff_keys(meta["identity"], ident)))
        for name, module in nets.items():
            ckpt.load_module_state(module, state[name], f"{restore_from} [{name}]")
        if augment_pipe is not None:
            ckpt.load_module_state(augment_pipe, state["augment_pipe"], f"{restore_from} [augment_pipe]")
        for ph in phases[::2]:
            ph.opt.load_state_dict(state["optimizers"][ph.name[0]])
        prog = Progress(**state["progress"])
        loss.pl_mean.copy_(ckpt.share_mean(state["pl_mean"], rank, world))
        stats.load_state_dict(ckpt.share_sums(state["stats"], rank, world), device)
        if ada_stats is not None:
            ada_stats.load_state_dict(ckpt.share_sums(state["ada_stats"], rank, world), device)
        rngs = state["rng"]
        if len(rngs) == world:
            ckpt.set_rng_state(rngs[rank])
        else:
            log(f"note: checkpoint was written by {len(rngs)} processes, this run has {world}: RNG states "
                f"reseeded and the path-length mean averaged, so the run continues close to, not exactly on, "
                f"its earlier trajectory")
        if main:
            set_aside = ckpt.set_aside_newer(run_dir, restore_from)
            if set_aside is not None:
                log(f"note: checkpoints newer than {restore_from.name} moved to {set_aside} (not deleted)")
            dropped = truncate_stats_jsonl(run_dir / "stats.jsonl", prog.cur_tick)
            if dropped:
                log(f"note: {dropped} stats.jsonl record(s) written after {restore_from.name} removed")
            dropped = truncate_metric_jsonl(run_dir, float(meta.get("saved_at", float("inf"))))
            if dropped:
                log(f"note: {dropped} metric-*.jsonl line(s) written after {restore_from.name} removed")
    elif transfer:
        log(f"starting from network weights {cfg.resume} (transfer learning)")
        transfer_weights(cfg.resume, nets)
    if dist:
        # Each process built its networks from its own seed; the run's weights are rank 0's (what DDP
        # would broadcast at construction). Restored and transferred weights are identical already.
        for module in [*nets.values(), augment_pipe]:
            for t in [*module.parameters(), *module.buffers()] if module is not None else []:
                torch.distributed.broadcast(t.data, src=0)
    sampler = InfiniteBatchSampler(len(dataset), batch, opts["random_seed"], rank, world, start=prog.batch_idx * batch)
    batches = iter(make_loader(dataset, sampler, cfg.workers, opts["random_seed"]))

    grid = grid_layout(dataset.resolution, *opts["grid_size"])
    grid_idx = grid_indices(dataset, *grid, seed=0)
    gen = torch.Generator().manual_seed(opts["random_seed"])  # fixed grid latents; never the global RNG
    grid_z = torch.randn([len(grid_idx), G.z_dim], generator=gen).to(device).split(batch_gpu)
    grid_c = torch.from_numpy(np.stack([dataset.get_label(i) for i in grid_idx])).to(device).split(batch_gpu)

    def save_fakes(path: Path) -> None:
        with torch.no_grad():
            imgs = torch.cat([G_ema(z, c, noise_mode="const").cpu() for z, c in zip(grid_z, grid_c)])
        save_grid(imgs, path, (-1, 1), grid)

    snapshot_metrics = SnapshotMetrics(cfg.metrics, opts["training_set_kwargs"], run_dir, device, log,
                                       detector_dir=cfg.detector_dir)
    tracker, note = make_tracker(cfg.mlflow) if main else (make_tracker(False)[0], None)
    if note:
        log(f"note: {note}")
    tracker.start(run_dir.name, flatten(opts), tags={
        "stage": "train", "run_dir": str(run_dir), "dataset_hash": ident["dataset_hash"],
        "git_commit": git_commit(Path(__file__).parent) or "unknown", "resumed": str(restore_from is not None).lower()})
    ops_tagged = False
    status = "FAILED"
    total_nimg = int(opts["total_kimg"] * 1000)
    log(f"training for {opts['total_kimg']:g} kimg, batch {batch} ({batch_gpu} per round per process)\n")

    # --- train ----------------------------------------------------------------------------------
    if prog.cur_nimg >= total_nimg:
        # Resumed a run that already reached its length (e.g. `dvc repro` after a code change that
        # does not touch the trajectory): nothing to train, and no extra step beyond --kimg.
        log(f"already trained {prog.cur_nimg / 1e3:g} kimg of {opts['total_kimg']:g}; nothing to do")
        if main:
            write_curves_csv(run_dir / "stats.jsonl", run_dir / "curves.csv")
        tracker.end("FINISHED")
        return run_dir
    try:
        if main and prog.cur_nimg == 0:
            save_grid(np.stack([dataset[i][0] for i in grid_idx]), run_dir / "reals.png", (0, 255), grid)
            save_fakes(run_dir / "fakes_init.png")
            tracker.log_artifact(run_dir / "reals.png", "images")
            tracker.log_artifact(run_dir / "fakes_init.png", "images")
        with stop_on_signals() as stop:
            tick_start, maintenance = now(), now() - start
            while True:
                real_img, real_c = next(batches)
                step(phases, loss, real_img, real_c, dataset, prog, batch, batch_gpu, device, G.z_dim, dist,
                     seed=opts["random_seed"], rank=rank, world=world)
                _update_ema(G_ema, G, ema_beta(batch, opts["ema_kimg"], prog.cur_nimg, opts["ema_rampup"]))
                prog.cur_nimg += batch
                prog.batch_idx += 1
                if ada_stats is not None and prog.batch_idx % opts["ada_interval"] == 0:
                    p = ada_adjustment(float(augment_pipe.p), ada_stats.mean("Loss/signs/real"), opts["ada_target"],
                                       batch, opts["ada_interval"], opts["ada_kimg"])
                    augment_pipe.p.copy_(torch.as_tensor(p))
                stopping = _agree(stop.signum is not None, dist)
                done = prog.cur_nimg >= total_nimg
                tick_due = prog.cur_tick == 0 or prog.cur_nimg >= prog.tick_start_nimg + opts["kimg_per_tick"] * 1000
                if not (done or stopping or tick_due):
                    continue

                # maybe_log: one status line and one stats.jsonl record per tick.
                tick_end = now()
                elapsed = prog.elapsed_sec + tick_end - start
                info = {"Progress/tick": prog.cur_tick, "Progress/kimg": prog.cur_nimg / 1e3,
                        "Timing/total_sec": elapsed, "Timing/sec_per_tick": tick_end - tick_start,
                        "Timing/sec_per_kimg": (tick_end - tick_start) / max(prog.cur_nimg - prog.tick_start_nimg, 1)
                        * 1e3, "Timing/maintenance_sec": maintenance, "Resources/cpu_mem_gb": cpu_rss_gb(),
                        "Resources/peak_gpu_mem_gb": _peak_gpu_gb(device),
                        "Progress/augment": float(augment_pipe.p) if augment_pipe is not None else 0.0}
                log(f"tick {prog.cur_tick:<5d} kimg {prog.cur_nimg / 1e3:<8.3f} time {format_time(elapsed):<12s} "
                    f"sec/tick {info['Timing/sec_per_tick']:<7.1f} sec/kimg {info['Timing/sec_per_kimg']:<7.2f} "
                    f"maintenance {maintenance:<6.1f} cpumem {info['Resources/cpu_mem_gb']:<6.2f} "
                    f"gpumem {info['Resources/peak_gpu_mem_gb']:<6.2f} augment {info['Progress/augment']:.3f}")
                for name, value in info.items():
                    stats.report(name, value)
                tracker.log_metrics(stats.flush(), step=prog.cur_nimg // 1000)
                if not ops_tagged:  # known once every op has run (after the first step)
                    tracker.set_tags({f"ops.{k}": v for k, v in ops.implementations_in_use().items()})
                    ops_tagged = True
                if main:
                    write_curves_csv(run_dir / "stats.jsonl", run_dir / "curves.csv")

                # maybe_snapshot: images and code-free network snapshot.
                final = done or stopping
                kimg_tag = f"{prog.cur_nimg // 1000:06d}"
                if main and (final or prog.cur_tick % opts["image_snapshot_ticks"] == 0):
                    save_fakes(run_dir / f"fakes{kimg_tag}.png")
                    tracker.log_artifact(run_dir / f"fakes{kimg_tag}.png", "images")
                if final or prog.cur_tick % opts["network_snapshot_ticks"] == 0:
                    snapshot = run_dir / f"network-snapshot-{kimg_tag}.safetensors"
                    if main:
                        save_snapshot(snapshot, {**nets, "augment_pipe": augment_pipe},
                                      training_set_kwargs=opts["training_set_kwargs"],
                                      meta={"cur_nimg": prog.cur_nimg, "cur_tick": prog.cur_tick})
                        tracker.log_artifact(snapshot, "snapshots")
                    if snapshot_metrics:
                        results = snapshot_metrics(G_ema, snapshot)  # every process: features are split
                        tracker.log_metrics({f"Metrics/{k}": v for k, v in results.items()},
                                            step=prog.cur_nimg // 1000)

                # maybe_checkpoint: full state, after the tick counters moved on (resume continues here).
                ckpt_due = final or prog.cur_tick % opts["checkpoint_ticks"] == 0
                prog.cur_tick += 1
                prog.tick_start_nimg = prog.cur_nimg
                if ckpt_due:
                    state = _full_state(nets, augment_pipe, phases, prog, loss, stats, ada_stats, start, dist)
                    if main:
                        path = ckpt.save_checkpoint(run_dir, state, prog.cur_nimg,
                                                    {"config_hash": config_hash(ident), "identity": ident,
                                                     "resume_pkl": opts["resume_pkl"]},
                                                    keep=opts["keep_checkpoints"])
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
                tick_start = now()
                maintenance = tick_start - tick_end
    finally:
        if main:
            for name in ("stats.jsonl", "curves.csv", "log.txt"):
                if (run_dir / name).is_file():
                    tracker.log_artifact(run_dir / name)
        tracker.end(status)
    log("exiting")
    return run_dir


def step(phases: list[Phase], loss: StyleGAN2Loss, real_img: torch.Tensor, real_c: torch.Tensor, dataset,
         prog: Progress, batch: int, batch_gpu: int, device: torch.device, z_dim: int, dist: bool,
         seed: int = 0, rank: int = 0, world: int = 1) -> None:
    """One minibatch: every phase due at this batch_idx, each accumulating over rounds of batch_gpu."""
    local = real_img.shape[0]
    real_imgs = (real_img.to(device).to(torch.float32) / 127.5 - 1).split(batch_gpu)  # [NCHW] in [-1, 1]
    real_cs = real_c.to(device).split(batch_gpu)
    # Latents and labels of the whole global batch come from a generator seeded by (seed, step), and
    # each process takes its slice: the run is then the same function of the seed for any process
    # count, and a resumed run needs no RNG state to draw them.
    n = len(phases)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + prog.batch_idx)
    global_z = torch.randn([n, local * world, z_dim], generator=gen)
    picks = np.random.RandomState([seed, prog.batch_idx]).randint(len(dataset), size=[n, local * world])
    mine = slice(rank * local, (rank + 1) * local)
    all_z = global_z[:, mine].to(device).unbind(0)
    all_c = [torch.from_numpy(np.stack([dataset.get_label(i) for i in row[mine]])).to(device) for row in picks]
    rounds = len(real_imgs)
    for phase_idx, (phase, gen_z, gen_c) in enumerate(zip(phases, all_z, all_c)):
        if prog.batch_idx % phase.interval != 0:
            continue
        phase.opt.zero_grad(set_to_none=True)
        for p in phase.params:
            p.requires_grad_(True)
        for r, (real, rc, z, c) in enumerate(zip(real_imgs, real_cs, gen_z.split(batch_gpu), gen_c.split(batch_gpu))):
            # Reseed per (step, phase, global round): the randomness inside the phase (synthesis
            # noise, style-mixing cutoff, path-length noise, augmentation) is then the same whether
            # a round runs on this process or another, so N processes reproduce one process.
            torch.manual_seed(((seed * 1_000_003 + prog.batch_idx) * 8 + phase_idx) * 65_536 + rank * rounds + r)
            # gain / rounds: the accumulated gradient is the mean over the global batch however it is
            # split into rounds and processes (the official loop sums round means, so its gradient
            # scale changed with batch_gpu; Adam hides most, not all, of that through eps).
            loss.accumulate_gradients(phase.name, real, rc, z, c, gain=phase.interval / rounds)
        for p in phase.params:
            p.requires_grad_(False)
        if not _reduce_and_check(phase.params, dist):
            raise TrainingDiverged(
                f"non-finite gradient in phase {phase.name} at tick {prog.cur_tick} (kimg {prog.cur_nimg / 1e3:.3f},"
                f" batch {prog.batch_idx}); stopped without writing a checkpoint, the last complete one is kept")
        phase.opt.step()


def _reduce_and_check(params: list[torch.nn.Parameter], dist: bool) -> bool:
    """Average gradients over processes (one flat all-reduce) and say whether all of them are finite."""
    if dist:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]  # same layout everywhere
        has_grad = torch.tensor([float(p.grad is not None) for p in params], device=grads[0].device)
        flat = torch.cat([g.flatten() for g in grads] + [has_grad])
        torch.distributed.all_reduce(flat)
        flat, has_grad = flat[:-len(params)] / torch.distributed.get_world_size(), flat[-len(params):]
        for p, g, has in zip(params, flat.split([g.numel() for g in grads]), has_grad.tolist()):
            # A parameter no process computed a gradient for stays at None, so Adam skips it exactly as
            # it does in a single process (a zero gradient would still advance its moments).
            p.grad = g.view_as(p) if has > 0 else None
        return bool(flat.isfinite().all())
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())


@torch.no_grad()
def _update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def _full_state(nets, augment_pipe, phases, prog, loss, stats, ada_stats, start, dist) -> dict:
    """Everything a resumed run needs to continue exactly (see stages.train.checkpoint)."""
    def per_process(obj: object) -> list:
        return _gather_objects(obj) if dist else [obj]

    rngs = per_process(ckpt.rng_state())
    progress = dict(vars(prog), elapsed_sec=prog.elapsed_sec + now() - start)
    return {
        **{name: m.state_dict() for name, m in nets.items()},
        "augment_pipe": augment_pipe.state_dict() if augment_pipe is not None else {},
        "optimizers": {ph.name[0]: ph.opt.state_dict() for ph in phases[::2]},
        "progress": progress,
        # Per process, like the RNG states: each process has its own path-length mean and its own
        # partial sums of the statistics (reduced only when read).
        "pl_mean": per_process(loss.pl_mean.detach().cpu().clone()),
        "stats": per_process(stats.state_dict()),
        "ada_stats": per_process(ada_stats.state_dict() if ada_stats is not None else {}),
        "rng": rngs,
        "sampler_position": prog.batch_idx,  # in global batches; InfiniteBatchSampler restarts there
    }


class _FrozenMapping(torch.nn.Module):
    """Mapping network kept fixed: its output becomes a leaf that requires grad, so the path-length
    regularizer (a gradient w.r.t. w) still works while no gradient reaches the mapping weights."""

    def __init__(self, mapping: torch.nn.Module) -> None:
        super().__init__()
        self.mapping = mapping

    def forward(self, z: torch.Tensor, c: torch.Tensor, **kwargs) -> torch.Tensor:
        ws = self.mapping(z, c, **kwargs)
        return ws.detach().requires_grad_(torch.is_grad_enabled())


def _peak_gpu_gb(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def _agree(flag: bool, dist: bool) -> bool:
    """All processes stop at the same step even if the signal reached them at different times."""
    if not dist:
        return flag
    t = torch.tensor([float(flag)], device=_dist_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _dist_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
        else torch.device("cpu")


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    t = t.to(_dist_device())
    torch.distributed.all_reduce(t)
    return t


def _gather_objects(obj: object) -> list:
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _union_names(names: list[str]) -> list[str]:
    return sorted({n for part in _gather_objects(names) for n in part})

