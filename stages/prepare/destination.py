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

from stages.common.dataset import LABELS_FILE
from stages.common.errors import BadInput
from stages.common.fileio import fsync_dir

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # earliest DOS timestamp: fixed so archives are reproducible


class DestinationError(BadInput):
    """--dest names something this project did not write."""


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
        fsync_dir(self.dest.parent)

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
        check_replaceable(dest)
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
            fsync_dir(sub)
        old = None
        if self.dest.exists():
            # Directories cannot be swapped atomically; move the old one aside first so the
            # destination name only ever points at a complete dataset (or, for an instant, nothing).
            old = self.dest.parent / f"{_tmp_prefix(self.dest)}{os.getpid()}-old"
            os.rename(self.dest, old)
        os.rename(self.tmp, self.dest)
        fsync_dir(self.dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_replaceable(dest: str | os.PathLike) -> None:
    """Refuse a destination that holds something other than a dataset: we never replace a user's file."""
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if str(dest).lower().endswith(".zip"):
        if dest.is_file() and zipfile.is_zipfile(dest):
            with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(dest) as zf:
                if LABELS_FILE in zf.namelist():
                    return
        raise DestinationError(f"--dest {dest} exists and is not a dataset ZIP (no {LABELS_FILE}); it is not "
                               "replaced: choose another --dest or move it away")
    if dest.is_dir() and (not any(dest.iterdir()) or (dest / LABELS_FILE).is_file()):
        return
    raise DestinationError(f"--dest {dest} exists and is not an empty folder or a dataset; it is not replaced: "
                           "choose another --dest or move it away")


def open_destination(dest: str | os.PathLike) -> Destination:
    return ZipDestination(dest) if str(dest).lower().endswith(".zip") else FolderDestination(dest)
