"""File I/O every stage shares: atomic writes (one implementation, in `models.fileio`) and
JSON-lines logs that a crash may have cut short."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.fileio import (
    atomic_open,
    atomic_path,
    fsync_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

__all__ = [
    "append_jsonl",
    "atomic_open",
    "atomic_path",
    "filter_jsonl",
    "fsync_dir",
    "read_jsonl",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def append_jsonl(path: str | Path, record: dict[str, Any]) -> str:
    """Append one JSON line; returns it. One `write()` of a short line in append mode is not interleaved
    with other writers, and a crash can cut at most this line (readers skip it)."""
    line = json.dumps(record)
    with open(path, "a") as fh:
        fh.write(line + "\n")
    return line


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a line cut by a crash, or one that is not an object, is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def filter_jsonl(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite a JSON-lines file atomically with only the records `keep` accepts (a line cut by a crash
    is dropped too); returns how many lines were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [json.dumps(r) for r in read_jsonl(path) if keep(r)]
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)
