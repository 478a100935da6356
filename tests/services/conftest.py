"""Prints the services stack's timings at the end of the run (the `services` marker is in pyproject)."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    """The stack's timings (filled by test_services.py), shown even under -q."""
    import sys

    module = sys.modules.get("tests.services.test_services")
    timings = getattr(module, "TIMINGS", None)
    if timings:
        terminalreporter.write_sep("-", "services timings")
        for name, seconds in timings.items():
            terminalreporter.write_line(f"{name:40s} {seconds:7.1f} s")
    for name, text in (getattr(module, "NOTES", None) or {}).items():
        terminalreporter.write_line(f"{name}: {text}")
