"""The error boundary of every command: expected failures become one line and an exit code.

    exit 0   done
    exit 1   the environment: disk full, read-only or permission-denied paths, an absent download (offline),
             a missing optional package or device; also a stage whose own check failed (validation, parity)
    exit 2   bad input: a flag or params.yaml value, a missing or unreadable input file, a dataset or
             network file that is not what it claims to be, a pickle that was refused
    exit 130 interrupted (Ctrl-C)

Anything else is a bug and keeps its traceback. `--debug` (or SG2_DEBUG=1) shows the traceback of an
expected failure too.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable

EXIT_ENVIRONMENT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "SG2_DEBUG"

# OSErrors that are about the machine, not about what the user named.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EMFILE,
                       errno.ENFILE, errno.EIO, errno.ENOMEM, errno.EBUSY}


class StageError(Exception):
    """An expected failure with a message for the user; `exit_code` says whose fault it is."""

    exit_code = EXIT_BAD_INPUT


class BadInput(StageError):
    """What the user gave is wrong (value, file, content); exit 2."""

    exit_code = EXIT_BAD_INPUT


class EnvironmentFault(StageError):
    """The machine cannot do it (space, permissions, offline, missing package); exit 1."""

    exit_code = EXIT_ENVIRONMENT


class CheckFailed(StageError):
    """The stage ran and its own quality gate failed (validation, export parity); exit 1."""

    exit_code = EXIT_ENVIRONMENT


def debug_requested(argv: list[str] | None = None) -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on") or "--debug" in (argv or [])


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of an expected failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, StageError):
        return exc.exit_code
    # The network layer's exceptions say whose fault they are with a `blame` class attribute ("input": a file
    # that is not what it claims to be, a refused pickle; "environment": offline, a server that refused), so
    # this boundary needs no import of the network code.
    blame = getattr(type(exc), "blame", None)
    if blame == "environment":
        return EXIT_ENVIRONMENT
    if blame == "input" or isinstance(exc, pickle.UnpicklingError | zipfile.BadZipFile | json.JSONDecodeError
                                      | UnicodeDecodeError):
        return EXIT_BAD_INPUT
    if isinstance(exc, OSError):
        return EXIT_ENVIRONMENT if exc.errno in _ENVIRONMENT_ERRNOS else EXIT_BAD_INPUT
    if isinstance(exc, MemoryError):
        return EXIT_ENVIRONMENT
    return None


def one_line(exc: BaseException) -> str:
    """The message on one line. OSErrors name the file; an OSError built with several arguments prints
    "[Errno None] ..." from str(), so its single message argument is used instead."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    elif len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def run_cli(prog: str, body: Callable[[], int | None], debug: bool = False) -> int:
    """Run `body` inside the boundary; returns the process exit code."""
    try:
        return body() or 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None or debug or debug_requested():
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return code
