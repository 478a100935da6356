"""Full-state training checkpoints, written atomically with a commit marker last.

Layout: `<run>/checkpoints/ckpt-<KIMG:09.3f>/` holding `state.pt` (everything needed to continue
exactly: networks, optimizers, augment p and the ADA accumulator, counters, RNG states, sampler
position) and `meta.json` (human-readable summary, config hash), then `COMMIT` (sha256 and size of
`state.pt`). The folder is assembled under a temporary name and renamed only after `COMMIT` is on
disk, so a kill at any moment leaves either no new checkpoint or a complete one; `find_latest` also
verifies the recorded size. KIMG has three decimals so sub-kimg test runs never collide.

Everything in `state.pt` is a tensor, dict, list, number or string: it loads with
`torch.load(weights_only=True)`, which executes no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common.errors import BadInput
from stages.common.fileio import fsync_dir

CKPT_DIR = "checkpoints"
COMMIT = "COMMIT"
STATE = "state.pt"
META = "meta.json"
_NAME_RE = re.compile(r"^ckpt-(\d+\.\d{3})$")
FREE_SPACE_MARGIN = 1.5  # require this multiple of the estimated size to be free before writing


class CheckpointError(BadInput):
    """A checkpoint cannot be used for this run (incomplete, corrupt, other options), or could not be written."""


class OptionsMismatchError(CheckpointError):
    """The checkpoint belongs to a run with other options (names the differences)."""


class CorruptCheckpointError(CheckpointError):
    """A complete-looking checkpoint whose `state.pt` does not match the checksum in its marker."""


def checkpoint_name(cur_nimg: int) -> str:
    return f"ckpt-{cur_nimg / 1000:09.3f}"


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def is_complete(path: str | os.PathLike) -> bool:
    """A checkpoint counts only with its marker present and `state.pt` of the recorded size."""
    path = Path(path)
    if not _NAME_RE.match(path.name):
        return False
    try:
        marker = json.loads((path / COMMIT).read_text())
        return (path / STATE).stat().st_size == marker["size"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _kimg(path: Path) -> float:
    return float(_NAME_RE.match(path.name).group(1))  # type: ignore[union-attr]


def list_complete(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=_kimg)


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of `run_dir`; incomplete or temporary folders are ignored."""
    done = list_complete(run_dir)
    return done[-1] if done else None


# ----------------------------------------------------------------------------------------------------
# RNG states as tensors and lists, so weights_only loading accepts them.


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------
# Save / load.


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any], cur_nimg: int, meta: dict[str, Any],
                    keep: int) -> Path:
    """Write `state` as `checkpoints/ckpt-<KIMG>/` atomically, then keep only the newest `keep`.

    On any failure the temporary folder is removed, earlier checkpoints are untouched, and a
    `CheckpointError` is raised: a run must never continue believing it is protected when it is not.
    """
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(cur_nimg)
    if is_complete(final):
        return final  # e.g. SIGTERM right after the periodic checkpoint of the same step
    state = _to_cpu(state)
    needed = int(_tensor_bytes(state) * FREE_SPACE_MARGIN) + (1 << 20)
    free = shutil.disk_usage(root).free
    if free < needed:
        raise CheckpointError(f"not enough free space in {root}: {free / 2**20:.1f} MiB free, "
                              f"{needed / 2**20:.1f} MiB needed; the previous checkpoint is kept")
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with (tmp / STATE).open("wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        digest = hashlib.sha256()
        with (tmp / STATE).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        size = (tmp / STATE).stat().st_size
        _write_file(tmp / META, json.dumps(dict(meta, cur_nimg=cur_nimg, saved_at=time.time()), indent=2).encode())
        # The marker is the last file written: without it the folder is never considered.
        _write_file(tmp / COMMIT, json.dumps({"sha256": digest.hexdigest(), "size": size}).encode())
        fsync_dir(tmp)
        if final.exists():  # an incomplete leftover of a crashed attempt at the same step
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"writing checkpoint {final} failed ({type(exc).__name__}: {exc}); "
                              f"earlier checkpoints are intact") from exc
    rotate(run_dir, keep)
    return final


