"""Typed stage configuration: one frozen dataclass per `params.yaml` section, CLI flags on top.

Every stage reads its own section of `params.yaml` (DVC's params file) into a frozen dataclass and
lets command-line flags override single fields. Validation lives in each dataclass's `__post_init__`,
so a bad value fails the same way whether it came from the file or from a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

DEFAULT_PARAMS = Path("params.yaml")
T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the whole params file; a missing default file is an empty config, a missing explicit one an error."""
    p = Path(path) if path is not None else Path(os.environ.get("SG2_PARAMS", DEFAULT_PARAMS))
    if not p.exists():
        if path is None:
            return {}
        raise ConfigError(f"params file not found: {p}")
    with p.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    return data


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type (the few types configs use)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _coerce(name, args[0], value)
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{name}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
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
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}") from exc
    return value


def build_config(cls: type[T], section: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> T:
    """Build the dataclass `cls` from a params section plus non-None overrides; unknown keys are errors."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for source in (section or {}), {k: v for k, v in (overrides or {}).items() if v is not None}:
        for key, value in source.items():
            key = key.replace("-", "_")
            if key not in fields:
                raise ConfigError(f"unknown option {key!r} for {cls.__name__}; known: {sorted(fields)}")
            values[key] = _coerce(f"{cls.__name__}.{key}", hints[key], value)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def add_params_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None, help="params file to read (default: params.yaml or $SG2_PARAMS)")


def config_from_args(cls: type[T], section_name: str, args: argparse.Namespace, fields: list[str]) -> T:
    """Load `section_name` from the params file named by `args.params` and override with `fields` of args."""
    params = load_params(getattr(args, "params", None))
    overrides = {f: getattr(args, f) for f in fields if hasattr(args, f)}
    return build_config(cls, params.get(section_name), overrides)


def as_flat_dict(config: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a (possibly nested) dataclass into `a.b.c -> value`, e.g. for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(config).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            for k, v in value.items():
                out[f"{name}.{k}"] = v
        else:
            out[name] = value
    return out


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, help: dict[str, str]) -> None:
    """One `--flag-name` per field of the config dataclass `cls`; booleans get `--x/--no-x`.

    Values stay strings (default None = "not given"): `build_config` coerces and validates them exactly
    like params.yaml values, so a flag and a params entry fail the same way.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        text = f"{help.get(f.name, '')} (default: {f.default!r})"
        if hints[f.name] in (bool, bool | None):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=text)
