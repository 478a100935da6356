"""Command lines generated the same way for every stage: flags from the config dataclass.

    parser = stage_parser("python -m stages.train", __doc__)
    add_config_flags(parser, TrainConfig, HELP)
    return run_stage(parser, argv, lambda args: train(load_config(TrainConfig, "train", args)))

Every field becomes `--field-name` (booleans `--x/--no-x`, Literal fields list their choices); values
stay strings until `build_config` converts and validates them exactly like params.yaml values. Every
parser takes `--params FILE` and `--debug`, and reports a usage error in one line (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from stages.common.config import build_config, load_params, params_section
from stages.common.errors import EXIT_BAD_INPUT, run_cli

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line with a hint to --help (exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def stage_parser(prog: str, description: str | None, parents: Sequence[argparse.ArgumentParser] = ()
                 ) -> OneLineParser:
    # allow_abbrev=False: `--batch` must not be taken for a prefix of `--batch-min` (ambiguous-option errors).
    parser = OneLineParser(prog=prog, description=description, parents=list(parents),
                           formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    add_common_flags(parser)
    return parser


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None, help="params file to read (default: params.yaml or $SG2_PARAMS)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also SG2_DEBUG=1)")


def _choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a Literal field (optional or not), else None."""
    for arg in (tp, *typing.get_args(tp)):
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return None


def add_config_flags(parser: argparse.ArgumentParser, cls: type, help: dict[str, str],
                     aliases: dict[str, Sequence[str]] | None = None) -> None:
    """One `--flag-name` per field of the config dataclass `cls` (default None = "not given"); `aliases` adds
    other spellings, e.g. the official `--class` for `class_idx`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flags = ["--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, ())]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        # argparse %-formats help strings: a literal % (e.g. "~1%") must reach it doubled.
        text = f"{help.get(f.name, '')} (default: {default!r})".strip().replace("%", "%%")
        tp = hints[f.name]
        if tp in (bool, bool | None):
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue
        choices = _choices(tp)
        metavar = "{" + ",".join(str(c) for c in choices) + "}" if choices else f.name.upper()
        parser.add_argument(*flags, dest=f.name, default=None, metavar=metavar, help=text)


def load_config(cls: type[T], section: str, args: argparse.Namespace, params: dict[str, Any] | None = None,
                extra_section: dict[str, Any] | None = None) -> T:
    """`section` of the params file named by `--params`, overridden by the flags of `args` that were given.

    `extra_section` replaces the file's section (generate's per-command sub-sections). Notes about params
    values that stepped aside for a flag go to stderr, one line each.
    """
    params = load_params(getattr(args, "params", None)) if params is None else params
    values = params_section(params, section) if extra_section is None else extra_section
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    overrides = {k: v for k, v in vars(args).items() if k in names}
    notes: list[str] = []
    cfg = build_config(cls, values, overrides, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return cfg


def run_stage(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
              body: Callable[[argparse.Namespace], int | None]) -> int:
    """Parse `argv` (a usage error or --help returns its exit code) and run `body` inside the error boundary."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_BAD_INPUT
    prog = parser.prog if getattr(args, "command", None) is None else f"{parser.prog} {args.command}"
    return run_cli(prog, lambda: body(args), debug=getattr(args, "debug", False))


def config_command(prog: str, doc: str | None, cls: type[T], help: dict[str, str], argv: Sequence[str] | None,
                   work: Callable[[T], Any]) -> int:
    """The whole command line of a single-command stage: flags from `cls`, its params section
    (`cls.SECTION`), then `work(config)` inside the error boundary."""
    parser = stage_parser(prog, doc)
    add_config_flags(parser, cls, help)
    return run_stage(parser, argv, lambda args: work(load_config(cls, cls.SECTION, args)))
