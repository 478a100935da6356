#!/usr/bin/env bash
# What the browser tests (tests/test_explore_browser.py) need: Debian's chromium and Playwright for Python.
# Idempotent and quick when both are present. Playwright drives /usr/bin/chromium through its executable path,
# so its own browser download (`playwright install`) is never run.
#
#   infra/install/browser.sh            # venv at .venv (or $VENV)
#   CHROMIUM=/usr/bin/chromium-browser infra/install/browser.sh
set -euo pipefail

VENV="${VENV:-.venv}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
PLAYWRIGHT_SPEC="${PLAYWRIGHT_SPEC:-playwright>=1.40}"

if [ ! -x "$CHROMIUM" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != "0" ]; then
            if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
                echo "browser.sh: $CHROMIUM is missing and apt-get needs root (no sudo); install the chromium package" >&2
                exit 1
            fi
        fi
        echo "browser.sh: installing chromium (apt-get)"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "browser.sh: $CHROMIUM is missing and there is no apt-get; install Chromium and set CHROMIUM=path" >&2
        exit 1
    fi
fi

if ! "$VENV/bin/python" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "browser.sh: installing $PLAYWRIGHT_SPEC into $VENV"
    "$VENV/bin/pip" install --quiet "$PLAYWRIGHT_SPEC"
fi
echo "browser.sh: $("$CHROMIUM" --version 2>/dev/null | head -n1), playwright $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("playwright"))')"
