"""The typed params loader: sections become frozen dataclasses, flags override, bad values fail loudly."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from stages.common.cli import OneLineParser, add_config_flags, load_config
from stages.common.config import ConfigError, build_config, flatten, load_params, params_section


@dataclasses.dataclass(frozen=True)
class _Cfg:
    SECTION: ClassVar[str] = "stage"
    YIELDS_TO_FLAGS: ClassVar[dict[str, tuple[str, ...]]] = {"name": ("limit",)}

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


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = OneLineParser(prog="t")
    parser.add_argument("--params")
    add_config_flags(parser, _Cfg, {})
    return parser.parse_args(argv)


def test_section_and_flags_through_the_generated_parser(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("stage:\n  size: 64\n  rate: 1\n  seeds: [1, 2]\n  mode: b\n")
    cfg = load_config(_Cfg, "stage", _parse(["--params", str(params), "--flag", "--limit", "7"]))
    assert cfg == _Cfg(size=64, rate=1.0, seeds=(1, 2), mode="b", flag=True, limit=7)
    assert isinstance(cfg.rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 1  # type: ignore[misc]
    assert load_config(_Cfg, "stage", _parse(["--params", str(params), "--no-flag"])).flag is False


def test_a_flag_makes_conflicting_params_step_aside_with_a_note(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("stage:\n  name: demo\n  limit: 3\n")
    assert load_config(_Cfg, "stage", _parse(["--params", str(params)])).limit == 3
    assert load_config(_Cfg, "stage", _parse(["--params", str(params), "--name", "demo"])).limit == 3  # same value
    cfg = load_config(_Cfg, "stage", _parse(["--params", str(params), "--name", "mine"]))
    assert cfg.limit is None and cfg.name == "mine"
    assert capsys.readouterr().err.strip() == "note: --name given: params.yaml stage.limit (3) not used"
    cfg = load_config(_Cfg, "stage", _parse(["--params", str(params), "--name", "mine", "--limit", "9"]))
    assert cfg.limit == 9  # a flag never steps aside


def test_comma_separated_tuple_and_dash_keys():
    cfg = build_config(_Cfg, {}, {"seeds": "3,4,5"})
    assert cfg.seeds == (3, 4, 5)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"sise": 1}, "unknown option 'sise'"),
        ({"size": "big"}, "expected int"),
        ({"size": 1.5}, "expected a whole number"),
        ({"size": True}, "expected int"),
        ({"rate": "nan"}, "finite"),
        ({"rate": float("inf")}, "finite"),
        ({"rate": [1, 2]}, "expected float"),
        ({"name": {"a": 1}}, "expected text"),
        ({"mode": "c"}, "not one of"),
        ({"flag": "maybe"}, "expected true or false"),
        ({"size": -1}, "size must be positive"),
    ],
)
def test_bad_values_name_the_problem(section, message):
    with pytest.raises(ConfigError, match=message):
        build_config(_Cfg, section)


def test_params_file_problems_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  kimg: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 3"):
        load_params(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_params(bad)
    bad.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        params_section(load_params(bad), "train")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {"a.b": 1, "a.c.d": [2], "e": None}
    assert flatten(_Cfg(), prefix="x.")["x.size"] == 32


def test_cfg_of_another_family_makes_the_demo_settings_it_does_not_use_step_aside() -> None:
    """`python -m stages.train --data X --cfg fastgan_lite` in the project folder: params.yaml's ADA settings
    (the demo's) must not stop it with "not used by"; a StyleGAN2 config keeps them; flags are still refused."""
    from stages.common.config import build_config, load_params
    from stages.train.config import TrainConfig

    section = load_params(Path(__file__).resolve().parents[1] / "params.yaml")["train"]
    assert section["aug"] == "ada" and section["target"] is not None  # the demo's settings this test is about
    notes: list[str] = []
    cfg = build_config(TrainConfig, section, {"data": "x.zip", "cfg": "fastgan_tiny"}, notes)
    assert cfg.aug is None and cfg.target is None and cfg.cfg == "fastgan_tiny"
    assert any("--cfg given: params.yaml train.target" in n for n in notes) and \
        any("train.aug ('ada') not used" in n for n in notes)
    kept = build_config(TrainConfig, section, {"data": "x.zip", "cfg": "paper256"}, [])
    assert (kept.aug, kept.target) == ("ada", section["target"])
    with pytest.raises(ConfigError, match="--aug: not used by --cfg fastgan_tiny"):
        build_config(TrainConfig, section, {"data": "x.zip", "cfg": "fastgan_tiny", "aug": "ada"}, [])
