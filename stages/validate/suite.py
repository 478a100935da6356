"""validate: a great-expectations suite over a prepared dataset's manifest.

    python -m stages.validate --dataset data/datasets/cats.zip [--out reports/validation.json]

The manifest is one row per image (name, width, height, channels, mode, label, pixel hash, decode
error), built by decoding every image of the ZIP or folder. The suite checks what training relies
on; a failed *critical* expectation makes the stage exit 1 so DVC/Prefect stop before training:

    critical: at least ``min_images`` images; every image decodes; unique names; one width, one
              height and one channel count; square, power-of-two side; channels 1 or 3; when
              labelled, every image has an integer label in [0, num_classes) and dataset.json
              names no missing file
    warning:  duplicate images (same decoded pixels) above ``max_duplicate_fraction`` (critical
              with ``fail_on_duplicates``); classes 0..num_classes-1 all present

``reports/validation.json`` (a DVC metric) holds flat numbers - num_images, num_classes,
resolution, duplicates, class balance, success - and one entry per expectation.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from stages.common.config import ConfigError, add_params_argument, config_from_args
from stages.prepare.destination import write_atomic_text
from stages.prepare.image_ops import is_image_name

log = logging.getLogger("stages.validate")


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    dataset: str = ""  # prepared dataset: .zip or folder
    out: str = "reports/validation.json"  # metrics file (DVC metric)
    num_classes: int | None = None  # expected class count; None = infer max label + 1
    min_images: int = 1  # fewer images is a critical failure
    max_duplicate_fraction: float = 0.01  # duplicates above this fail the (warning) expectation
    fail_on_duplicates: bool = False  # make the duplicate expectation critical
    workers: int = 0  # decode processes for the manifest; 0 = all cores

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("validate.dataset is required")
        if not self.out:
            raise ConfigError("validate.out is required")
        if self.num_classes is not None and self.num_classes <= 0:
            raise ConfigError("validate.num_classes must be positive")
        if self.min_images < 0:
            raise ConfigError("validate.min_images must be >= 0")
        if not 0.0 <= self.max_duplicate_fraction <= 1.0:
            raise ConfigError("validate.max_duplicate_fraction must be in [0, 1]")
        if self.workers < 0:
            raise ConfigError("validate.workers must be >= 0")


class ValidationFailed(RuntimeError):
    """A critical expectation failed; the summary is attached."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


# ---------------------------------------------------------------------------------------------
# Manifest

_ZIP: tuple[int, str, zipfile.ZipFile] | None = None  # per-process handle (never shared over fork)


def _read_member(path: str, name: str) -> bytes:
    global _ZIP
    if os.path.isdir(path):
        with open(os.path.join(path, name), "rb") as fh:
            return fh.read()
    if _ZIP is None or _ZIP[0] != os.getpid() or _ZIP[1] != path:
        _ZIP = (os.getpid(), path, zipfile.ZipFile(path))
    return _ZIP[2].read(name)


def _describe(args: tuple[str, str]) -> dict[str, Any]:
    """Decode one image: its geometry and a hash of its decoded pixels (identical images collide)."""
    import PIL.Image

    path, name = args
    row: dict[str, Any] = {
        "name": name,
        "width": 0,
        "height": 0,
        "channels": 0,
        "mode": "",
        "pixel_hash": "",
        "error": None,
    }
    try:
        with PIL.Image.open(io.BytesIO(_read_member(path, name))) as img:
            img.load()
            raw = img.tobytes()
            row.update(width=img.width, height=img.height, channels=len(img.getbands()), mode=img.mode)
            digest = hashlib.blake2b(f"{img.mode}{img.size}".encode(), digest_size=16)
            digest.update(raw)
            row["pixel_hash"] = digest.hexdigest()
    except Exception as exc:  # the manifest records the failure; the suite turns it into a verdict
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _list_dataset(path: str) -> tuple[list[str], dict[str, Any] | None, str | None]:
    """Image names, the labels mapping (or None) and a labels-file error, without decoding."""
    p = Path(path)
    if p.is_dir():
        names = sorted(q.relative_to(p).as_posix() for q in p.rglob("*") if q.is_file())
    elif p.is_file():
        try:
            with zipfile.ZipFile(p) as zf:
                names = sorted(zf.namelist())
        except zipfile.BadZipFile as exc:
            raise ConfigError(f"{path}: not a readable ZIP ({exc})") from None
    else:
        raise ConfigError(f"dataset not found: {path}")
    labels: dict[str, Any] | None = None
    labels_error = None
    if "dataset.json" in names:
        try:
            meta = json.loads(_read_member(str(p), "dataset.json"))
            entries = meta["labels"]
            labels = None if entries is None else {str(k): v for k, v in entries}
        except (ValueError, KeyError, TypeError) as exc:
            labels_error = f"dataset.json unreadable: {type(exc).__name__}: {exc}"
    return [n for n in names if is_image_name(n)], labels, labels_error


