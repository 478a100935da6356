"""The DVC project the flows drive, as DVC itself describes it: no stage list kept by hand.

- `pipeline_stages`: the stages of `dvc.yaml`, in its order (the pipeline's order); `upstream_stages`: a
  stage and those it depends on (`dvc dag`);
- `params_sections` / `stage_sections`: the params.yaml sections the stages read (what a sweep may vary),
  and `section_config`: the config dataclass that checks a section;
- `StageProbe`: whether `dvc repro --single-item <stage>` reproduced the stage, read from DVC's state
  (`dvc status --json` before it runs; its `dvc.lock` entry before and after where status cannot tell),
  never from the text DVC prints.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.common.errors import BadInput, EnvironmentFault


def dvc_command() -> list[str]:
    # The venv's dvc when running from it; the stage commands then find the venv's python first too.
    local = Path(sys.executable).with_name("dvc")
    return [str(local)] if local.exists() else ["dvc"]


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `dvc` subprocess: this interpreter's bin first on PATH, unbuffered output."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                PYTHONUNBUFFERED="1", **(extra or {}))


def read_dvc_yaml(project: Path) -> dict[str, Any]:
    path = Path(project) / "dvc.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise BadInput(f"{path}: no dvc.yaml here; --project-dir must name the project's folder") from None
    if not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise BadInput(f"{path}: no `stages:` mapping")
    return data


def pipeline_stages(project: Path) -> list[str]:
    """The stage names of dvc.yaml, in the file's order (each stage listed after the stages it depends on)."""
    return list(read_dvc_yaml(project)["stages"])


def _sections_of(spec: dict[str, Any] | None) -> list[str]:
    """The params.yaml sections named by a dvc.yaml stage's `params:` list (`- train`, `- train.gamma`,
    `- params.yaml: [train]`; other params files are not params.yaml's and are left out)."""
    found: list[str] = []
    for entry in (spec or {}).get("params") or []:
        if isinstance(entry, str):
            keys = [entry]
        else:
            keys = (entry.get("params.yaml") or []) if isinstance(entry, dict) else []
        for key in keys:
            section = str(key).split(".", 1)[0]
            if section not in found:
                found.append(section)
    return found


def params_sections(project: Path) -> dict[str, str]:
    """{params.yaml section: the first stage reading it} for the stages of dvc.yaml with a `params:` list."""
    sections: dict[str, str] = {}
    for stage, spec in read_dvc_yaml(project)["stages"].items():
        for section in _sections_of(spec):
            sections.setdefault(section, stage)
    return sections


def stage_sections(project: Path, stage: str) -> list[str]:
    """The params.yaml sections a stage of dvc.yaml reads."""
    return _sections_of(read_dvc_yaml(project)["stages"].get(stage))


def section_config(project: Path, section: str) -> type | None:
    """The config dataclass of a params.yaml section that a stage of dvc.yaml reads: the class declaring
    `SECTION = "<section>"` in the package the stage runs. Found by reading the package's sources, so only
    that one module is imported. None when the stage has none (its values are then passed on unchecked)."""
    sections = params_sections(project)
    if section not in sections:
        raise BadInput(f"--param: no stage of dvc.yaml reads params section {section!r}; "
                       f"sweepable: {', '.join(sections)}")
    module = stage_module(project, sections[section])
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        return None
    declares = re.compile(rf"""^\s+SECTION\s*:\s*ClassVar\[str\]\s*=\s*["']{re.escape(section)}["']""", re.M)
    for folder in spec.submodule_search_locations:
        for source in sorted(Path(folder).glob("*.py")):
            if declares.search(source.read_text(errors="replace")):
                mod = importlib.import_module(f"{module}.{source.stem}")
                for obj in vars(mod).values():
                    if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == mod.__name__
                            and vars(obj).get("SECTION") == section):
                        return obj
    return None


def stage_module(project: Path, stage: str) -> str | None:
    """The `stages.<name>` package a dvc.yaml stage runs (`python -m stages.<name> ...`), or None."""
    cmd = (read_dvc_yaml(project)["stages"].get(stage) or {}).get("cmd") or ""
    cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    words = cmd.split()
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1].startswith("stages."):
            return ".".join(words[i + 1].split(".")[:2])
    return None


def upstream_stages(project: Path, target: str) -> list[str]:
    """`target` and the stages it depends on, from DVC's own graph (`dvc dag --dot <target>`), in dvc.yaml's
    order."""
    proc = subprocess.run([*dvc_command(), "dag", "--dot", target], cwd=project, env=stage_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BadInput(f"dvc dag {target}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    nodes = {line.strip().strip(";").strip('"') for line in proc.stdout.splitlines()
             if line.strip().endswith(";") and "->" not in line}
    return [s for s in pipeline_stages(project) if s in nodes]


def lock_entry(project: Path, stage: str) -> dict[str, Any] | None:
    """The stage's entry in dvc.lock (deps, params and outs with their hashes), or None if it never ran."""
    path = Path(project) / "dvc.lock"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (FileNotFoundError, yaml.YAMLError):
        return None
    return (data.get("stages") or {}).get(stage)


def dvc_status(project: Path, stage: str, env: dict[str, str] | None = None, with_deps: bool = False
               ) -> dict[str, Any] | None:
    """`dvc status --json <stage>`: {} when up to date, {stage: [changes]} when stale (with the stages it
    depends on too, `with_deps`); None when DVC cannot say (e.g. an upstream output is missing: the repro
    that follows reports the real error)."""
    cmd = [*dvc_command(), "status", "--json", *(["--with-deps"] if with_deps else []), stage]
    proc = subprocess.run(cmd, cwd=project, env=stage_env(env), capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    text = proc.stdout.strip()
    try:
        out = json.loads(text[text.find("{"):]) if "{" in text else {}
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


@dataclass
class StageProbe:
    """DVC's state of one stage just before `dvc repro --single-item` runs it."""

    stage: str
    stale: bool | None          # dvc status said it is stale (None: DVC could not tell)
    changes: list[Any]          # what dvc status listed (changed deps/params/outs/command)
    lock_before: dict[str, Any] | None

    @classmethod
    def before(cls, project: Path, stage: str, env: dict[str, str] | None = None) -> StageProbe:
        status = dvc_status(project, stage, env)
        changes = list((status or {}).get(stage) or [])
        return cls(stage, None if status is None else bool(changes), changes, lock_entry(project, stage))

    def ran(self, project: Path) -> bool:
        """Whether DVC reproduced the stage: it was stale (its command ran, or DVC restored its outputs from
        the run cache), or, when status could not tell, its dvc.lock entry changed."""
        if self.stale is not None:
            return self.stale
        return lock_entry(project, self.stage) != self.lock_before


def git_head(project: Path) -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def committed_file(project: Path, path: str) -> str | None:
    """`path` as committed at HEAD (None outside git or when not committed)."""
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=project, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def require_git(project: Path) -> None:
    if git_head(project) is None:
        raise EnvironmentFault(f"{project} is not a git repository with a commit: `dvc exp run` needs one "
                               "(git init && git add -A && git commit)")
