"""Prepared datasets: the archive reader, the `dataset.json` parser and the training/metrics dataset.

`ImageFolderDataset` follows the official `training/dataset.py` so that code written for it works
unchanged: images are all files with an image extension, sorted by name; labels come from
`dataset.json` (integers become one-hot float32 vectors of size max+1); `max_size` picks a random subset
with `np.random.RandomState(random_seed)` and sorts it; `xflip` doubles the dataset with a mirrored half.

What differs, for reliability:
- `ArchiveReader` opens a ZIP lazily and again in every process (keyed by `os.getpid()`): a handle
  inherited through fork shares its file offset with the parent, and DataLoader workers then read each
  other's bytes ("Bad CRC-32"). The prepare and validate stages read archives through it too.
- A dataset is checked when it is opened, by the rules `validate` applies: square images with a
  power-of-two side of at least `MIN_RESOLUTION`, 1 or 3 channels, integer labels in [0, MAX_CLASSES)
  for every image. A bad archive or layout is a one-line `DatasetError`, not a crash hours later.
- `content_hash()` identifies the content, for caching metric statistics and for resume checks.
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

from stages.common.errors import BadInput

try:  # a few times faster than Pillow for PNG; optional
    import pyspng  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    pyspng = None

PIL.Image.init()
IMAGE_EXTENSIONS = frozenset(PIL.Image.EXTENSION)  # the official selection rule
LABELS_FILE = "dataset.json"
MIN_RESOLUTION = 4           # the networks start at 4x4
MAX_RESOLUTION = 2**15
MAX_CLASSES = 2**16          # a class embedding of this many rows is already ~33M parameters at w_dim 512
POW2_SIDES = tuple(2**k for k in range(2, 16))


class DatasetError(BadInput):
    """A dataset archive or folder cannot be used (unreadable, wrong layout, bad labels); names the file."""


def is_image_name(name: str) -> bool:
    """True when the file extension is one Pillow registers (the official selection rule)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class ArchiveReader:
    """A folder or a ZIP archive, read by member name; safe to use after fork and to pickle."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        if os.path.isdir(self.path):
            self.kind = "dir"
        elif os.path.isfile(self.path):
            self.kind = "zip"
            self._open_zip()  # fail now, naming the file, rather than in a worker
        elif os.path.exists(self.path):
            raise DatasetError(f"{self.path}: not a file or folder")
        else:
            raise DatasetError(f"dataset not found: {self.path}")

    def _open_zip(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            # Never reuse a handle opened by another process (fork): re-open in this one.
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as exc:
                raise DatasetError(f"{self.path}: not a readable ZIP archive ({exc}); prepare it with "
                                   "`python -m stages.prepare`") from None
            self._zip_pid = os.getpid()
        return self._zip

    def names(self) -> list[str]:
        """Every member (files only), sorted."""
        if self.kind == "dir":
            root = Path(self.path)
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        return sorted(i.filename for i in self._open_zip().infolist() if not i.is_dir())

    def read(self, name: str) -> bytes:
        if self.kind == "dir":
            with open(os.path.join(self.path, name), "rb") as fh:
                return fh.read()
        try:
            return self._open_zip().read(name)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise DatasetError(f"{self.path}: member {name} is corrupt ({exc})") from None

    def crc32(self, name: str) -> int:
        """The member's CRC-32: from the ZIP directory without reading it, computed for a folder."""
        if self.kind == "zip":
            return self._open_zip().getinfo(name).CRC
        return zlib.crc32(self.read(name))

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


def parse_labels(text: str | bytes, where: str) -> dict[str, Any] | None:
    """`{"labels": [[name, label], ...] | null}` -> {name: label} or None; malformed files are DatasetErrors.

    Labels are returned as written (ints for classes, lists for float vectors); `check_label` judges them."""
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: malformed JSON: {exc}") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise DatasetError(f'{where}: expected an object with a "labels" key')
    entries = meta["labels"]
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise DatasetError(f'{where}: "labels" must be a list of [name, label] pairs or null')
    labels: dict[str, Any] = {}
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DatasetError(f"{where}: labels[{i}] is not a [name, label] pair: {entry!r}")
        labels[entry[0]] = entry[1]
    return labels


