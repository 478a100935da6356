"""The typed params loader: sections become frozen dataclasses, flags override, bad values fail loudly."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

import pytest

from stages.common.config import ConfigError, build_config, config_from_args, load_params


@dataclasses.dataclass(frozen=True)
class _Cfg:
    size: int = 32
    rate: float = 0.5
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    seeds: tuple[int, ...] = ()
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ConfigError("size must be positive")


def test_section_and_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("stage:\n  size: 64\n  rate: 1\n  seeds: [1, 2]\n  mode: b\n")
    ns = argparse.Namespace(params=str(params), size=None, flag="true", limit="7")
    cfg = config_from_args(_Cfg, "stage", ns, ["size", "flag", "limit"])
    assert cfg == _Cfg(size=64, rate=1.0, seeds=(1, 2), mode="b", flag=True, limit=7)
    assert isinstance(cfg.rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 1  # type: ignore[misc]


def test_comma_separated_tuple_and_dash_keys():
    cfg = build_config(_Cfg, {}, {"seeds": "3,4,5"})
    assert cfg.seeds == (3, 4, 5)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"sise": 1}, "unknown option 'sise'"),
        ({"size": "big"}, "expected int"),
        ({"size": 1.5}, "expected int"),
        ({"mode": "c"}, "not one of"),
        ({"flag": "maybe"}, "expected a boolean"),
        ({"size": -1}, "size must be positive"),
    ],
)
def test_bad_values_name_the_problem(section, message):
    with pytest.raises(ConfigError, match=message):
        build_config(_Cfg, section)


def test_missing_explicit_params_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