def build_manifest(path: str, workers: int = 0) -> tuple[Any, dict[str, Any]]:
    """Return (pandas DataFrame, facts) for the dataset at ``path``."""
    import pandas as pd

    names, labels, labels_error = _list_dataset(path)
    tasks = [(path, n) for n in names]
    workers = workers or len(os.sched_getaffinity(0))
    if workers > 1 and len(tasks) > 64:
        with multiprocessing.get_context().Pool(workers) as pool:
            rows = list(pool.imap(_describe, tasks, chunksize=32))
    else:
        rows = [_describe(t) for t in tasks]
    frame = pd.DataFrame(rows, columns=["name", "width", "height", "channels", "mode", "pixel_hash", "error"])
    if labels is not None:
        values = [labels.get(n) for n in names]
        # Non-integer labels become NaN-free object values that fail the integer range check.
        frame["label"] = pd.array(
            [v if isinstance(v, int) and not isinstance(v, bool) else None for v in values], dtype="Int64"
        )
        frame["label_raw_ok"] = [v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values]
    facts = {
        "labelled": labels is not None,
        "labels_error": labels_error,
        "dangling_labels": sorted(set(labels) - set(names)) if labels is not None else [],
    }
    return frame, facts


# ---------------------------------------------------------------------------------------------
# Suite


def _suite(gx: Any, frame: Any, config: ValidateConfig, facts: dict[str, Any], num_classes: int) -> list[Any]:
    """(key, critical, expectation) triples; keys are stable names used in the metrics file."""
    E = gx.expectations
    pow2 = [2**k for k in range(1, 16)]
    items: list[tuple[str, bool, Any]] = [
        ("min_images", True, E.ExpectTableRowCountToBeBetween(min_value=config.min_images)),
        ("all_decode", True, E.ExpectColumnValuesToBeNull(column="error")),
        ("unique_names", True, E.ExpectColumnValuesToBeUnique(column="name")),
        ("one_width", True, E.ExpectColumnUniqueValueCountToBeBetween(column="width", min_value=1, max_value=1)),
        ("one_height", True, E.ExpectColumnUniqueValueCountToBeBetween(column="height", min_value=1, max_value=1)),
        (
            "one_channel_count",
            True,
            E.ExpectColumnUniqueValueCountToBeBetween(column="channels", min_value=1, max_value=1),
        ),
        ("channels_1_or_3", True, E.ExpectColumnValuesToBeInSet(column="channels", value_set=[1, 3])),
        ("square", True, E.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="height")),
        ("power_of_two_side", True, E.ExpectColumnValuesToBeInSet(column="width", value_set=pow2)),
        (
            "few_duplicates",
            config.fail_on_duplicates,
            E.ExpectColumnValuesToBeUnique(column="pixel_hash", mostly=1.0 - config.max_duplicate_fraction),
        ),
    ]
    if facts["labelled"]:
        items += [
            ("labels_present", True, E.ExpectColumnValuesToNotBeNull(column="label")),
            ("labels_integer", True, E.ExpectColumnValuesToBeInSet(column="label_raw_ok", value_set=[True])),
            (
                "labels_in_range",
                True,
                E.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=max(num_classes - 1, 0)),
            ),
            (
                "all_classes_present",
                False,
                E.ExpectColumnDistinctValuesToContainSet(column="label", value_set=list(range(num_classes))),
            ),
        ]
    for key, critical, expectation in items:
        expectation.meta = {"key": key, "critical": critical}
    return items


