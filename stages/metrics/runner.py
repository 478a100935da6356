"""`compute_metrics`: load a network (or take a G), build the reference dataset, compute metrics, report them.

The training loop calls it on snapshots; `python -m stages.evaluate` is a thin CLI over it. Results follow the
official `calc_metric` record: {'results', 'metric', 'total_time', 'total_time_str', 'num_gpus'}, and
`report_metric` appends it to `<run_dir>/metric-<name>.jsonl` with 'snapshot_pkl' and 'timestamp'.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.precision import check_precision
from stages.common.config import ConfigError
from stages.common.fileio import append_jsonl, write_json_atomic
from stages.common.progress import format_time
from stages.metrics import formulas
from stages.metrics.detectors import DetectorNotFoundError, check_detector, open_detector
from stages.metrics.distributed import ProcessGroup, SingleProcess, is_main
from stages.metrics.equivariance import equivariance_psnr, user_transform
from stages.metrics.features import (
    FeatureStats,
    cached_dataset_features,
    generator_features,
    get_stats_cache_dir,
)
from stages.metrics.ppl import ppl_distances
from stages.metrics.registry import MetricSpec, parse_metrics

# Detector calls of the official metrics.
FEATURES = dict(return_features=True)     # Inception pool3 (2048) / VGG16 fc (4096) features
IS_PROBS = dict(no_output_bias=True)      # softmax without the output bias, as the original TF code


@dataclass
class MetricOptions:
    """Everything but the network and the dataset; defaults = `evaluate:` params defaults."""

    detector_dir: str | os.PathLike | None = None
    cache_dir: str | os.PathLike | None = None        # real-statistics cache; None = $SG2_METRICS_CACHE_DIR or ~/.cache
    use_cache: bool = True
    batch_size: int = 64                               # images per detector call
    ppl_batch_size: int = 8                            # path samples per PPL batch (official: 2 per GPU)
    pr_row_batch_size: int = 10000                     # precision/recall distance blocks (memory: rows x cols x 4 B)
    pr_col_batch_size: int = 10000
    seed: int = 0
    workers: int = 0                                   # DataLoader workers for the real images
    G_kwargs: dict[str, Any] = field(default_factory=lambda: dict(noise_mode="random"))  # official G default
    device: torch.device | str = "cpu"
    group: ProcessGroup = field(default_factory=SingleProcess)
    progress: bool = True
    allow_download: bool | None = None                 # None = unless $SG2_OFFLINE
    fid_trace: str = "eig"                             # "eig" (fast) | "sqrtm" (the official computation)
    precision: str = "fp32"                            # G: fp32 (official) | bf16 (models.precision)
    feature_precision: str = "fp32"                    # detectors: fp32 | bf16 (shifts FD: see features.py)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_precision(self.feature_precision)


def make_dataset(dataset_kwargs: dict[str, Any], spec: MetricSpec) -> Any:
    """The metric's view of the dataset: never subsampled by max_size; `_full` metrics also drop x-flips."""
    from stages.common.dataset import ImageFolderDataset

    kw = {k: v for k, v in dataset_kwargs.items() if k in ("path", "resolution", "use_labels", "xflip", "random_seed")}
    kw["max_size"] = None
    if spec.full:
        kw["xflip"] = False
    return ImageFolderDataset(**kw)


def _all_labels(dataset: Any, c_dim: int) -> np.ndarray | None:
    """[N, c_dim] label vectors of the dataset to draw generator conditions from (official: uniform over items)."""
    if c_dim == 0:
        return None
    labels = np.stack([dataset.get_label(i) for i in range(len(dataset))]).astype(np.float32)
    if labels.shape[1] != c_dim:
        raise ValueError(f"generator c_dim {c_dim} != dataset label dim {labels.shape[1]} (use_labels?)")
    return labels


