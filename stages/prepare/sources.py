"""Input dataset sources, recognised automatically from the path.

A source yields ``Task`` records lazily, in the official tool's order, so the conversion can
stream: only names (and for CIFAR one 10k-image batch) are ever held in memory, never pixels of
the whole dataset. Problems that are visible without decoding (unlabelled files in a labelled
folder, label entries that point at no file, files that are not images by extension) are
reported through ``issues`` as the source is walked.

Kinds and how they are recognised:

* ``folder``   - a directory (recursive); labels from ``dataset.json`` at its root if present.
* ``zip``      - a ``.zip`` of images (for example an official dataset archive); same label rule.
* ``lmdb``     - a directory holding ``data.mdb`` (LSUN layout: values are encoded images).
* ``cifar10``  - ``cifar-10-python.tar.gz`` (the five ``data_batch_*``; labels 0..9).
* ``cifar100`` - ``cifar-100-python.tar.gz`` (``train``; fine labels 0..99).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.dataset import LABELS_FILE, ArchiveReader, DatasetError, is_image_name, label_problem, parse_labels


class SourceError(DatasetError):
    """The source as a whole cannot be read (missing, unknown kind, malformed labels file, broken archive)."""


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # name in the source, used in the report
    kind: str  # payload kind understood by images.read_payload
    payload: Any
    label: int | None


# reason, name, detail, severity ("skip" = an input that will not be written, "ignored" = not an input)
IssueSink = Callable[[str, str, str, str], None]


@dataclasses.dataclass
class Source:
    kind: str
    path: str
    total: int  # number of candidate inputs (for the progress bar)
    labelled: bool
    tasks: Callable[[IssueSink], Iterator[Task]]


def detect_kind(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        return "lmdb" if (p / "data.mdb").is_file() else "folder"
    if not p.exists():
        raise SourceError(f"source not found: {path}")
    if p.name == "data.mdb":
        return "lmdb"
    if p.name == "cifar-10-python.tar.gz":
        return "cifar10"
    if p.name == "cifar-100-python.tar.gz":
        return "cifar100"
    if p.suffix.lower() == ".zip" or zipfile.is_zipfile(p):
        return "zip"
    if p.name.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            return _tar_kind(p)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise SourceError(f"{path}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from None
    raise SourceError(
        f"unknown source kind: {path} (expected an image folder, a .zip, an LMDB directory "
        "with data.mdb, or cifar-10-python.tar.gz / cifar-100-python.tar.gz)"
    )


def _tar_kind(p: Path) -> str:
    with tarfile.open(p) as tar:
        for member in tar:
            if member.name.startswith("cifar-10-batches-py/"):
                return "cifar10"
            if member.name.startswith("cifar-100-python/"):
                return "cifar100"
    raise SourceError(f"{p}: a tar archive without cifar-10-batches-py/ or cifar-100-python/")


def open_source(path: str) -> Source:
    kind = detect_kind(path)
    return {"folder": _folder, "zip": _zip, "lmdb": _lmdb, "cifar10": _cifar, "cifar100": _cifar}[kind](path, kind)


# ---------------------------------------------------------------------------------------------
# Labels shared by folder and ZIP sources.


def _label_tasks(
    names: list[str], labels: dict[str, Any] | None, make: Callable[[str, int | None], Task], issues: IssueSink
) -> Iterator[Task]:
    """Attach labels to image names; unlabelled or badly labelled images are skipped, not guessed."""
    if labels is not None:
        present = set(names)
        for name in sorted(labels):
            if name not in present:
                issues("label_without_image", name, "dataset.json names a file that is not an image here", "skip")
    for name in names:
        label: int | None = None
        if labels is not None:
            if name not in labels:
                # The official tool turns the whole dataset unlabelled when one file lacks a label.
                issues("missing_label", name, "labelled dataset but no entry in dataset.json", "skip")
                continue
            value = labels[name]
            problem = label_problem(value)
            if problem is not None:
                issues("bad_label", name, problem, "skip")
                continue
            label = value
        yield make(name, label)


# ---------------------------------------------------------------------------------------------


def _folder(path: str, kind: str) -> Source:
    root = Path(path)
    files: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for fname in filenames:
            files.append(os.path.relpath(os.path.join(dirpath, fname), root).replace(os.sep, "/"))
    # The official tool sorts pathlib.Path objects, which compare component by component
    # ("a/b.png" < "a-c.png"), not as plain strings; sorting by parts keeps its order.
    files.sort(key=lambda n: n.split("/"))
    images = [f for f in files if is_image_name(f)]
    others = [f for f in files if not is_image_name(f) and f != LABELS_FILE]
    labels = None
    if (root / LABELS_FILE).is_file():
        labels = parse_labels((root / LABELS_FILE).read_bytes(), str(root / LABELS_FILE))

    def tasks(issues: IssueSink) -> Iterator[Task]:
        for name in others:
            issues("not_an_image_extension", name, "extension is not an image type; ignored", "ignored")
        yield from _label_tasks(images, labels, lambda n, lab: Task(n, "path", str(root / n), lab), issues)

    return Source(kind, path, len(images), labels is not None, tasks)


def _zip(path: str, kind: str) -> Source:
    reader = ArchiveReader(path)
    names = reader.names()
    labels = parse_labels(reader.read(LABELS_FILE), f"{path}:{LABELS_FILE}") if LABELS_FILE in names else None
    reader.close()
    images = [n for n in names if is_image_name(n)]
    others = [n for n in names if not is_image_name(n) and n != LABELS_FILE]
    zpath = os.path.abspath(path)

    def tasks(issues: IssueSink) -> Iterator[Task]:
        for name in others:
            issues("not_an_image_extension", name, "extension is not an image type; ignored", "ignored")
        yield from _label_tasks(images, labels, lambda n, lab: Task(n, "zip", (zpath, n), lab), issues)

    return Source(kind, path, len(images), labels is not None, tasks)


def _lmdb(path: str, kind: str) -> Source:
    import lmdb  # optional dependency (the `data` extra)

    db_dir = str(Path(path).parent) if Path(path).name == "data.mdb" else path

    def open_env() -> Any:
        return lmdb.open(db_dir, readonly=True, lock=False, readahead=False, max_readers=1)

    try:
        env = open_env()
    except lmdb.Error as exc:
        raise SourceError(f"{path}: cannot open LMDB ({exc})") from None
    with env.begin(write=False) as txn:
        total = int(txn.stat()["entries"])
    env.close()

    def tasks(issues: IssueSink) -> Iterator[Task]:
        env = open_env()
        try:
            with env.begin(write=False) as txn:
                for key, value in txn.cursor():  # key order, as the official tool iterates
                    name = key.decode("utf-8", errors="backslashreplace")
                    yield Task(name, "bytes", bytes(value), None)
        finally:
            env.close()

    return Source(kind, path, total, False, tasks)


# ---------------------------------------------------------------------------------------------
# CIFAR pickles are loaded with an allow-list: a tarball from the internet must not be able to
# run code through pickle. Only the globals numpy needs to rebuild arrays are permitted.

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"blocked global {module}.{name} in CIFAR pickle")
        return super().find_class(module, name)


def load_cifar_batch(fileobj: Any) -> dict[str, Any]:
    """Load one CIFAR batch dict; keys are normalised to str (real files pickle Python 2 str keys)."""
    raw = _SafeUnpickler(fileobj, encoding="bytes").load()
    if not isinstance(raw, dict):
        raise SourceError("CIFAR batch is not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar(path: str, kind: str) -> Source:
    if kind == "cifar10":
        members = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
        label_key, per_batch, num_classes = "labels", 10000, 10
    else:
        members = ["cifar-100-python/train"]
        label_key, per_batch, num_classes = "fine_labels", 50000, 100

    def tasks(issues: IssueSink) -> Iterator[Task]:
        try:
            yield from _cifar_tasks(path, members, label_key, num_classes)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # disk/permission problems keep their own exit code
            raise SourceError(f"{path}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from None
        except pickle.UnpicklingError as exc:
            raise SourceError(f"{path}: refused to unpickle a CIFAR batch ({exc})") from None

    return Source(kind, path, per_batch * len(members), True, tasks)


def _cifar_tasks(path: str, members: list[str], label_key: str, num_classes: int) -> Iterator[Task]:
    with tarfile.open(path, "r:*") as tar:
        for member in members:
            try:
                fh = tar.extractfile(member)
            except KeyError:
                raise SourceError(f"{path}: missing {member}") from None
            if fh is None:
                raise SourceError(f"{path}: {member} is not a file")
            with fh:
                batch = load_cifar_batch(fh)
            data = np.asarray(batch.get("data"))
            labels = np.asarray(batch.get(label_key))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                raise SourceError(f"{path}:{member}: expected uint8 data [N, 3072] and N labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise SourceError(f"{path}:{member}: labels outside 0..{num_classes - 1}")
            images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, C, H, W] -> [N, H, W, C]
            base = member.rsplit("/", 1)[1]
            for i in range(len(images)):
                yield Task(f"{base}[{i}]", "array", np.ascontiguousarray(images[i]), int(labels[i]))
            del batch, data, images
