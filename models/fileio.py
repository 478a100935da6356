"""Atomic file writes: a file appears under its final name only when it is complete.

A snapshot cut by a crash, a half-downloaded detector, a `parity.json` read by DVC while it is being
written: every file that matters is written to a temporary sibling, flushed and fsynced, then renamed
over its final name (`os.replace`, atomic on one filesystem), and the directory is fsynced so the rename
survives a power cut. This is the one implementation; it lives here, in the lowest layer that writes
files (snapshots, the download cache), and the stages import it through `stages.common.fileio`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB blocks (weights and detectors are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode `open()` would have given a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable; silently skipped where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block succeeds it is fsynced and renamed over
    `path`, when it raises it is removed and `path` is untouched.

    `mode`: file permissions of the result (default: what `open()` would give, not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # the writer may have closed its handle without fsync
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """`open(path, mode)` whose result replaces `path` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Strict JSON (DVC, jq read it): non-finite floats become null, numpy/torch scalars plain numbers."""
    text = json.dumps(_finite(obj), indent=indent, sort_keys=sort_keys, default=_json_default, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return _finite(value.item())
    if hasattr(value, "tolist"):  # small numpy arrays in reports
        return _finite(value.tolist())
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
