"""A sweep's record: its id and the state of each point, in `reports/sweeps/<sweep>/sweep.json`.

The record is what lets the same command, run again after a crash, a reboot or `kill -9` at any moment,
finish what is left: it is rewritten atomically (a temporary file renamed over the old one) after every
change of state, so it always holds either the state before a step or the state after it.

Point states: `pending` (not started) -> `running` (its `dvc exp run` started, maybe killed) -> `done`
(its DVC experiment exists and its quality is read). `logged` says whether MLflow holds the point's run
with its params, quality and fakes; a point done while MLflow was away is logged by the next execution.

The id is derived from what defines the sweep: the grid, the metric, the target stage, the git commit the
experiments start from, and the params outside the grid (the swept keys are left out because each point
leaves its values in the workspace's params.yaml). Run the same command again: same id, same record.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.common.errors import BadInput
from stages.common.fileio import write_json_atomic

RECORD_NAME = "sweep.json"
SWEEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")  # a folder name and a git ref component
PENDING, RUNNING, DONE = "pending", "running", "done"


def without_keys(params: dict[str, Any], dotted: list[str]) -> dict[str, Any]:
    """A deep copy of `params` without the dotted keys (e.g. `train.gamma`)."""
    out = json.loads(json.dumps(params, default=str))
    for key in dotted:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def derive_sweep_id(grid: dict[str, list[str]], metric: str, target: str, params: dict[str, Any],
                    baseline: str | None) -> str:
    """`sweep-<12 hex>`: the same for the same grid, metric, target, base commit and params outside the grid."""
    spec = {"grid": grid, "metric": metric, "target": target, "baseline": baseline,
            "params": without_keys(params, list(grid))}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return f"sweep-{digest[:12]}"


def check_sweep_id(sweep_id: str) -> str:
    if not SWEEP_ID.match(sweep_id) or ".." in sweep_id or sweep_id.endswith((".", ".lock")):
        raise BadInput(f"--sweep-id {sweep_id!r}: use letters, digits, '.', '_' and '-' (up to 81), e.g. gamma-2024w07")
    return sweep_id


def point_name(values: dict[str, str]) -> str:
    """What a point varies, short: `gamma=0.1,aug=ada` (the MLflow run name)."""
    return ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in values.items())


def point_key(values: dict[str, str]) -> str:
    """What a point sets, in full: `train.gamma=0.1,train.aug=ada`."""
    return ",".join(f"{k}={v}" for k, v in values.items())


class SweepRecord:
    """The JSON record of one sweep; every `save()` replaces the file atomically."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    # --------------------------------------------------------------------------------------- open
    @classmethod
    def open(cls, outdir: Path, sweep_id: str, grid: dict[str, list[str]], points: list[dict[str, str]],
             metric: str, target: str, baseline: str | None) -> SweepRecord:
        """The record in `outdir`, or a new one with every point pending. A record whose grid, metric or
        target differ from these (a reused --sweep-id) is bad input rather than silently mixed."""
        path = outdir / RECORD_NAME
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise BadInput(f"{path}: not a sweep record ({exc}); move it away to start this sweep again") \
                    from None
            for key, value in (("grid", grid), ("metric", metric), ("target", target)):
                if data.get(key) != value:
                    raise BadInput(f"sweep {sweep_id} was started with {key} {data.get(key)!r}, not {value!r}; "
                                   f"give another --sweep-id (or none, for one derived from the grid)")
            record = cls(path, data)
            record.data["executions"] = int(data.get("executions", 0)) + 1
        else:
            outdir.mkdir(parents=True, exist_ok=True)
            record = cls(path, {
                "sweep": sweep_id, "grid": grid, "metric": metric, "target": target, "baseline": baseline,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "executions": 1, "state": RUNNING,
                "mlflow": {"parent_run_id": None},
                "points": [{"index": i, "key": point_key(p), "name": point_name(p), "values": p,
                            "experiment": f"{sweep_id}-{i}", "state": PENDING, "exp_runs": 0, "run_id": None,
                            "quality": None, "files": {}, "logged": False} for i, p in enumerate(points)],
                "best": None, "registered": None, "not_logged": [],
            })
        record.data["state"] = RUNNING
        record.save()
        return record

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(self.path, self.data)

    # --------------------------------------------------------------------------------------- access
    @property
    def sweep_id(self) -> str:
        return self.data["sweep"]

    @property
    def outdir(self) -> Path:
        return self.path.parent

    @property
    def points(self) -> list[dict[str, Any]]:
        return self.data["points"]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.points)

    def update(self, point: dict[str, Any], **changes: Any) -> None:
        point.update(changes)
        self.save()

    def set(self, **changes: Any) -> None:
        self.data.update(changes)
        self.save()