def validate_dataset(config: ValidateConfig) -> dict[str, Any]:
    """Run the suite; write ``config.out`` atomically; return the summary.

    Raises ValidationFailed (with ``.summary``) when a critical expectation fails, after writing
    the metrics file, so DVC still records what went wrong.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # slow import (~5 s): only when the stage runs
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame, facts = build_manifest(config.dataset, config.workers)
    labelled = facts["labelled"]
    max_label = int(frame["label"].max()) if labelled and frame["label"].notna().any() else -1
    num_classes = config.num_classes if config.num_classes is not None else max_label + 1

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (
        context.data_sources.add_pandas("dataset")
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("all_images")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="stylegan2_dataset"))
    items = _suite(gx, frame, config, facts, num_classes)
    for _key, _critical, expectation in items:
        suite.add_expectation(expectation)
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)

    expectations: dict[str, Any] = {}
    for r in result.results:
        meta = r.expectation_config.meta or {}
        raised = (r.exception_info or {}).get("raised_exception", False)
        expectations[meta["key"]] = {
            "success": bool(r.success) and not raised,
            "critical": bool(meta["critical"]),
            "unexpected_count": int(r.result.get("unexpected_count") or 0),
            "observed_value": r.result.get("observed_value"),
        }
    # Checks great-expectations cannot see from the manifest rows.
    expectations["labels_file_readable"] = {"success": facts["labels_error"] is None, "critical": True}
    expectations["no_dangling_labels"] = {
        "success": not facts["dangling_labels"],
        "critical": True,
        "unexpected_count": len(facts["dangling_labels"]),
    }
    expectations = dict(sorted(expectations.items()))

    hashes = frame.loc[frame["pixel_hash"] != "", "pixel_hash"]
    duplicates = int(hashes.duplicated().sum())
    counts = frame["label"].value_counts().sort_index() if labelled else None
    class_counts = {str(int(k)): int(v) for k, v in counts.items()} if counts is not None else {}
    failed_critical = sorted(k for k, v in expectations.items() if v["critical"] and not v["success"])
    failed_warning = sorted(k for k, v in expectations.items() if not v["critical"] and not v["success"])
    widths = sorted(set(int(w) for w in frame["width"])) if len(frame) else []
    summary: dict[str, Any] = {
        "dataset": config.dataset,
        "success": not failed_critical,
        "num_images": len(frame),
        "num_classes": num_classes if labelled else 0,
        "labelled": labelled,
        "resolution": widths[0] if len(widths) == 1 else 0,
        "channels": int(frame["channels"].iloc[0]) if frame["channels"].nunique() == 1 else 0,
        "decode_errors": int(frame["error"].notna().sum()),
        "duplicates": duplicates,
        "duplicate_fraction": round(duplicates / max(len(frame), 1), 6),
        "class_min": min(class_counts.values()) if class_counts else 0,
        "class_max": max(class_counts.values()) if class_counts else 0,
        "class_imbalance": round(max(class_counts.values()) / max(min(class_counts.values()), 1), 4)
        if class_counts
        else 0.0,
        "evaluated_expectations": len(expectations),
        "successful_expectations": sum(v["success"] for v in expectations.values()),
        "failed_critical": failed_critical,
        "failed_warning": failed_warning,
        "expectations": expectations,
        "class_counts": class_counts,
    }
    write_atomic_text(config.out, json.dumps(summary, indent=2, default=_json_default) + "\n")
    if failed_critical:
        raise ValidationFailed(f"critical expectations failed: {', '.join(failed_critical)}", summary)
    return summary


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / pandas scalars in GX observed values
        return value.item()
    return str(value)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"dataset {summary['dataset']}: {summary['num_images']} images, resolution {summary['resolution'] or 'MIXED'}, "
        f"channels {summary['channels'] or 'MIXED'}, classes {summary['num_classes']}",
        f"duplicates {summary['duplicates']} ({summary['duplicate_fraction']:.2%}), decode errors "
        f"{summary['decode_errors']}"
        + (
            f", class sizes {summary['class_min']}..{summary['class_max']} (ratio {summary['class_imbalance']})"
            if summary["labelled"]
            else ""
        ),
    ]
    for key, res in summary["expectations"].items():
        mark = "ok  " if res["success"] else ("FAIL" if res["critical"] else "warn")
        extra = f" ({res['unexpected_count']} unexpected)" if res.get("unexpected_count") else ""
        lines.append(f"  [{mark}] {key}{extra}")
    lines.append("PASSED" if summary["success"] else f"FAILED: {', '.join(summary['failed_critical'])}")
    return "\n".join(lines)


_FIELDS = [f.name for f in dataclasses.fields(ValidateConfig)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stages.validate", description="Validate a prepared dataset with a great-expectations suite."
    )
    add_params_argument(p)
    p.add_argument("--dataset", help="dataset .zip or folder")
    p.add_argument("--out", help="metrics JSON (default reports/validation.json)")
    p.add_argument("--num-classes", dest="num_classes", type=int, help="expected number of classes")
    p.add_argument("--min-images", dest="min_images", type=int)
    p.add_argument("--max-duplicate-fraction", dest="max_duplicate_fraction", type=float)
    p.add_argument(
        "--fail-on-duplicates", dest="fail_on_duplicates", action=argparse.BooleanOptionalAction, default=None
    )
    p.add_argument("--workers", type=int, help="decode processes, 0 = all cores")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(ValidateConfig, "validate", args, _FIELDS)
        summary = validate_dataset(config)
    except ConfigError as exc:
        print(f"validate: error: {exc}", file=sys.stderr)
        return 2
    except ValidationFailed as exc:
        print(format_summary(exc.summary))
        print(f"validate: {exc}; metrics in {config.out}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
