"""Every command and subcommand answers `--help` with exit 0 and no traceback (a `%` in a help string, a
default that argparse cannot format and a broken import all show up here first)."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p.parent.name for p in (ROOT / "stages").glob("*/__main__.py"))
FLOWS = sorted(p.stem for p in (ROOT / "flows").glob("*.py")
               if p.stem != "__init__" and "def main(" in p.read_text())


def _main(command: str):
    module = f"stages.{command}.cli" if command in STAGES else f"flows.{command}"
    return importlib.import_module(module).main


def _help(command: str, *sub: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = _main(command)([*sub, "--help"])  # the commands return their exit code ...
        except SystemExit as exit_:                  # ... or argparse exits for them
            code = exit_.code
    text = out.getvalue() + err.getvalue()
    assert code in (0, None), f"{command} {' '.join(sub)} --help exited {code}:\n{text}"
    assert "Traceback" not in text
    assert "usage:" in text
    return text


def _subcommands(text: str) -> list[str]:
    """The choices of a subcommand argument, as argparse prints them: `{images,style-mixing,...}`."""
    usage = text.split("\n\n")[0]
    found = re.search(r"\{([a-z0-9_,-]+)\}", usage)
    return found[1].split(",") if found else []


@pytest.mark.parametrize("command", STAGES + FLOWS)
def test_every_command_and_subcommand_has_help(command: str) -> None:
    text = _help(command)
    for sub in _subcommands(text):
        _help(command, sub)


def test_the_commands_are_found() -> None:
    assert {"prepare", "train", "evaluate", "generate", "export"} <= set(STAGES)
    assert {"pipeline", "sweep"} <= set(FLOWS)
