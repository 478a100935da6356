"""Metric formulas against closed forms, feature passes, the statistics cache, detectors and process splits.

Detectors are small TorchScript stand-ins built here (same call signatures as NVIDIA's files); nothing is
downloaded.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from stages.common.dataset import ImageFolderDataset
from stages.metrics import detectors, formulas
from stages.metrics.detectors import DetectorNotFoundError, find_detector, load_detector
from stages.metrics.features import cached_dataset_features, generator_features
from stages.metrics.ppl import perceptual_path_length, ppl_distances
from stages.metrics.registry import OFFICIAL_METRICS, UnknownMetricError, parse_metric
from stages.metrics.runner import MetricOptions, compute_metric

# --------------------------------------------------------------------------------------------------------
# Stand-in detectors and fixtures (imported by test_evaluate too).


class StandinInception(torch.nn.Module):
    """Inception's call signature: 2048-d features, or 1008 class probabilities (softmax inside, as NVIDIA's)."""

    def __init__(self, feature_dim: int = 2048) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(3 * 16, feature_dim, generator=g))
        self.head = torch.nn.Parameter(torch.randn(feature_dim, 1008, generator=g) * 0.05)

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        f = F.adaptive_avg_pool2d(x.to(torch.float32) / 255, 4).flatten(1) @ self.proj  # [N, feature_dim]
        if return_features:
            return f
        return torch.softmax(f @ self.head, dim=1)


class StandinVGG16(torch.nn.Module):
    """VGG16's call signature: fc features, or unit-norm LPIPS-style features of a [0, 255] float image."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.proj = torch.nn.Parameter(torch.randn(3 * 16, 64, generator=g))

    def forward(self, x: torch.Tensor, resize_images: bool = True, return_features: bool = False,
                return_lpips: bool = False) -> torch.Tensor:
        f = F.adaptive_avg_pool2d(x.to(torch.float32) / 255, 4).flatten(1)
        if return_lpips:
            return f / f.square().sum(dim=1, keepdim=True).sqrt().clamp(min=1e-8)
        return f @ self.proj


def make_detector_dir(path: Path, feature_dim: int = 2048) -> Path:
    """Stand-ins under the official file names. `feature_dim` < 2048 keeps FID's sqrtm cheap in fast tests
    (a 2048x2048 sqrtm takes ~50 s on 2 shared cores); the real width is exercised by a slow test."""
    path.mkdir(parents=True, exist_ok=True)
    torch.jit.script(StandinInception(feature_dim)).save(str(path / "inception-2015-12-05.pt"))
    torch.jit.script(StandinVGG16()).save(str(path / "vgg16.pt"))
    return path


def make_zip(path: Path, n: int = 12, res: int = 16, labels: bool = False, seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    entries = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            buf = io.BytesIO()
            PIL.Image.fromarray((rng.rand(res, res, 3) * 255).astype(np.uint8)).save(buf, "PNG")
            name = f"00000/img{i:08d}.png"
            zf.writestr(name, buf.getvalue())
            entries.append([name, i % 2])
        zf.writestr("dataset.json", json.dumps({"labels": entries if labels else None}))
    return path


def tiny_generator(c_dim: int = 0, seed: int = 0) -> torch.nn.Module:
    from models import Generator

    torch.manual_seed(seed)
    return Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=16, img_channels=3,
                     mapping_kwargs={"num_layers": 2},
                     synthesis_kwargs={"channel_base": 256, "channel_max": 16}).eval().requires_grad_(False)


class ConstantGenerator(torch.nn.Module):
    """Ignores its inputs: PPL must be exactly 0."""

    z_dim, c_dim, w_dim, num_ws, img_resolution, img_channels = 4, 0, 4, 2, 16, 3

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("img", torch.linspace(-1, 1, 3 * 16 * 16).reshape(1, 3, 16, 16))
        outer = self

        class Mapping(torch.nn.Module):
            def forward(self, z: torch.Tensor, c: torch.Tensor, **_: Any) -> torch.Tensor:
                return z[:, None, :].repeat(1, outer.num_ws, 1)

        class Synthesis(torch.nn.Module):
            def forward(self, ws: torch.Tensor, **_: Any) -> torch.Tensor:
                return outer.img.repeat(ws.shape[0], 1, 1, 1)

        self.mapping, self.synthesis = Mapping(), Synthesis()

    def forward(self, z: torch.Tensor, c: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c))


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory) -> Path:
    return make_detector_dir(tmp_path_factory.mktemp("detectors"), feature_dim=64)


@pytest.fixture(scope="module")
def data_zip(tmp_path_factory) -> Path:
    return make_zip(tmp_path_factory.mktemp("data") / "toy.zip", labels=True)