def _detector(spec: MetricSpec, opts: MetricOptions) -> tuple[Any, str]:
    return open_detector(spec.detector, detector_dir=opts.detector_dir, device=opts.device,
                         allow_download=opts.allow_download, kind=spec.kind)


def _real_stats(spec: MetricSpec, dataset: Any, det: Any, det_id: str, kwargs: dict, capture: str,
                opts: MetricOptions) -> FeatureStats:
    cache = get_stats_cache_dir(opts.cache_dir) if opts.use_cache else None
    return cached_dataset_features(dataset, det, det_id, kwargs, capture, spec.max_real, cache,  # type: ignore[arg-type]
                                   group=opts.group, batch_size=opts.batch_size, device=opts.device,
                                   workers=opts.workers, progress=opts.progress,
                                   feature_precision=opts.feature_precision)


class FeatureMemo:
    """Feature passes shared by the metrics of one `compute_metrics` call: FID and KID of the same size and
    detector (e.g. the demo's fid2k_full and kid2k_full) need the same generated and real features, so the
    first pass keeps every row and the second derives what it needs (mean and population covariance, as the
    official code accumulates them) instead of running the detector again."""

    def __init__(self, specs: list[MetricSpec]) -> None:
        keys = [(s.detector, s.num_gen) for s in specs if s.kind in ("fid", "kid")]
        self.shared = {k for k in keys if keys.count(k) > 1}
        self.stats: dict[tuple, FeatureStats] = {}

    def capture(self, spec: MetricSpec, wanted: str) -> str:
        return "all" if (spec.detector, spec.num_gen) in self.shared else wanted

    def get(self, key: tuple, wanted: str, compute: Any) -> FeatureStats:
        if key not in self.stats:
            self.stats[key] = compute()
        stats = self.stats[key]
        if wanted == "meancov" and stats.mean is None and stats.features is not None:
            f = stats.features.astype(np.float64)
            mean = f.mean(axis=0)
            stats = FeatureStats(num_items=f.shape[0], features=stats.features, mean=mean,
                                 cov=f.T @ f / f.shape[0] - np.outer(mean, mean))
            self.stats[key] = stats
        return stats


def _gen_stats(spec: MetricSpec, G: Any, labels: np.ndarray | None, det: Any, kwargs: dict, capture: str,
               opts: MetricOptions) -> FeatureStats:
    return generator_features(G, labels, spec.num_gen, det, kwargs, capture, batch_size=opts.batch_size,  # type: ignore[arg-type]
                              seed=opts.seed, G_kwargs=opts.G_kwargs, group=opts.group, device=opts.device,
                              progress=opts.progress, precision=opts.precision,
                              feature_precision=opts.feature_precision)


def _equivariance(spec: MetricSpec, G: Any, dataset_kwargs: dict[str, Any] | None, opts: MetricOptions
                  ) -> dict[str, float]:
    """EQ-T / EQ-T_frac / EQ-R: pixels only, no detector; the dataset only supplies labels (conditional G)."""
    labels = None
    if G.c_dim > 0:
        if not dataset_kwargs:
            raise ConfigError(f"{spec.name}: a conditional generator draws its labels from the dataset; pass "
                              "dataset_kwargs (CLI: --data)")
        labels = _all_labels(make_dataset(dataset_kwargs, spec), G.c_dim)
    # Truncation applies in the mapping network; noise is always 'const' (both renders of a sample share it).
    mapping_keys = ("truncation_psi", "truncation_cutoff")
    synthesis_kwargs = {k: v for k, v in opts.G_kwargs.items() if k not in (*mapping_keys, "noise_mode")}
    psnr = equivariance_psnr(G, labels, spec.eq, spec.num_gen, seed=opts.seed,  # type: ignore[arg-type]
                             mapping_kwargs={k: v for k, v in opts.G_kwargs.items() if k in mapping_keys},
                             synthesis_kwargs=synthesis_kwargs, group=opts.group, device=opts.device,
                             progress=opts.progress, metric=spec.name)
    return {spec.name: psnr}


