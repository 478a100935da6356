"""Training/metrics dataset over a prepared ZIP or folder (ours or the official layout).

Semantics follow the official ``training/dataset.py`` so training code written for it works
unchanged: images are all files with an image extension, sorted by name; labels come from
``dataset.json`` (integers become one-hot float32 vectors of size max+1); ``max_size`` picks a
random subset with ``np.random.RandomState(random_seed)`` and sorts it; ``xflip`` doubles the
dataset with a mirrored second half.

Differences that matter for reliability: the ZIP is opened lazily and re-opened in every process
(keyed by ``os.getpid()``), because a handle inherited through fork shares its file offset with
the parent and DataLoader workers then read each other's bytes ("Bad CRC-32"); and
``content_hash()`` identifies the content for caching metric statistics.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

try:  # a few times faster than Pillow for PNG; optional
    import pyspng  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    pyspng = None

PIL.Image.init()
_IMAGE_EXTENSIONS = frozenset(PIL.Image.EXTENSION)


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


class ImageFolderDataset:
    """Map-style dataset: ``ds[i] -> (uint8 [C, H, W] array, float32 label vector or empty array)``."""

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int | None = None,  # require this resolution; None = whatever the data has
        max_size: int | None = None,  # random subset of this many images (before xflip)
        use_labels: bool = False,  # False = label_dim 0
        xflip: bool = False,  # double the dataset with x-mirrored copies (after max_size)
        random_seed: int = 0,  # seed of the max_size subset
    ) -> None:
        self._path = str(path)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._max_size = max_size
        self._use_labels = use_labels
        self._xflip_enabled = xflip
        self._random_seed = random_seed
        if os.path.isdir(self._path):
            self._type = "dir"
            root = Path(self._path)
            self._all_names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        elif _ext(self._path) == ".zip":
            self._type = "zip"
            self._all_names = set(self._get_zip().namelist())
        else:
            raise OSError(f"dataset path must be a directory or a .zip: {self._path}")
        self._image_names = sorted(n for n in self._all_names if _ext(n) in _IMAGE_EXTENSIONS)
        if not self._image_names:
            raise OSError(f"no image files found in {self._path}")
        self._name = os.path.splitext(os.path.basename(self._path.rstrip("/")))[0]
        first = self._load_raw_image(0)
        self._raw_shape = [len(self._image_names), *first.shape]  # [N, C, H, W]
        if resolution is not None and (self._raw_shape[2] != resolution or self._raw_shape[3] != resolution):
            raise OSError(
                f"{self._path}: images are {self._raw_shape[3]}x{self._raw_shape[2]}, "
                f"expected {resolution}x{resolution}"
            )
        self._raw_labels: np.ndarray | None = None

        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])
        self._num_images = int(self._raw_idx.size)
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    # -- file access ---------------------------------------------------------------------------

    def _get_zip(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            # Never reuse a handle opened by another process (fork): re-open in this one.
            self._zip = zipfile.ZipFile(self._path)
            self._zip_pid = os.getpid()
        return self._zip

    def _read(self, name: str) -> bytes:
        if self._type == "dir":
            with open(os.path.join(self._path, name), "rb") as fh:
                return fh.read()
        return self._get_zip().read(name)

    def close(self) -> None:
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip = None
        self._zip_pid = None

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _zip=None, _zip_pid=None)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn modules down
            self.close()

    # -- decoding --------------------------------------------------------------------------------

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        name = self._image_names[raw_idx]
        data = self._read(name)
        if pyspng is not None and _ext(name) == ".png":
            image = pyspng.load(data)
        else:
            with PIL.Image.open(io.BytesIO(data)) as img:
                image = np.array(img)
        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # [H, W] -> [H, W, 1]
        return image.transpose(2, 0, 1)  # [H, W, C] -> [C, H, W]

    def _load_raw_labels(self) -> np.ndarray | None:
        if "dataset.json" not in self._all_names:
            return None
        meta = json.loads(self._read("dataset.json"))
        entries = meta.get("labels")
        if entries is None:
            return None
        by_name = dict(entries)
        missing = [n for n in self._image_names if n not in by_name]
        if missing:
            raise OSError(f"{self._path}: dataset.json has no label for {len(missing)} images, e.g. {missing[0]}")
        labels = np.array([by_name[n] for n in self._image_names])
        labels = labels.astype({1: np.int64, 2: np.float32}[labels.ndim])
        if labels.dtype == np.int64 and labels.size and labels.min() < 0:
            raise OSError(f"{self._path}: negative class label in dataset.json")
        return labels

    def _get_raw_labels(self) -> np.ndarray:
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            self._raw_labels = labels
        return self._raw_labels

    # -- dataset protocol ----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._raw_idx.size)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        image = self._load_raw_image(int(self._raw_idx[idx]))
        if list(image.shape) != self.image_shape or image.dtype != np.uint8:
            raise OSError(
                f"{self._image_names[int(self._raw_idx[idx])]}: {image.dtype} {list(image.shape)}, "
                f"dataset is uint8 {self.image_shape}"
            )
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return np.ascontiguousarray(image), self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    # -- properties ------------------------------------------------------------------------------

    @property
    def num_images(self) -> int:
        """Distinct images in use (after max_size, before the x-flip doubling)."""
        return self._num_images

    @property
    def name(self) -> str:
        return self._name

    @property
    def image_shape(self) -> list[int]:
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        return self.image_shape[0]

    @property
    def resolution(self) -> int:
        if self.image_shape[1] != self.image_shape[2]:
            raise ValueError(f"{self._path}: images are not square: {self.image_shape}")
        return self.image_shape[1]

    @property
    def label_shape(self) -> list[int]:
        raw = self._get_raw_labels()
        if raw.dtype == np.int64:
            return [int(raw.max()) + 1] if raw.size else [0]
        return list(raw.shape[1:])

    @property
    def label_dim(self) -> int:
        return self.label_shape[0]

    @property
    def has_labels(self) -> bool:
        return any(x != 0 for x in self.label_shape)

    @property
    def image_names(self) -> list[str]:
        return list(self._image_names)

    # -- identity ----------------------------------------------------------------------------------

    def content_hash(self) -> str:
        """sha256 of what a sample can return: image names and CRC-32s, labels file, and the view options.

        For a ZIP the CRCs come from the central directory (no decompression); for a folder each
        file is read once. Two datasets with the same hash yield the same samples, so metric
        statistics (e.g. FID reference features) can be cached under it.
        """
        h = hashlib.sha256(b"stylegan2-dataset-v1\n")
        names = [
            *self._image_names,
            *(["dataset.json"] if self._use_labels and "dataset.json" in self._all_names else []),
        ]
        if self._type == "zip":
            infos = {i.filename: i for i in self._get_zip().infolist()}
            crcs = {n: infos[n].CRC for n in names}
        else:
            crcs = {n: zlib.crc32(self._read(n)) for n in names}
        for n in names:
            h.update(f"{n}\0{crcs[n]:08x}\n".encode())
        h.update(json.dumps([self._max_size, self._xflip_enabled, self._random_seed, self._use_labels]).encode())
        return h.hexdigest()
