"""ImageFolderDataset: reads our ZIPs, official-layout ZIPs and folders; labels, max_size, xflip, hash, fork."""

from __future__ import annotations

import io
import json
import multiprocessing
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from stages.common.dataset import DatasetError, ImageFolderDataset
from stages.prepare.config import PrepareConfig
from stages.prepare.conversion import prepare_dataset


def _arrays(n: int, c: int = 3, size: int = 8) -> list[np.ndarray]:
    rs = np.random.RandomState(0)
    return [rs.randint(0, 256, (size, size, c) if c == 3 else (size, size)).astype(np.uint8) for _ in range(n)]


@pytest.fixture
def ours(tmp_path: Path) -> tuple[Path, list[np.ndarray], list[int]]:
    src = tmp_path / "src"
    src.mkdir()
    arrays = _arrays(7)
    labels = [3, 0, 1, 2, 0, 1, 3]
    for i, a in enumerate(arrays):
        PIL.Image.fromarray(a).save(src / f"{i}.png")
    (src / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", lab] for i, lab in enumerate(labels)]}))
    dest = tmp_path / "ds.zip"
    prepare_dataset(PrepareConfig(source=str(src), dest=str(dest), workers=1, progress=False))
    return dest, arrays, labels


def official_layout_zip(path: Path, arrays: list[np.ndarray], labels: list[int] | None) -> None:
    """What the official dataset_tool writes: Pillow PNGs, zipfile defaults (current timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        names = []
        for i, a in enumerate(arrays):
            buf = io.BytesIO()
            PIL.Image.fromarray(a).save(buf, format="png", compress_level=0, optimize=False)
            names.append(f"{i // 1000:05d}/img{i:08d}.png")
            zf.writestr(names[-1], buf.getbuffer())
        meta = {"labels": [[n, lab] for n, lab in zip(names, labels)] if labels is not None else None}
        zf.writestr("dataset.json", json.dumps(meta))


def test_reads_our_zip_with_labels(ours):
    dest, arrays, labels = ours
    ds = ImageFolderDataset(dest, use_labels=True)
    assert len(ds) == 7 and ds.resolution == 8 and ds.num_channels == 3 and ds.image_shape == [3, 8, 8]
    assert ds.label_dim == 4 and ds.has_labels and ds.name == "ds"
    for i in range(7):
        img, lab = ds[i]
        assert img.dtype == np.uint8 and np.array_equal(img, arrays[i].transpose(2, 0, 1))
        assert lab.dtype == np.float32 and lab.tolist() == np.eye(4, dtype=np.float32)[labels[i]].tolist()
    unlabelled = ImageFolderDataset(dest)
    assert unlabelled[0][1].shape == (0,) and not unlabelled.has_labels


def test_reads_official_layout_zip_and_folder(tmp_path):
    gray = _arrays(3, c=1)
    official_layout_zip(tmp_path / "off.zip", gray, [1, 0, 1])
    ds = ImageFolderDataset(tmp_path / "off.zip", use_labels=True, resolution=8)
    assert ds.num_channels == 1 and ds.label_dim == 2
    assert np.array_equal(ds[2][0], gray[2][None])
    with zipfile.ZipFile(tmp_path / "off.zip") as zf:
        zf.extractall(tmp_path / "folder")
    folder = ImageFolderDataset(tmp_path / "folder", use_labels=True)
    assert np.array_equal(folder[1][0], ds[1][0]) and np.array_equal(folder[1][1], ds[1][1])
    with pytest.raises(DatasetError, match="expected 16x16"):
        ImageFolderDataset(tmp_path / "off.zip", resolution=16)


def test_max_size_and_xflip_follow_official_semantics(ours):
    dest, arrays, _ = ours
    ds = ImageFolderDataset(dest, max_size=4, xflip=True, random_seed=5)
    idx = np.arange(7)
    np.random.RandomState(5).shuffle(idx)
    subset = np.sort(idx[:4])
    assert len(ds) == 8
    for i in range(8):
        raw = arrays[subset[i % 4]].transpose(2, 0, 1)
        expected = raw[:, :, ::-1] if i >= 4 else raw
        assert np.array_equal(ds[i][0], expected)


def test_content_hash_is_stable_and_tracks_content_and_view(tmp_path, ours):
    dest, arrays, labels = ours
    h = ImageFolderDataset(dest).content_hash()
    assert h == ImageFolderDataset(dest).content_hash()
    assert h != ImageFolderDataset(dest, xflip=True).content_hash()
    assert h != ImageFolderDataset(dest, max_size=3).content_hash()
    other = tmp_path / "other.zip"
    official_layout_zip(other, [*arrays[:-1], arrays[-1] ^ 1], labels)
    official_same = tmp_path / "same.zip"
    official_layout_zip(official_same, arrays, labels)
    assert ImageFolderDataset(other).content_hash() != ImageFolderDataset(official_same).content_hash()


def _read_in_child(args):
    ds, i = args
    return ds[i][0].sum()


def test_safe_after_fork(ours):
    dest, arrays, _ = ours
    ds = ImageFolderDataset(dest)
    ds[0]  # the parent opens the archive before forking
    with multiprocessing.get_context("fork").Pool(2) as pool:
        sums = pool.map(_read_in_child, [(ds, i % 7) for i in range(28)])
    assert sums == [int(arrays[i % 7].sum()) for i in range(28)]