def compute_metric(spec: MetricSpec, G: Any, dataset_kwargs: dict[str, Any] | None, opts: MetricOptions,
                   memo: FeatureMemo | None = None) -> dict[str, Any]:
    """One metric -> the official result record. Every process must call it (collectives inside)."""
    start = time.time()
    if spec.kind == "eq":
        results = opts.group.all_gather(_equivariance(spec, G, dataset_kwargs, opts))[0]
        total = time.time() - start
        return dict(results=results, metric=spec.name, total_time=total, total_time_str=format_time(total),
                    num_gpus=opts.group.num_processes)
    if not dataset_kwargs:
        raise ConfigError("dataset options unknown: pass dataset_kwargs (CLI: --data)")
    dataset = make_dataset(dataset_kwargs, spec)
    labels = _all_labels(dataset, G.c_dim)
    det, det_id = _detector(spec, opts)
    main = is_main(opts.group)
    results: dict[str, float] | None = None
    # Feature passes run on every process (collectives inside); the reductions run on the main process
    # only and their result is shared, as the official code does (saves e.g. N-fold 2048x2048 sqrtm).
    memo = memo or FeatureMemo([spec])
    if spec.kind in ("fid", "kid"):
        wanted = "meancov" if spec.kind == "fid" else "all"
        capture = memo.capture(spec, wanted)
        real_key = ("real", det_id, spec.full, min(len(dataset), spec.max_real or len(dataset)))
        real = memo.get(real_key, wanted, lambda: _real_stats(spec, dataset, det, det_id, FEATURES, capture, opts))
        gen = memo.get(("gen", det_id, spec.num_gen), wanted,
                       lambda: _gen_stats(spec, G, labels, det, FEATURES, capture, opts))
    if spec.kind == "fid":
        if main:
            results = {spec.name: formulas.frechet_distance(gen.mean, gen.cov, real.mean, real.cov,
                                                            trace=opts.fid_trace)}
    elif spec.kind == "kid":
        if main:
            results = {spec.name: formulas.kernel_inception_distance(
                real.features, gen.features, spec.num_subsets, spec.max_subset_size, seed=opts.seed)}
    elif spec.kind == "pr":
        real = _real_stats(spec, dataset, det, det_id, FEATURES, "all", opts)
        gen = _gen_stats(spec, G, labels, det, FEATURES, "all", opts)
        if main:
            # Official stores the features as float16; distances here are float32 on the same rounded values.
            r = torch.from_numpy(real.features).half().float().to(opts.device)
            g = torch.from_numpy(gen.features).half().float().to(opts.device)
            p, rc = formulas.precision_recall(r, g, spec.nhood_size, opts.pr_row_batch_size, opts.pr_col_batch_size)
            results = {f"{spec.name}_precision": p, f"{spec.name}_recall": rc}
    elif spec.kind == "is":
        gen = _gen_stats(spec, G, labels, det, IS_PROBS, "all", opts)
        if main:
            mean, std = formulas.inception_score(formulas.as_probabilities(gen.features), spec.num_splits)
            results = {f"{spec.name}_mean": mean, f"{spec.name}_std": std}
    else:
        dist = ppl_distances(G, det, labels, spec.num_gen, space=spec.space, sampling=spec.sampling, crop=spec.crop,
                             epsilon=spec.epsilon, batch_size=opts.ppl_batch_size, seed=opts.seed, group=opts.group,
                             device=opts.device, progress=opts.progress)
        if main:
            results = {spec.name: formulas.ppl_from_distances(dist)}
    results = opts.group.all_gather(results)[0]
    total = time.time() - start
    record = dict(results=results, metric=spec.name, total_time=total, total_time_str=format_time(total),
                  num_gpus=opts.group.num_processes)
    if spec.kind in ("fid", "kid", "pr", "is"):  # the official record has no such keys: fp32 records stay official
        for key in ("precision", "feature_precision"):
            if getattr(opts, key) != "fp32":
                record[key] = getattr(opts, key)
    return record