# --------------------------------------------------------------------------------------------------------
# Registry.


def test_registry_parses_official_and_sized_names() -> None:
    for name in OFFICIAL_METRICS:
        assert parse_metric(name).name == name
    s = parse_metric("fid10k_full")
    assert (s.kind, s.num_gen, s.max_real, s.full) == ("fid", 10000, None, True)
    s = parse_metric("fid2k")
    assert (s.num_gen, s.max_real, s.full) == (2000, 2000, False)
    s = parse_metric("kid50k_full")
    assert (s.max_real, s.num_subsets, s.max_subset_size) == (1_000_000, 100, 1000)
    s = parse_metric("pr50k3_full")
    assert (s.kind, s.num_gen, s.max_real, s.nhood_size) == ("pr", 50000, 200_000, 3)
    assert parse_metric("pr50k3_full").result_keys() == ["pr50k3_full_precision", "pr50k3_full_recall"]
    assert parse_metric("is50k").result_keys() == ["is50k_mean", "is50k_std"]
    s = parse_metric("ppl2_wend")
    assert (s.space, s.sampling, s.crop, s.epsilon) == ("w", "end", False, 1e-4)
    assert parse_metric("ppl_zfull").crop and parse_metric("ppl_zfull").space == "z"
    for bad in ("fid", "fid50k_ful", "is50k_full", "ppl_xend", "pr50k", "fid0_full"):
        with pytest.raises(UnknownMetricError):
            parse_metric(bad)


# --------------------------------------------------------------------------------------------------------
# Formulas.


def test_fid_gaussian_closed_form() -> None:
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    expected = np.square(mu1 - mu2).sum() + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert formulas.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # And from sampled features: the sample statistics converge to the same value.
    x = mu1 + rng.normal(size=(200_000, d)) * np.sqrt(s1)
    y = mu2 + rng.normal(size=(200_000, d)) * np.sqrt(s2)
    fid = formulas.frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fid == pytest.approx(expected, rel=0.02)


def test_fid_identical_is_zero_and_singular_fallback() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 8))
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    assert 0 <= formulas.frechet_distance(mu, cov, mu, cov) < 1e-6
    # Rank-deficient covariances (fewer samples than dimensions), the usual case for small evaluations.
    y = rng.normal(size=(5, 64))
    cy = np.cov(y, rowvar=False)
    fid = formulas.frechet_distance(y.mean(0), cy, y.mean(0), cy)
    assert np.isfinite(fid) and 0 <= fid < 1e-3
    # The eigendecomposition form agrees with sqrtm on well-conditioned input.
    a, b = np.cov(rng.normal(size=(100, 5)), rowvar=False), np.cov(rng.normal(size=(100, 5)), rowvar=False)
    tr = float(np.real(np.trace(__import__("scipy.linalg").linalg.sqrtm(a @ b))))
    assert formulas._sqrtm_trace_eig(a, b) == pytest.approx(tr, rel=1e-8)


def test_kid_unbiased_near_zero_and_positive_when_shifted() -> None:
    rng = np.random.default_rng(2)
    same = [formulas.kernel_inception_distance(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)),
                                               num_subsets=10, max_subset_size=100, seed=s) for s in range(10)]
    shifted = formulas.kernel_inception_distance(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)) + 1,
                                                 num_subsets=10, max_subset_size=100)
    assert abs(np.mean(same)) < 0.05 * shifted
    assert min(same) < 0 or max(same) > 0  # an unbiased estimate scatters around 0, both signs allowed
    assert shifted > 0.1


def test_precision_recall_toy_manifolds() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(200, 8, generator=g)
    assert formulas.precision_recall(a, a.clone()) == (1.0, 1.0)
    far = a + 1000
    assert formulas.precision_recall(a, far) == (0.0, 0.0)
    # Generated = a far-away cluster + a copy of half the reals: precision 1/2 (only the copies lie on the
    # real manifold); recall = share of reals within the k-NN balls of the generated set's copies (>= 1/2).
    gen = torch.cat([a[:100], far[:100]])
    p, r = formulas.precision_recall(a, gen, k=3)
    assert p == 0.5 and 0.5 <= r < 1
    # Chunking does not change anything.
    assert formulas.precision_recall(a, gen, 3, row_batch_size=7, col_batch_size=13) == (p, r)


def test_knn_radii_matches_bruteforce() -> None:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(4))
    brute = torch.cdist(x, x).kthvalue(4, dim=1).values
    torch.testing.assert_close(formulas.knn_radii(x, 3, row_batch_size=8, col_batch_size=5), brute)


