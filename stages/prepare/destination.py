"""Atomic, deterministic dataset destinations (a ZIP archive or a folder).

Everything is written to a hidden temporary sibling of the destination and only moved into place
by ``commit()`` (fsync, then ``os.replace``/rename), so a crash or kill at any point leaves either
the previous dataset or the new complete one, never a half-written archive. The official tool
writes straight into the destination and leaves a valid-looking partial ZIP behind.

ZIP entries carry a fixed timestamp and attributes and are written in index order, so the same
images give a byte-identical archive.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import zipfile
from pathlib import Path

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # earliest DOS timestamp: fixed so archives are reproducible


def archive_name(index: int) -> str:
    """Official layout: 1000 images per folder, ``00000/img00000000.png``."""
    return f"{index // 1000:05d}/img{index:08d}.png"


def _tmp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(dest: Path) -> list[str]:
    """Delete temp outputs left by killed runs (their pid, encoded in the name, is gone)."""
    removed = []
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if not entry.name.startswith(_tmp_prefix(dest)):
            continue
        pid_text = entry.name[len(_tmp_prefix(dest)) :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue  # a concurrent run (or this one) still owns it
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsync'd
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Destination:
    """Common interface: ``add(name, data)`` then ``commit()``; ``abort()`` discards everything."""

    def __init__(self, dest: str | os.PathLike) -> None:
        self.dest = Path(dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dest)
        self.tmp = self.dest.parent / f"{_tmp_prefix(self.dest)}{os.getpid()}-{secrets.token_hex(4)}"

    def add(self, name: str, data: bytes | str) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


class ZipDestination(Destination):
    def __init__(self, dest: str | os.PathLike) -> None:
        super().__init__(dest)
        self._fh = open(self.tmp, "wb")  # noqa: SIM115 - lifetime spans add()/commit()
        self._zf: zipfile.ZipFile | None = zipfile.ZipFile(self._fh, "w", zipfile.ZIP_STORED, allowZip64=True)

    def add(self, name: str, data: bytes | str) -> None:
        assert self._zf is not None, "destination already closed"
        info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
        info.compress_type = zipfile.ZIP_STORED
        info.create_system = 3  # "unix", whatever OS wrote it
        info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
        self._zf.writestr(info, data)

    def commit(self) -> None:
        assert self._zf is not None, "destination already closed"
        self._zf.close()
        self._zf = None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.dest)
        _fsync_dir(self.dest.parent)

    def abort(self) -> None:
        if self._zf is not None:
            with contextlib.suppress(Exception):
                self._zf.close()
            self._zf = None
        with contextlib.suppress(Exception):
            self._fh.close()
        self.tmp.unlink(missing_ok=True)


class FolderDestination(Destination):
    """Folder output; an existing destination must be empty or a previous dataset (has dataset.json)."""

    def __init__(self, dest: str | os.PathLike) -> None:
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / "dataset.json").is_file())):
            raise FileExistsError(f"--dest {dest} exists and is not an empty folder or a previous dataset")
        super().__init__(dest)
        self.tmp.mkdir()

    def add(self, name: str, data: bytes | str) -> None:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())

    def commit(self) -> None:
        for sub in [p for p in self.tmp.rglob("*") if p.is_dir()]:
            _fsync_dir(sub)
        old = None
        if self.dest.exists():
            # Directories cannot be swapped atomically; move the old one aside first so the
            # destination name only ever points at a complete dataset (or, for an instant, nothing).
            old = self.dest.parent / f"{_tmp_prefix(self.dest)}{os.getpid()}-old"
            os.rename(self.dest, old)
        os.rename(self.tmp, self.dest)
        _fsync_dir(self.dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def open_destination(dest: str | os.PathLike) -> Destination:
    return ZipDestination(dest) if str(dest).lower().endswith(".zip") else FolderDestination(dest)


def write_atomic_text(path: str | os.PathLike, text: str) -> None:
    """Small text files (reports, metrics) by the same temp-fsync-replace rule."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