def compute_metrics(
    network_pkl_or_G: str | os.PathLike | torch.nn.Module,
    metrics: list[str] | str,
    dataset_kwargs: dict[str, Any] | None = None,  # ImageFolderDataset kwargs; None = the snapshot's own
    options: MetricOptions | None = None,
    skip_missing_detectors: bool = False,           # True: a metric whose detector is absent is reported, not raised
    on_result: Any = None,                          # callback(record) after each metric (e.g. report_metric)
) -> dict[str, Any]:
    """Compute `metrics` for a generator -> {'records': {name: record}, 'skipped': {name: reason}}.

    A path or URL is read with `models.load_network` and its G_ema evaluated. Dataset options are completed as
    the official calc_metrics does: resolution = G.img_resolution, use_labels = (G.c_dim > 0).
    """
    opts = options or MetricOptions()
    specs = parse_metrics(metrics)
    if isinstance(network_pkl_or_G, torch.nn.Module):
        G = network_pkl_or_G
    else:
        from models.serialization.loading import load_network

        net = load_network(network_pkl_or_G)
        G = net["G_ema"] if net.get("G_ema") is not None else net["G"]
        if dataset_kwargs is None:
            dataset_kwargs = net.get("training_set_kwargs")
    for spec in specs:  # refuse a StyleGAN2 network before any other metric spends time
        if spec.kind == "eq":
            user_transform(G, spec.name)
    # Equivariance of an unconditional generator needs no images, so no dataset either.
    if not dataset_kwargs and (G.c_dim > 0 or any(spec.kind != "eq" for spec in specs)):
        raise ConfigError("dataset options unknown: pass dataset_kwargs (CLI: --data)")
    if dataset_kwargs:
        dataset_kwargs = dict(dataset_kwargs, resolution=G.img_resolution, use_labels=G.c_dim != 0)
    G = G.eval().requires_grad_(False).to(opts.device)
    records: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    memo = FeatureMemo(specs)
    for spec in specs:
        if spec.uses_reals or spec.kind in ("is", "ppl"):
            try:
                check_detector(spec.detector, detector_dir=opts.detector_dir, allow_download=opts.allow_download,
                               kind=spec.kind)
            except DetectorNotFoundError as exc:
                if not skip_missing_detectors:
                    raise
                skipped[spec.name] = str(exc)
                continue
        records[spec.name] = compute_metric(spec, G, dataset_kwargs, opts, memo)
        if on_result is not None and is_main(opts.group):
            on_result(records[spec.name])
    return dict(records=records, skipped=skipped)


def flat_results(records: dict[str, Any]) -> dict[str, float]:
    """{'fid50k_full': 12.3, 'pr50k3_full_precision': 0.7, ...} over all records."""
    out: dict[str, float] = {}
    for rec in records.values():
        out.update({k: float(v) for k, v in rec["results"].items()})
    return out


def report_metric(record: dict[str, Any], run_dir: str | os.PathLike | None = None,
                  snapshot_pkl: str | os.PathLike | None = None) -> str:
    """Append the official jsonl line to `<run_dir>/metric-<name>.jsonl` (when run_dir exists); returns the line."""
    if run_dir is not None and snapshot_pkl is not None and not str(snapshot_pkl).startswith(("http:", "https:")):
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    line = dict(record, snapshot_pkl=None if snapshot_pkl is None else str(snapshot_pkl), timestamp=time.time())
    if run_dir is not None and os.path.isdir(run_dir):
        return append_jsonl(Path(run_dir) / f"metric-{record['metric']}.jsonl", line)
    return json.dumps(line)


def write_metrics_json(path: str | os.PathLike, results: dict[str, float]) -> None:
    """The flat results as DVC metrics, atomically."""
    write_json_atomic(path, results, sort_keys=True)