def label_problem(value: Any) -> str | None:
    """Why `value` is not a usable class label (None when it is): an integer in [0, MAX_CLASSES)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"label must be an integer class, got {value!r}"
    if not 0 <= value < MAX_CLASSES:
        return f"label {value} is outside [0, {MAX_CLASSES}) (at most {MAX_CLASSES} classes)"
    return None


def geometry_problem(channels: int, height: int, width: int) -> str | None:
    """Why images of this shape cannot be trained on (None when they can); the rules of `validate`."""
    if width != height:
        return f"images are {width}x{height}, not square; prepare with --transform center-crop"
    if width not in POW2_SIDES:
        return (f"image side {width} is not a power of two in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]; "
                "prepare with --width/--height")
    if channels not in (1, 3):
        return f"images have {channels} channels; 1 (grayscale) or 3 (RGB) expected"
    return None


class ImageFolderDataset:
    """Map-style dataset: `ds[i] -> (uint8 [C, H, W] array, float32 label vector or empty array)`."""

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int | None = None,  # require this resolution; None = whatever the data has
        max_size: int | None = None,    # random subset of this many images (before xflip)
        use_labels: bool = False,       # False = label_dim 0
        xflip: bool = False,            # double the dataset with x-mirrored copies (after max_size)
        random_seed: int = 0,           # seed of the max_size subset
    ) -> None:
        self._path = str(path)
        self._reader = ArchiveReader(self._path)
        self._max_size = max_size
        self._use_labels = use_labels
        self._xflip_enabled = xflip
        self._random_seed = random_seed
        self._all_names = set(self._reader.names())
        self._image_names = sorted(n for n in self._all_names if is_image_name(n))
        if not self._image_names:
            raise DatasetError(f"no image files found in {self._path}")
        self._name = os.path.splitext(os.path.basename(self._path.rstrip("/")))[0]
        first = self._load_raw_image(0)
        self._raw_shape = [len(self._image_names), *first.shape]  # [N, C, H, W]
        problem = geometry_problem(*first.shape)
        if problem is not None:
            raise DatasetError(f"{self._path}: {problem}")
        if resolution is not None and self._raw_shape[2] != resolution:
            raise DatasetError(f"{self._path}: images are {self._raw_shape[3]}x{self._raw_shape[2]}, "
                               f"expected {resolution}x{resolution}")
        self._raw_labels: np.ndarray | None = None
        if use_labels:
            self._get_raw_labels()  # bad labels fail at open, not in a DataLoader worker

        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and self._raw_idx.size > max_size:
            np.random.RandomState(random_seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])
        self._num_images = int(self._raw_idx.size)
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def close(self) -> None:
        self._reader.close()

    # -- decoding --------------------------------------------------------------------------------

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        name = self._image_names[raw_idx]
        data = self._reader.read(name)
        try:
            if pyspng is not None and name.lower().endswith(".png"):
                image = pyspng.load(data)
            else:
                with PIL.Image.open(io.BytesIO(data)) as img:
                    image = np.array(img)
        except Exception as exc:  # decoders raise many types; the file is what is wrong
            raise DatasetError(f"{self._path}: {name} cannot be decoded ({type(exc).__name__}: {exc})") from None
        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # [H, W] -> [H, W, 1]
        return image.transpose(2, 0, 1)  # [H, W, C] -> [C, H, W]

    def _load_raw_labels(self) -> np.ndarray | None:
        if LABELS_FILE not in self._all_names:
            return None
        by_name = parse_labels(self._reader.read(LABELS_FILE), f"{self._path}: {LABELS_FILE}")
        if by_name is None:
            return None
        missing = [n for n in self._image_names if n not in by_name]
        if missing:
            raise DatasetError(f"{self._path}: {LABELS_FILE} has no label for {len(missing)} images, "
                               f"e.g. {missing[0]}")
        values = [by_name[n] for n in self._image_names]
        if all(isinstance(v, list) for v in values):  # float label vectors (official feature)
            try:
                labels = np.array(values, dtype=np.float32)
            except ValueError:
                raise DatasetError(f"{self._path}: {LABELS_FILE} label vectors differ in length") from None
            if labels.ndim != 2 or not np.isfinite(labels).all():
                raise DatasetError(f"{self._path}: {LABELS_FILE} label vectors must be finite and of one length")
            return labels
        for name, value in zip(self._image_names, values):
            problem = label_problem(value)
            if problem is not None:
                raise DatasetError(f"{self._path}: {LABELS_FILE}: {name}: {problem}")
        return np.array(values, dtype=np.int64)

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
            raise DatasetError(
                f"{self._path}: {self._image_names[int(self._raw_idx[idx])]} is {image.dtype} {list(image.shape)}, "
                f"the dataset is uint8 {self.image_shape}; run `python -m stages.validate` on it"
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
        return self.image_shape[1]  # square: checked at open

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
        names = [*self._image_names,
                 *([LABELS_FILE] if self._use_labels and LABELS_FILE in self._all_names else [])]
        for n in names:
            h.update(f"{n}\0{self._reader.crc32(n):08x}\n".encode())
        h.update(json.dumps([self._max_size, self._xflip_enabled, self._random_seed, self._use_labels]).encode())
        return h.hexdigest()
