"""Detector features of real and generated images, split across processes, with a cache for the reals.

Two capture modes, as in the official metrics: `meancov` keeps only the float64 sums needed for the mean and
covariance (FID; O(D²) memory for any N), `all` keeps every feature row (KID, PR, IS).

Generated images are seeded per global batch (`numpy.random.default_rng([seed, batch])` for z and labels,
`torch.manual_seed` of the same for noise), which makes a run repeatable and independent of the number of
processes; the official code draws from unseeded global RNGs instead.

`precision="bf16"` runs the generator's synthesis blocks in bfloat16 (`models.precision`): 2-5x the official fp32
images/s on CPUs with AVX-512 BF16, and an FD change far below the seed-to-seed noise (measured: 0.015 against 0.9
on an FD of 319). `feature_precision="bf16"` runs the detector under bfloat16 autocast too, about 1.5x faster, but
it moves FD systematically (EfficientNet-Lite0: +3 on 319, above that noise): compare such numbers only with each
other. Real-image statistics depend on the feature precision alone and are cached under their own key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from models.precision import check_precision, generator_precision
from models.precision import feature_precision as detector_precision
from stages.common.fileio import atomic_open
from stages.common.images import to_uint8
from stages.metrics.distributed import ProcessGroup, SingleProcess, gather_rows, is_main, my_batches, sum_arrays

Capture = Literal["meancov", "all"]
STATS_CACHE_ENV = "SG2_METRICS_CACHE_DIR"
DEFAULT_STATS_CACHE_DIR = Path("~/.cache/sg2ada-mlops/gan-metrics")
CACHE_VERSION = 1


@dataclass
class FeatureStats:
    """What one pass produced: all rows or the mean/covariance, plus the item count."""

    num_items: int
    features: np.ndarray | None = None      # [N, D] float32 (capture 'all')
    mean: np.ndarray | None = None          # [D] float64 (capture 'meancov')
    cov: np.ndarray | None = None           # [D, D] float64, population covariance (divides by N, as official)


class _Accumulator:
    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.parts: list[tuple[int, np.ndarray]] = []
        self.n = 0
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def add(self, start: int, x: np.ndarray) -> None:
        self.n += x.shape[0]
        if self.capture == "all":
            self.parts.append((start, x.astype(np.float32)))
            return
        x64 = x.astype(np.float64)
        if self.sum is None:
            self.sum, self.outer = np.zeros(x.shape[1]), np.zeros([x.shape[1], x.shape[1]])
        self.sum += x64.sum(axis=0)
        self.outer += x64.T @ x64

    def finish(self, group: ProcessGroup) -> FeatureStats:
        if self.capture == "all":
            feats = gather_rows(self.parts, group)
            return FeatureStats(num_items=feats.shape[0], features=feats)
        d = next((s.shape[0] for s in group.all_gather(self.sum) if s is not None), 0)
        total_n = sum(group.all_gather(self.n))
        s, o = (self.sum, self.outer) if self.sum is not None else (np.zeros(d), np.zeros([d, d]))
        s, o = sum_arrays([s, o], group)
        mean = s / total_n
        return FeatureStats(num_items=total_n, mean=mean, cov=o / total_n - np.outer(mean, mean))


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.repeat([1, 3, 1, 1]) if images.shape[1] == 1 else images  # detectors take 3 channels


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, dynamic_ncols=True)


def dataset_features(
    dataset: Any,                          # ImageFolderDataset-like: len(), ds[i] -> (uint8 CHW, label)
    detector: Callable[..., torch.Tensor],
    detector_kwargs: dict[str, Any],
    capture: Capture,
    max_items: int | None = None,
    batch_size: int = 64,
    group: ProcessGroup | None = None,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = True,
    feature_precision: str = "fp32",       # detector precision: fp32 | bf16 (models.precision)
) -> FeatureStats:
    """Features of the first min(len, max_items) dataset items (the official item order)."""
    check_precision(feature_precision)
    group = group or SingleProcess()
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    acc = _Accumulator(capture)
    batches = my_batches(n, batch_size, group)
    indices = [i for _, s, e in batches for i in range(s, e)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers)
    starts = iter([s for _, s, _ in batches])
    with _progress(n, "dataset features", progress and is_main(group)) as bar:
        for images, _labels in loader:
            with torch.no_grad(), detector_precision(feature_precision, device):
                feats = detector(_to_rgb(images.to(device)), **detector_kwargs)
            acc.add(next(starts), feats.float().cpu().numpy())
            bar.update(images.shape[0] * group.num_processes)
    return acc.finish(group)


def batch_latents(
    seed: int, batch: int, n: int, z_dim: int, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """z [n, z_dim] and c [n, c_dim] of global batch `batch` (labels drawn uniformly from the dataset's)."""
    rng = np.random.default_rng([seed, batch])
    z = rng.standard_normal([n, z_dim]).astype(np.float32)
    if labels is None or labels.shape[1] == 0:
        c = np.zeros([n, 0], dtype=np.float32)
    else:
        c = labels[rng.integers(labels.shape[0], size=n)]
    return z, c, rng


@contextlib.contextmanager
def seeded_torch(seed: int, batch: int, device: torch.device | str) -> Iterator[None]:
    """Seed torch (noise inputs, PPL's t) for one batch without disturbing the caller's RNG state."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(np.random.default_rng([seed, batch, 1]).integers(2**62)))
        yield


def generator_features(
    G: torch.nn.Module,
    labels: np.ndarray | None,             # [L, c_dim] label vectors to draw c from (None/empty: unconditional)
    num_gen: int,
    detector: Callable[..., torch.Tensor],
    detector_kwargs: dict[str, Any],
    capture: Capture,
    batch_size: int = 64,
    seed: int = 0,
    G_kwargs: dict[str, Any] | None = None,  # e.g. truncation_psi, noise_mode
    group: ProcessGroup | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    precision: str = "fp32",               # generator precision: fp32 | bf16 (models.precision)
    feature_precision: str = "fp32",       # detector precision: fp32 | bf16
) -> FeatureStats:
    """Features of `num_gen` generated images."""
    check_precision(precision)
    check_precision(feature_precision)
    group = group or SingleProcess()
    acc = _Accumulator(capture)
    with _progress(num_gen, "generator features", progress and is_main(group)) as bar:
        for b, s, e in my_batches(num_gen, batch_size, group):
            z, c, _ = batch_latents(seed, b, e - s, G.z_dim, labels)
            with torch.no_grad(), seeded_torch(seed, b, device):
                with generator_precision(precision, G, device):
                    img = G(torch.from_numpy(z).to(device), torch.from_numpy(c).to(device), **(G_kwargs or {}))
                with detector_precision(feature_precision, device):
                    feats = detector(_to_rgb(to_uint8(img.float())), **detector_kwargs)
            acc.add(s, feats.float().cpu().numpy())
            bar.update((e - s) * group.num_processes)
    return acc.finish(group)


# ------------------------------------------------------------------------------------------------------------
# Cache of real-image statistics.


def get_stats_cache_dir(override: str | os.PathLike | None = None) -> Path:
    raw = override if override is not None else os.environ.get(STATS_CACHE_ENV) or DEFAULT_STATS_CACHE_DIR
    return Path(raw).expanduser()


def stats_cache_path(
    cache_dir: Path, dataset: Any, detector_id: str, detector_kwargs: dict[str, Any], capture: Capture,
    max_items: int | None, feature_precision: str = "fp32",
) -> Path:
    """File of the statistics for this dataset content, detector file, call, capture mode, item count, precision.

    `content_hash()` already covers image bytes (CRCs), labels, max_size, xflip and the subset seed; the
    resolution is added for clarity. The key holds no path, so a moved or copied dataset still hits. The
    precision enters the key only when it is not fp32, so caches written before it existed still hit.
    """
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    key = dict(v=CACHE_VERSION, dataset=dataset.content_hash(), resolution=dataset.resolution, detector=detector_id,
               detector_kwargs=detector_kwargs, capture=capture, num_items=n)
    if feature_precision != "fp32":
        key["feature_precision"] = feature_precision
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir / f"{dataset.name}-{detector_id}-{capture}-{digest}.npz"


def load_stats(path: Path) -> FeatureStats | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle: a cache file is data only
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError):  # unreadable (foreign, truncated by a full disk): recompute
        return None
    return FeatureStats(num_items=int(arrays["num_items"]), features=arrays.get("features"),
                        mean=arrays.get("mean"), cov=arrays.get("cov"))


def save_stats(path: Path, stats: FeatureStats) -> None:
    """Write atomically: concurrent evaluations never read a half-written file."""
    arrays = {k: v for k, v in dict(features=stats.features, mean=stats.mean, cov=stats.cov).items() if v is not None}
    with atomic_open(path, "wb") as fh:
        np.savez(fh, num_items=np.int64(stats.num_items), **arrays)


def cached_dataset_features(
    dataset: Any,
    detector: Callable[..., torch.Tensor],
    detector_id: str,
    detector_kwargs: dict[str, Any],
    capture: Capture,
    max_items: int | None,
    cache_dir: Path | None,                # None = no caching
    group: ProcessGroup | None = None,
    **kwargs: Any,
) -> FeatureStats:
    """`dataset_features`, read from / written to the statistics cache. All processes agree on hit or miss."""
    group = group or SingleProcess()
    if cache_dir is None:
        return dataset_features(dataset, detector, detector_kwargs, capture, max_items, group=group, **kwargs)
    path = stats_cache_path(cache_dir, dataset, detector_id, detector_kwargs, capture, max_items,
                            feature_precision=kwargs.get("feature_precision", "fp32"))
    # The main process decides (a file appearing between two processes' checks must not split them).
    hit = group.all_gather(path.is_file() if is_main(group) else None)[0]
    stats = load_stats(path) if hit else None
    if hit and not all(group.all_gather(stats is not None)):
        stats = None
    if stats is not None:
        return stats
    stats = dataset_features(dataset, detector, detector_kwargs, capture, max_items, group=group, **kwargs)
    if is_main(group):
        save_stats(path, stats)
    return stats
