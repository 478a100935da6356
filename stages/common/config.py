"""Typed stage configuration: one frozen dataclass per `params.yaml` section, command-line flags on top.

Every stage reads its own section of `params.yaml` (DVC's params file) into a frozen dataclass and lets
command-line flags override single fields. Values from the file and from flags go through the same
conversion (`_coerce`) and the same `__post_init__` validation, so a bad value fails the same way
wherever it came from.

A flag given on the command line wins over params.yaml, including params values that would conflict
with it: a config class names them in `YIELDS_TO_FLAGS` (e.g. `--outdir` makes the pipeline's fixed
`run_dir` and `resume: auto` step aside), and the command says so in one note. That keeps official-style
commands working unchanged inside the project folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stages.common.errors import BadInput

DEFAULT_PARAMS = Path("params.yaml")
PARAMS_ENV = "SG2_PARAMS"
T = TypeVar("T")
_ABSENT = object()


class ConfigError(BadInput, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The whole params file; a missing default file is an empty config, a missing explicit one an error."""
    p = Path(path) if path is not None else Path(os.environ.get(PARAMS_ENV, DEFAULT_PARAMS))
    if not p.exists():
        if path is None:
            return {}
        raise ConfigError(f"params file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"params file {p} is a folder")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def params_section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """`params[name]` as a mapping ({} when absent); anything else is a one-line error."""
    section = params.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"params.yaml: section '{name}' must be a mapping of options, got {section!r}")
    return section


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return value


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type (the few types configs use)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _coerce(name, args[0], value)
        for arg in args:  # e.g. `bool | Literal["auto"]`: the first type that accepts the value
            try:
                return _coerce(name, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {value!r} is not one of the accepted forms ({tp})")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list | tuple):
            value = [value]
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(name, inner, v) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, (bool, list | tuple | dict)):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}") from None
        _finite(name, number)
        if tp is int:
            if not number.is_integer():
                raise ConfigError(f"{name}: expected a whole number, got {value!r}")
            return int(number)
        return number
    if tp is str:
        if isinstance(value, list | tuple | dict):
            raise ConfigError(f"{name}: expected text, got {value!r}")
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_config(cls: type[T], section: dict[str, Any] | None, overrides: dict[str, Any] | None = None,
                 notes: list[str] | None = None) -> T:
    """Build the dataclass `cls` from a params section plus non-None overrides (flags); unknown keys are errors.

    Params values named in `cls.YIELDS_TO_FLAGS[flag]` (a tuple, or a function of the flag's value giving one)
    are dropped when `flag` is given with another value than the file's; each drop is described in `notes`.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = _field_types(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    section_name = getattr(cls, "SECTION", cls.__name__)

    def normalise(source: dict[str, Any], what: str) -> dict[str, Any]:
        out = {}
        for key, value in source.items():
            key = str(key).replace("-", "_")
            if key not in fields:
                raise ConfigError(f"unknown option {key!r} in {what}; known: {', '.join(sorted(fields))}")
            out[key] = _coerce(f"{section_name}.{key}", hints[key], value)
        return out

    from_file = normalise(section or {}, f"params.yaml section '{section_name}'")
    from_flags = normalise({k: v for k, v in (overrides or {}).items() if v is not None}, "the flags")
    yields: dict[str, Any] = getattr(cls, "YIELDS_TO_FLAGS", {})
    for flag, dependents in yields.items():
        if flag in from_flags and from_file.get(flag, _ABSENT) != from_flags[flag]:
            if callable(dependents):  # which params values step aside depends on the flag's value
                dependents = dependents(from_flags[flag])
            dropped = [d for d in dependents if d in from_file and d not in from_flags]
            for d in dropped:
                if notes is not None and from_file[d] is not None:  # an unset value stepping aside is no news
                    notes.append(f"--{flag.replace('_', '-')} given: params.yaml {section_name}.{d} "
                                 f"({from_file[d]!r}) not used")
                del from_file[d]
    try:
        return cls(**{**from_file, **from_flags})
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def flatten(d: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts (and dataclasses) as `a.b.c -> value`, e.g. for MLflow params and option tables."""
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = dataclasses.asdict(d)
    if not isinstance(d, dict) or not d:
        return {prefix.removesuffix(sep): d} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in d.items():
        out.update(flatten(value, f"{prefix}{key}{sep}", sep))
    return out
