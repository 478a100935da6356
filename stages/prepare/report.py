"""The prepare report: every input that was skipped, fixed or ignored, with its reason."""

from __future__ import annotations

import collections
import logging
from typing import Any

from stages.common.errors import BadInput

log = logging.getLogger("stages.prepare")

FATAL_SEVERITIES = ("skip",)  # "fixed" and "ignored" issues never stop a run, even with on_error=fail
MAX_LISTED_FIXES = 1000  # per reason; skipped inputs are always listed in full


class PrepareError(BadInput):
    """The run cannot produce a dataset (empty result, --on-error fail, unreconcilable inputs)."""


class Report:
    """Counts and names of every input that was skipped, fixed or ignored, by reason."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        severities = ("skip", "fixed", "ignored")
        self.counts: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in severities}
        self.items: dict[str, dict[str, list[dict[str, str]]]] = {s: {} for s in self.counts}
        self.images_fixed = 0

    def issue(self, reason: str, name: str, detail: str, severity: str) -> None:
        self.counts[severity][reason] += 1
        listed = self.items[severity].setdefault(reason, [])
        if severity != "fixed" or len(listed) < MAX_LISTED_FIXES:
            listed.append({"name": name, "detail": detail})
        log.debug("%s %s: %s %s", severity, reason, name, detail)
        if severity in FATAL_SEVERITIES and self.on_error == "fail":
            raise PrepareError(f"{reason}: {name}: {detail} (--on-error fail)")

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_skipped": sum(self.counts["skip"].values()),
            "num_fixed": self.images_fixed,
            "num_ignored": sum(self.counts["ignored"].values()),
            "skipped": dict(sorted(self.counts["skip"].items())),
            "fixed": dict(sorted(self.counts["fixed"].items())),
            "ignored": dict(sorted(self.counts["ignored"].items())),
            "items": {
                "skipped": dict(sorted(self.items["skip"].items())),
                "fixed": dict(sorted(self.items["fixed"].items())),
                "ignored": dict(sorted(self.items["ignored"].items())),
            },
        }
