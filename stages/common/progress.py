"""Human-readable durations and progress bars for long work."""

from __future__ import annotations

import sys
from typing import Any


def format_time(seconds: float) -> str:
    """The official `dnnlib.util.format_time` layout: '12s', '3m 04s', '2h 05m 09s', '1d 02h 03m'."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m"


def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "img") -> Any:
    """A tqdm bar on stderr; off when `enabled` is false (and by tqdm itself when stderr is not a terminal
    only if `enabled` is None)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled is None else not enabled,
                file=sys.stderr, leave=False, dynamic_ncols=True)
