"""Prints the services stack's timings at the end of the run (the `services` marker is in pyproject)."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    """The stack's timings (filled by test_services.py), shown even under -q."""
    import sys

    for module_name in ("tests.services.test_services", "tests.services.test_dvc_remote"):
        module = sys.modules.get(module_name)
        timings = getattr(module, "TIMINGS", None)
        if timings:
            terminalreporter.write_sep("-", f"timings of {module_name.rpartition('.')[2]}")
            for name, seconds in timings.items():
                terminalreporter.write_line(f"{name:40s} {seconds:7.1f} s")
        for name, text in (getattr(module, "NOTES", None) or {}).items():
            terminalreporter.write_line(f"{name}: {text}")
