"""Metric cost on CPU: fid10k_full at 32 px (tiny G, stand-in Inception) and precision/recall distances.

    python tests/benchmarks/bench_metrics.py [--fid-gen 10000] [--pr-n 50000] [--pr-dim 4096] [--pr-sample 5000]

Prints one JSON object. The PR part times the chunked k-NN computation on `--pr-sample` random rows against
`--pr-n` columns and extrapolates linearly in rows (the work is rows x cols x dim, memory one block).
Peak RSS is the process high-water mark (resource.getrusage), so it includes the earlier parts.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stages.evaluate import formulas
from stages.metrics.registry import parse_metric
from stages.metrics.runner import MetricOptions, compute_metric
from tests.test_metrics import make_detector_dir, make_zip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_fid(num_gen: int, num_real: int, tmp: Path) -> dict:
    from models import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3, mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 1024, "channel_max": 64}).eval().requires_grad_(False)
    data = make_zip(tmp / "bench.zip", n=num_real, res=32)
    dets = make_detector_dir(tmp / "dets", feature_dim=2048)
    opts = MetricOptions(detector_dir=dets, cache_dir=tmp / "stats", batch_size=64, progress=False)
    spec = parse_metric(f"fid{num_gen}_full")
    kwargs = dict(path=str(data), use_labels=False, xflip=False, resolution=32)
    t0 = time.time()
    first = compute_metric(spec, G, kwargs, opts)
    t1 = time.time()
    second = compute_metric(spec, G, kwargs, opts)  # real statistics now come from the cache
    t2 = time.time()
    return dict(metric=spec.name, num_real=num_real, fid=first["results"][spec.name], seconds_cold=t1 - t0,
                seconds_cached_reals=t2 - t1, img_per_s_incl_sqrtm=num_gen / (t2 - t1), peak_rss_mb=peak_rss_mb(),
                same_result=first["results"] == second["results"])


def bench_pr(n: int, dim: int, sample: int, block: int) -> dict:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, dim, generator=g).half().float()  # official stores PR features as float16
    rows = slice(0, min(sample, n))
    t0 = time.time()
    formulas.knn_radii(feats, 3, row_batch_size=block, col_batch_size=block, rows=rows)
    dt = time.time() - t0
    # Full pr50k3: radii for both manifolds (2 x n rows) + both probe passes (2 x n rows), each vs n columns.
    per_row = dt / (rows.stop - rows.start)
    return dict(n=n, dim=dim, rows_timed=rows.stop - rows.start, block=block, seconds_timed=dt,
                est_seconds_full_pr=per_row * 4 * n, block_mb=block * block * 4 / 2**20, peak_rss_mb=peak_rss_mb())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fid-gen", type=int, default=10000)
    ap.add_argument("--fid-real", type=int, default=2000)
    ap.add_argument("--pr-n", type=int, default=50000)
    ap.add_argument("--pr-dim", type=int, default=4096)
    ap.add_argument("--pr-sample", type=int, default=2000)
    ap.add_argument("--pr-block", type=int, default=10000)
    args = ap.parse_args()
    out = dict(torch=torch.__version__, threads=torch.get_num_threads(), numpy=np.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        out["fid"] = bench_fid(args.fid_gen, args.fid_real, Path(tmp))
    out["pr"] = bench_pr(args.pr_n, args.pr_dim, args.pr_sample, args.pr_block)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