def rotate(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints, and stale temporary/incomplete folders
    older than the newest complete one. Runs only after a successful commit."""
    done = list_complete(run_dir)
    removed = done[:-keep] if keep > 0 else []
    newest = done[-1] if done else None
    root = Path(run_dir) / CKPT_DIR
    for p in root.iterdir() if root.is_dir() else []:
        if p.is_dir() and p not in done and newest is not None and p.name.startswith(".ckpt-"):
            removed.append(p)  # temporary folder of a killed writer
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def set_aside_newer(run_dir: str | os.PathLike, restored: str | os.PathLike) -> Path | None:
    """Move checkpoints newer than `restored` into `checkpoints/abandoned-<time>/`; returns that folder.

    Resuming from an older checkpoint starts a new trajectory in the same run folder. Left in place,
    the newer checkpoints of the old trajectory would outrank the new ones: rotation would delete
    each new checkpoint as soon as it is written, and `latest` would point at the old trajectory.
    """
    newer = [p for p in list_complete(run_dir) if _kimg(p) > _kimg(Path(restored))]
    if not newer:
        return None
    dest = Path(run_dir) / CKPT_DIR / time.strftime("abandoned-%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in newer:
        os.replace(p, dest / p.name)
    fsync_dir(dest.parent)
    return dest


def share_sums(saved: Any, rank: int, world: int) -> dict[str, torch.Tensor]:
    """This process's share of per-process partial sums saved by a run of any process count.

    Same count: its own. Otherwise the sums of all saved processes go to rank 0 and the others start
    empty; the cross-process reduction then gives the same totals as before.
    """
    parts = saved if isinstance(saved, list) else [saved]  # checkpoints before per-process saving: one dict
    if len(parts) == world:
        return parts[rank]
    if rank != 0:
        return {}
    total: dict[str, torch.Tensor] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total[k] + v if k in total else v.clone()
    return total


def share_loss_state(saved: list[dict[str, torch.Tensor]], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This process's loss state (running means such as the path-length mean): its own, else each entry's mean
    over the saved processes."""
    if len(saved) == world:
        return saved[rank]
    return {k: torch.stack([part[k] for part in saved]).mean(dim=0) for k in saved[0]} if saved else {}


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The human-readable summary of a checkpoint ({} when it cannot be read)."""
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of a complete checkpoint; `verify` re-checks the sha256 recorded in COMMIT.

    A file that fails the checksum, holds a global the safe loader refuses, or does not parse is a
    `CorruptCheckpointError` (so `load_newest_intact` can fall back to an older one)."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path}: not a complete checkpoint (no {COMMIT} marker or truncated {STATE})")
    marker = json.loads((path / COMMIT).read_text())
    if verify:
        digest = hashlib.sha256()
        with (path / STATE).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        if digest.hexdigest() != marker["sha256"]:
            raise CorruptCheckpointError(f"{path / STATE}: checksum does not match {COMMIT}; the file is corrupt")
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
        meta = json.loads((path / META).read_text())
    except Exception as exc:  # weights_only refusals (UnpicklingError), truncation, bad JSON: all unusable
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch's refusal names the global on a later line ("Unsupported global: GLOBAL datetime.date ...").
        why = next((line for line in lines if "Unsupported global" in line), lines[0])[:300]
        raise CorruptCheckpointError(f"{path}: cannot be loaded safely ({type(exc).__name__}: {why})") from None
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{path}: not a training checkpoint of this project")
    return state, meta


def load_newest_intact(
    run_dir: str | os.PathLike,
    newest: str | os.PathLike,
    apply: Callable[[Path, dict[str, Any], dict[str, Any]], None],
) -> tuple[Path, dict[str, Any], list[str]]:
    """Load `newest` and `apply(path, state, meta)` it; when either fails (bit rot, a disk that lied about
    fsync, a refused global, tensors of other shapes) try the next older complete checkpoint.
    Returns (path, meta, [reasons for the skipped ones]). `OptionsMismatchError` is not a fallback case."""
    newest = Path(newest)
    candidates = [p for p in reversed(list_complete(run_dir)) if _kimg(p) < _kimg(newest)]
    skipped: list[str] = []
    for path in [newest, *candidates]:
        try:
            state, meta = load_checkpoint(path)
            apply(path, state, meta)
        except OptionsMismatchError:
            raise
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        return path, meta, skipped
    raise CheckpointError("no intact checkpoint to resume from: " + "; ".join(skipped))


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load that names every missing, unexpected or differently shaped tensor."""
    from models.serialization.snapshot import StateMismatchError, load_state_strict

    try:
        load_state_strict(module, state, what)
    except StateMismatchError as exc:
        raise CheckpointError(str(exc)) from exc