def test_inception_score_uniform_and_confident() -> None:
    assert formulas.inception_score(np.full([100, 10], 0.1), num_splits=10) == pytest.approx((1.0, 0.0))
    k = 7
    onehot = np.eye(k)[np.arange(70) % k]  # each split holds every class equally often
    mean, std = formulas.inception_score(onehot, num_splits=10)
    assert mean == pytest.approx(k) and std == pytest.approx(0, abs=1e-9)
    # Logits are turned into the same probabilities.
    probs = formulas.as_probabilities(np.log(np.full([4, 3], 1 / 3)) + 5)
    np.testing.assert_allclose(probs, 1 / 3)


def test_ppl_reduction_rejects_outliers() -> None:
    d = np.concatenate([np.full(990, 2.0), np.zeros(5), np.full(5, 1e9)])  # 1 % of 1000 = 10 rejected
    assert formulas.ppl_from_distances(d) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------------------
# Detectors.


def test_detector_lookup_order_and_load(tmp_path, detector_dir, monkeypatch) -> None:
    monkeypatch.delenv(detectors.DETECTOR_DIR_ENV, raising=False)
    monkeypatch.setenv(detectors.CACHE_ENV, str(tmp_path / "cache"))
    assert find_detector("inception", detector_dir=detector_dir) == detector_dir / "inception-2015-12-05.pt"
    monkeypatch.setenv(detectors.DETECTOR_DIR_ENV, str(detector_dir))
    det = load_detector("vgg16.pt")
    assert det(torch.zeros([2, 3, 16, 16], dtype=torch.uint8), return_features=True).shape == (2, 64)
    assert load_detector("vgg16") is det  # memoized


def test_detector_offline_error_names_file_url_and_setting(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(detectors.DETECTOR_DIR_ENV, raising=False)
    monkeypatch.setenv(detectors.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(detectors.OFFLINE_ENV, "1")
    with pytest.raises(DetectorNotFoundError) as info:
        load_detector("inception", detector_dir=tmp_path / "nothing-here")
    msg = str(info.value)
    assert "\n" not in msg
    assert "inception-2015-12-05.pt" in msg and "--detector-dir" in msg and "SG2_DETECTOR_DIR" in msg
    assert detectors.DETECTORS["inception"].url in msg


def test_detector_checksum_sidecar(tmp_path, detector_dir, monkeypatch) -> None:
    monkeypatch.setenv(detectors.CACHE_ENV, str(tmp_path / "cache"))
    d = tmp_path / "dets"
    d.mkdir()
    (d / "vgg16.pt").write_bytes((detector_dir / "vgg16.pt").read_bytes())
    (d / "vgg16.pt.sha256").write_text("0" * 64 + "  vgg16.pt\n")
    with pytest.raises(detectors.DetectorChecksumError):
        find_detector("vgg16", detector_dir=d)
    (d / "vgg16.pt.sha256").write_text(detectors.file_sha256(d / "vgg16.pt") + "  vgg16.pt\n")
    assert find_detector("vgg16", detector_dir=d) == d / "vgg16.pt"


def test_detector_download_is_atomic_and_records_sha(tmp_path, detector_dir, monkeypatch) -> None:
    payload = (detector_dir / "vgg16.pt").read_bytes()

    def fake_download(url: str, fh: Any) -> None:  # the real helper does HTTP; never at test time
        fh.write(payload)

    monkeypatch.setattr("models.serialization.loading.download_to", fake_download)
    monkeypatch.delenv(detectors.DETECTOR_DIR_ENV, raising=False)
    monkeypatch.delenv(detectors.OFFLINE_ENV, raising=False)
    path = find_detector("vgg16", cache_dir=tmp_path / "c", allow_download=True)
    assert path.read_bytes() == payload
    assert (tmp_path / "c" / "vgg16.pt.sha256").read_text().split()[0] == detectors.file_sha256(path)
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.endswith(".part")] == []


# --------------------------------------------------------------------------------------------------------
# Feature passes, cache, metrics end to end (stand-in detectors).


def test_stats_cache_second_call_does_not_read_images(tmp_path, data_zip, detector_dir, monkeypatch) -> None:
    ds = ImageFolderDataset(data_zip)
    det = load_detector("inception", detector_dir=detector_dir)
    kw = dict(detector_id="x", detector_kwargs={"return_features": True}, max_items=None, cache_dir=tmp_path,
              batch_size=5, progress=False)
    first = cached_dataset_features(ds, det, capture="meancov", **kw)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def boom(*_a: Any, **_k: Any) -> None:
        raise AssertionError("dataset images read although the statistics are cached")

    monkeypatch.setattr(ImageFolderDataset, "__getitem__", boom)
    second = cached_dataset_features(ImageFolderDataset(data_zip), det, capture="meancov", **kw)
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.cov, second.cov)
    assert second.num_items == len(ds) == 12
    # A different capture mode or item count is a different entry, not a stale hit.
    with pytest.raises(AssertionError, match="cached"):
        cached_dataset_features(ImageFolderDataset(data_zip), det, capture="all", **kw)


