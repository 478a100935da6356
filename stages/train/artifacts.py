"""What a run leaves for people to look at: the reals grid, fakes grids of fixed latents, code-free network
snapshots (`network-snapshot-<KIMG>.safetensors`, official names, `<KIMG>` per `TrainingOptions.kimg_tag`), and
the metrics measured on each snapshot. (A *checkpoint*, the full state a run continues from, is
`checkpoint.py`'s; a *snapshot* is only ever the network file people use.)

Grids follow the official layout (rows grouped by label for conditional data). Snapshot metrics go through the
shared metric engine (`stages.metrics`): as in the official loop every process takes part (features are split
and gathered), the results go to `<run_dir>/metric-<name>.jsonl` in the official line format, and a metric whose
detector file is missing is named once and dropped for the rest of the run instead of stopping training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.serialization.snapshot import save_snapshot
from stages.common.fileio import filter_jsonl
from stages.common.images import nhwc, save_png, tile, to_uint8
from stages.train.context import RunContext
from stages.train.options import TrainingOptions
from stages.train.stats import write_quality_csv


def grid_layout(resolution: int, grid_w: int = 0, grid_h: int = 0) -> tuple[int, int]:
    """Official default: fill a 7680x4320 canvas, 7..32 columns and 4..32 rows."""
    gw = grid_w or int(np.clip(7680 // resolution, 7, 32))
    gh = grid_h or int(np.clip(4320 // resolution, 4, 32))
    return gw, gh


def grid_indices(dataset, gw: int, gh: int, seed: int = 0) -> list[int]:
    """Dataset indices for the grid: a random subset, or for labelled data one label per row, cycling."""
    rnd = np.random.RandomState(seed)
    n = len(dataset)
    if not dataset.has_labels:
        order = list(range(n))
        rnd.shuffle(order)
        return [order[i % n] for i in range(gw * gh)]
    groups: dict[tuple[float, ...], list[int]] = {}
    for idx in range(n):
        groups.setdefault(tuple(dataset.get_label(idx).flat[::-1]), []).append(idx)
    labels = sorted(groups)
    for key in labels:
        rnd.shuffle(groups[key])
    out: list[int] = []
    for y in range(gh):
        key = labels[y % len(labels)]
        members = groups[key]
        out += [members[x % len(members)] for x in range(gw)]
        groups[key] = members[gw % len(members):] + members[:gw % len(members)]  # next row of this label
    return out


def save_grid(images: np.ndarray | torch.Tensor, path: str | Path, drange: tuple[float, float],
              grid: tuple[int, int]) -> None:
    """Tile `[N, C, H, W]` images (N = columns * rows, row-major) into one PNG, mapping `drange` to 0..255."""
    gw, gh = grid
    save_png(tile(nhwc(to_uint8(torch.as_tensor(images), drange)), gh, gw), path)


class SnapshotMetrics:
    """Metric names are validated by TrainConfig, so a typo fails at start-up, not hours later."""

    def __init__(self, names: list[str] | tuple[str, ...], dataset_kwargs: dict[str, Any], run_dir: Path,
                 device: torch.device, log: Callable[[str], None], detector_dir: str | None = None,
                 batch_size: int = 64) -> None:
        self.names = list(names)
        self.dataset_kwargs = dict(dataset_kwargs)
        self.run_dir, self.device, self.log = run_dir, device, log
        self.detector_dir, self.batch_size = detector_dir, batch_size

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(self, G_ema: torch.nn.Module, snapshot: Path) -> dict[str, float]:
        """Compute the metrics for `G_ema` (all processes call this); returns {result name: value}."""
        from stages.metrics.distributed import from_accelerate, is_main
        from stages.metrics.runner import MetricOptions, compute_metrics, flat_results, report_metric

        group = from_accelerate()
        opts = MetricOptions(detector_dir=self.detector_dir, batch_size=self.batch_size, device=self.device,
                             group=group, progress=False)

        def on_result(record: dict[str, Any]) -> None:
            report_metric(record, run_dir=self.run_dir, snapshot_pkl=snapshot)
            values = " ".join(f"{k} {v:.4g}" for k, v in record["results"].items())
            self.log(f"metric {record['metric']}: {values} ({record['total_time_str']})")

        was_training = G_ema.training
        try:
            out = compute_metrics(G_ema, self.names, self.dataset_kwargs, opts, skip_missing_detectors=True,
                                  on_result=on_result)
        finally:
            G_ema.train(was_training)
        for name, reason in out["skipped"].items():
            if is_main(group):
                self.log(f"metric {name}: skipped for the rest of this run ({reason})")
            self.names.remove(name)
        return flat_results(out["records"])


def truncate_metric_jsonl(run_dir: Path, after: float) -> int:
    """Drop `metric-*.jsonl` lines stamped after `after`: the checkpoint a run resumes from was saved then,
    and the snapshots those lines measured are about to be trained and measured again."""
    return sum(filter_jsonl(path, lambda r: float(r.get("timestamp", 0.0)) <= after)
               for path in sorted(run_dir.glob("metric-*.jsonl")))


class RunArtifacts:
    """Grids and snapshots of one run. Files are written by the main process; metrics involve every process."""

    def __init__(self, ctx: RunContext, opts: TrainingOptions, dataset: Any, G_ema: torch.nn.Module) -> None:
        assert ctx.run_dir is not None and ctx.tracker is not None, "open the run before writing its artifacts"
        self.opts, self.dataset, self.G_ema = opts, dataset, G_ema
        self.run_dir, self.main, self.tracker = ctx.run_dir, ctx.main, ctx.tracker
        device = ctx.device
        self.grid = grid_layout(dataset.resolution, *opts.grid_size)
        self.grid_idx = grid_indices(dataset, *self.grid, seed=0)
        gen = torch.Generator().manual_seed(opts.random_seed)  # fixed grid latents; never the global RNG
        self.grid_z = torch.randn([len(self.grid_idx), G_ema.z_dim], generator=gen).to(device).split(opts.batch_gpu)
        labels = np.stack([dataset.get_label(i) for i in self.grid_idx])
        self.grid_c = torch.from_numpy(labels).to(device).split(opts.batch_gpu)
        self.metrics = SnapshotMetrics(opts.metrics, opts.training_set_kwargs, ctx.run_dir, device, ctx.log,
                                       detector_dir=opts.detector_dir)
        self._tagged: dict[str, int] = {}  # kimg tag -> the nimg whose files carry it

    def resumed_at(self, cur_nimg: int) -> None:
        """The run continues from `cur_nimg`, whose files may already carry its kimg tag."""
        self._tagged[self.opts.kimg_tag(cur_nimg)] = cur_nimg

    def tag(self, cur_nimg: int) -> str:
        """`opts.kimg_tag`, unless an earlier snapshot of this run already has that name (a stop or resume within
        the same kimg as the last tick): then the exact kimg, `000006.048`, so no snapshot replaces another."""
        tag = self.opts.kimg_tag(cur_nimg)
        if self._tagged.setdefault(tag, cur_nimg) != cur_nimg:
            return f"{cur_nimg / 1000:010.3f}"
        return tag

    def _fakes(self, path: Path) -> None:
        with torch.no_grad():
            imgs = torch.cat([self.G_ema(z, c, noise_mode="const").cpu() for z, c in zip(self.grid_z, self.grid_c)])
        save_grid(imgs, path, (-1, 1), self.grid)
        self.tracker.log_artifact(path, "images")

    def start_images(self) -> None:
        """`reals.png` and `fakes_init.png`, once at the start of a run."""
        if not self.main:
            return
        reals = np.stack([self.dataset[i][0] for i in self.grid_idx])
        save_grid(reals, self.run_dir / "reals.png", (0, 255), self.grid)
        self.tracker.log_artifact(self.run_dir / "reals.png", "images")
        self._fakes(self.run_dir / "fakes_init.png")

    def fakes(self, cur_nimg: int) -> None:
        if self.main:
            self._fakes(self.run_dir / f"fakes{self.tag(cur_nimg)}.png")

    def network(self, nets: dict[str, torch.nn.Module | None], cur_nimg: int, cur_tick: int) -> dict[str, float]:
        """Write `network-snapshot-<KIMG>.safetensors` and measure the run's metrics on it (all processes)."""
        snapshot = self.run_dir / f"network-snapshot-{self.tag(cur_nimg)}.safetensors"
        if self.main:
            save_snapshot(snapshot, nets, training_set_kwargs=self.opts.training_set_kwargs,
                          meta={"cur_nimg": cur_nimg, "cur_tick": cur_tick})
            self.tracker.log_artifact(snapshot, "snapshots")
        if not self.metrics:
            return {}
        results = self.metrics(self.G_ema, snapshot)  # every process: features are split
        self.tracker.log_metrics({f"Metrics/{k}": v for k, v in results.items()}, step=cur_nimg // 1000)
        if self.main and results:
            write_quality_csv(self.run_dir)
        return results
