"""What a run leaves for people to look at: the reals grid, fakes grids of fixed latents, code-free network
snapshots, and the metrics measured on them (official file names, `<KIMG>` per `TrainingOptions.kimg_tag`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import save_snapshot
from stages.common.tracking import Tracker
from stages.train.grids import grid_indices, grid_layout, save_grid
from stages.train.options import TrainingOptions
from stages.train.plots import write_quality_csv
from stages.train.snapshot_metrics import SnapshotMetrics


class SnapshotWriter:
    """Grids and snapshots of one run. Files are written by the main process; metrics involve every process."""

    def __init__(self, opts: TrainingOptions, dataset: Any, G_ema: torch.nn.Module, run_dir: Path,
                 device: torch.device, main: bool, tracker: Tracker, log: Callable[[str], None]) -> None:
        self.opts, self.dataset, self.G_ema, self.run_dir, self.main = opts, dataset, G_ema, run_dir, main
        self.tracker = tracker
        self.grid = grid_layout(dataset.resolution, *opts.grid_size)
        self.grid_idx = grid_indices(dataset, *self.grid, seed=0)
        gen = torch.Generator().manual_seed(opts.random_seed)  # fixed grid latents; never the global RNG
        self.grid_z = torch.randn([len(self.grid_idx), G_ema.z_dim], generator=gen).to(device).split(opts.batch_gpu)
        labels = np.stack([dataset.get_label(i) for i in self.grid_idx])
        self.grid_c = torch.from_numpy(labels).to(device).split(opts.batch_gpu)
        self.metrics = SnapshotMetrics(opts.metrics, opts.training_set_kwargs, run_dir, device, log,
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
