"""Where the browser tests find Debian's Chromium and Playwright (installed by infra/install/browser.sh), and the
skip rule they share: skipped with the reason when either is absent, failed instead under SG2_REQUIRE_BROWSER=1
(as `make test` sets)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SG2_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

MISSING = ("playwright is not installed (infra/install/browser.sh)" if sync_playwright is None else
           f"no Chromium at {CHROMIUM} (infra/install/browser.sh, or set SG2_CHROMIUM)"
           if not Path(CHROMIUM).is_file() else None)
REQUIRED = os.environ.get("SG2_REQUIRE_BROWSER") == "1"
needs_browser = pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=str(MISSING))

__all__ = ["CHROMIUM", "MISSING", "REQUIRED", "needs_browser", "sync_playwright"]
