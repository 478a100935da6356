"""The great-expectations suite over a dataset manifest (`manifest.build_manifest`). It checks what
training relies on, by the same rules `stages.common.dataset` applies when a dataset is opened; a failed
*critical* expectation makes the stage exit 1 so DVC/Prefect stop before training:

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

import logging
import os
from typing import Any

from stages.common.dataset import MAX_CLASSES, POW2_SIDES
from stages.common.errors import CheckFailed
from stages.common.fileio import write_json_atomic
from stages.validate.config import ValidateConfig
from stages.validate.manifest import build_manifest

log = logging.getLogger("stages.validate")


class ValidationFailed(CheckFailed):
    """A critical expectation failed; the summary is attached."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


# ---------------------------------------------------------------------------------------------
# Suite


def _suite(gx: Any, frame: Any, config: ValidateConfig, facts: dict[str, Any], num_classes: int) -> list[Any]:
    """(key, critical, expectation) triples; keys are stable names used in the metrics file."""
    E = gx.expectations
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
        ("power_of_two_side", True, E.ExpectColumnValuesToBeInSet(column="width", value_set=list(POW2_SIDES))),
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
    # Classes beyond MAX_CLASSES are not a dataset this project trains on: such a label fails the range
    # check instead of sizing a list of a trillion expected classes.
    num_classes = config.num_classes if config.num_classes is not None else min(max_label + 1, MAX_CLASSES)

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
    write_json_atomic(config.out, summary)
    if failed_critical:
        raise ValidationFailed(f"critical expectations failed: {', '.join(failed_critical)}", summary)
    return summary


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