def test_generator_features_seeded(detector_dir) -> None:
    G = tiny_generator(c_dim=2)
    det = load_detector("inception", detector_dir=detector_dir)
    labels = np.eye(2, dtype=np.float32)
    a = generator_features(G, labels, 10, det, {"return_features": True}, "all", batch_size=4, progress=False)
    b = generator_features(G, labels, 10, det, {"return_features": True}, "all", batch_size=4, progress=False)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.shape == (10, 64)


def test_ppl_constant_generator_is_zero_and_real_one_finite(detector_dir) -> None:
    vgg = load_detector("vgg16", detector_dir=detector_dir)
    for space, sampling, crop in [("z", "full", True), ("w", "end", False)]:
        d = ppl_distances(ConstantGenerator(), vgg, None, 6, space=space, sampling=sampling, crop=crop,
                          batch_size=4, progress=False)
        assert d.shape == (6,) and np.all(d == 0)
    ppl = perceptual_path_length(tiny_generator(), vgg, None, 8, space="z", sampling="full", batch_size=4,
                                 progress=False)
    assert np.isfinite(ppl) and ppl > 0


def test_all_metric_kinds_run(tmp_path, data_zip, detector_dir) -> None:
    G = tiny_generator(c_dim=2)
    opts = MetricOptions(detector_dir=detector_dir, cache_dir=tmp_path, batch_size=8, ppl_batch_size=4,
                         progress=False)
    kwargs = dict(path=str(data_zip), use_labels=True, xflip=False, resolution=16)
    results = {}
    for name in ("fid16_full", "kid16", "pr163_full", "is20", "ppl2_wend"):  # pr163: 16 samples, k=3
        spec = parse_metric(name)
        if spec.kind == "ppl":
            spec = type(spec)(**{**spec.__dict__, "num_gen": 8})
        rec = compute_metric(spec, G, kwargs, opts)
        assert set(rec) == {"results", "metric", "total_time", "total_time_str", "num_gpus"}
        results.update(rec["results"])
    assert set(results) == {"fid16_full", "kid16", "pr163_full_precision", "pr163_full_recall", "is20_mean",
                            "is20_std", "ppl2_wend"}
    assert all(np.isfinite(v) for v in results.values())
    assert results["fid16_full"] >= 0 and 1 <= results["is20_mean"] <= 1008


# --------------------------------------------------------------------------------------------------------
# Processes: a split over 2 ranks equals 1 process.


class ThreadGroup:
    """A 2-rank process group backed by threads and a barrier: real concurrent collectives, no launcher."""

    def __init__(self, rank: int, shared: dict, barrier: threading.Barrier, num_processes: int) -> None:
        self.rank, self.num_processes, self._shared, self._barrier = rank, num_processes, shared, barrier

    def all_gather(self, obj: Any) -> list[Any]:
        self._barrier.wait()
        self._shared[self.rank] = obj
        self._barrier.wait()
        out = [self._shared[r] for r in range(self.num_processes)]
        self._barrier.wait()
        return out


def run_ranks(fn: Any, num_processes: int = 2) -> list[Any]:
    barrier = threading.Barrier(num_processes, timeout=120)
    shared: dict = {}
    results: list[Any] = [None] * num_processes
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            results[rank] = fn(ThreadGroup(rank, shared, barrier, num_processes))
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(num_processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("name", ["fid20_full", "kid20", "pr203_full", "ppl_wend"])
def test_two_processes_equal_one(tmp_path, data_zip, detector_dir, name) -> None:
    G = tiny_generator(c_dim=2)
    kwargs = dict(path=str(data_zip), use_labels=True, xflip=False, resolution=16)
    spec = parse_metric(name)
    if spec.kind == "ppl":
        spec = type(spec)(**{**spec.__dict__, "num_gen": 12})

    def run(group: Any, sub: str) -> dict:
        opts = MetricOptions(detector_dir=detector_dir, cache_dir=tmp_path / sub, batch_size=4, ppl_batch_size=4,
                             progress=False, group=group)
        return compute_metric(spec, G, kwargs, opts)["results"]

    one = run(ThreadGroup(0, {}, threading.Barrier(1), 1), "one")
    two = run_ranks(lambda g: run(g, "two"))
    for res in two:
        assert res.keys() == one.keys()
        for k in one:
            assert res[k] == pytest.approx(one[k], rel=1e-6, abs=1e-9), k
