"""The house rules of the layout, checked from the code: dvc.yaml deps follow the imports of each stage,
the lower layers never import the upper ones, and no package imports itself in a circle."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOP = ("ops", "models", "stages", "flows")


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def imports_of(path: Path) -> frozenset[str]:
    """Project modules imported anywhere in `path` (top level and inside functions)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__")
    else:
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in TOP and module_file(n) is not None}
    return frozenset(found)


def closure(start: list[Path]) -> set[Path]:
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            parts = name.split(".")
            # `import a.b.c` also runs a/__init__.py and a/b/__init__.py
            for i in range(1, len(parts) + 1):
                f = module_file(".".join(parts[:i]))
                if f is not None:
                    todo.append(f)
    return seen


def dep_unit(path: Path) -> str:
    """The dvc.yaml dependency entry a source file belongs to: `ops` (one unit: the networks use all of it), a
    subpackage `models/<sub>` or `stages/<pkg>`, or a single module `models/<name>.py`."""
    rel = path.relative_to(ROOT).parts
    if rel[0] == "ops":
        return "ops"
    return "/".join(rel[:2])


def code_deps(stage: str) -> set[str]:
    """dvc.yaml-style dependency entries of a stage: what its command really imports, one subpackage at a time."""
    files = closure(sorted((ROOT / "stages" / stage).glob("*.py")))
    return {dep_unit(f) for f in files} - {"stages/__init__.py"}


STAGE_PACKAGES = sorted(p.parent.name for p in (ROOT / "stages").glob("*/__main__.py"))
SHARED_STAGE_PACKAGES = ("common", "metrics", "serving")   # engines several stages use; no command of their own


DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(DVC))
def test_dvc_deps_follow_the_imports(stage: str) -> None:
    declared = {d for d in DVC[stage]["deps"] if not d.startswith("${")}
    assert declared == code_deps(stage), f"dvc.yaml stage {stage}: deps should be {sorted(code_deps(stage))}"


def test_lower_layers_never_import_upper_ones() -> None:
    allowed = {"ops": {"ops"}, "models": {"ops", "models"}, "stages": {"ops", "models", "stages"}}
    for layer, may in allowed.items():
        for path in (ROOT / layer).rglob("*.py"):
            bad = {n for n in imports_of(path) if n.split(".")[0] not in may}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_import_cycles_between_modules() -> None:
    files = [p for top in TOP for p in (ROOT / top).rglob("*.py")]
    graph = {f: {module_file(n) for n in imports_of(f)} - {None, f} for f in files}
    state: dict[Path, int] = {}

    def visit(f: Path, stack: list[Path]) -> None:
        state[f] = 1
        for g in graph.get(f, ()):
            if g.name == "__init__.py" and f.is_relative_to(g.parent):
                continue  # a package's __init__ naming its own modules is not a cycle of concepts
            if state.get(g) == 1:
                cycle = [*stack[stack.index(g):], g] if g in stack else [f, g]
                raise AssertionError("import cycle: " + " -> ".join(str(p.relative_to(ROOT)) for p in cycle))
            if state.get(g) is None:
                visit(g, [*stack, g])
        state[f] = 2

    for f in files:
        if f not in state:
            visit(f, [f])


def test_shared_packages_have_no_command_and_stages_import_no_other_stage() -> None:
    for name in SHARED_STAGE_PACKAGES:
        assert not (ROOT / "stages" / name / "__main__.py").exists(), f"stages/{name} is shared, not a stage"
    for stage in STAGE_PACKAGES:
        for path in (ROOT / "stages" / stage).rglob("*.py"):
            others = {n.split(".")[1] for n in imports_of(path) if n.startswith("stages.") and n.count(".") >= 1}
            bad = others - {stage, *SHARED_STAGE_PACKAGES}
            assert not bad, f"{path.relative_to(ROOT)} imports the engine of stage(s) {sorted(bad)}"


def test_common_imports_no_network_code() -> None:
    """The data stages (demo_data, prepare, validate) depend on stages/common: it may use the network layer's
    atomic file I/O and its one float->uint8 conversion, nothing that builds or loads a network."""
    files = closure(sorted((ROOT / "stages" / "common").glob("*.py")))
    network_side = {dep_unit(f) for f in files if f.relative_to(ROOT).parts[0] in ("models", "ops")}
    assert network_side <= {"models/__init__.py", "models/fileio.py", "models/image_grid.py"}, sorted(network_side)


def test_project_code_imports_models_by_submodule() -> None:
    """`models/__init__.py` loads its public names lazily (for notebooks); code of the project names the defining
    module, so the dependencies computed above are the ones that run."""
    offenders = []
    for top in ("models", "stages", "flows"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "models" and not node.level:
                    names = [a.name for a in node.names if module_file(f"models.{a.name}") is None]
                    if names:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {names}")
    assert not offenders, offenders


FAMILY_NAMES = ("stylegan2", "stylegan3", "projected")
NETWORK_CLASS_NAMES = ("Generator", "StyleGAN3Generator", "FastGANGenerator", "Discriminator", "ProjectedDiscriminator")


# The importer of official pickles reads class names of NVIDIA's code ("Generator" names both of its generator
# families there); it maps them to this project's classes, which is reading a file format, not a family switch.
FOREIGN_FORMAT_READERS = {ROOT / "models" / "serialization" / "official_pickle.py"}


def test_no_family_name_comparisons_outside_the_family_registry() -> None:
    """A family's name (or its networks' class names) decides something only in models/families: a comparison
    or membership test against one of those strings anywhere else is a family switch in disguise."""
    wanted = set(FAMILY_NAMES) | set(NETWORK_CLASS_NAMES)
    offenders = []
    for top in ("models", "stages", "flows"):
        for path in (ROOT / top).rglob("*.py"):
            if path.is_relative_to(ROOT / "models" / "families") or path in FOREIGN_FORMAT_READERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Compare):
                    continue
                for side in [node.left, *node.comparators]:
                    values = [side] if not isinstance(side, ast.Tuple | ast.List | ast.Set) else side.elts
                    hits = [v.value for v in values if isinstance(v, ast.Constant) and v.value in wanted]
                    if hits:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with {hits}")
    assert not offenders, "\n".join(offenders)


def rewrite_dvc_deps(text: str) -> str:
    """dvc.yaml with each stage's code deps (the lines after its `${...}` deps) replaced by `code_deps`."""
    out, stage, in_deps = [], None, False
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip().rstrip(":")
        if line.strip() == "deps:":
            in_deps = True
            out.append(line)
            continue
        if in_deps:
            item = line.strip()
            if item.startswith("- ") and not item[2:].lstrip().startswith("${"):
                continue  # a code dep: rewritten below
            if not item.startswith("- "):
                indent = " " * (out[-1].index("-") if out[-1].lstrip().startswith("-") else 6)
                out += [f"{indent}- {d}" for d in sorted(code_deps(stage))]
                in_deps = False
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python tests/test_layout.py: make dvc.yaml's code deps follow the imports
    import sys

    path = ROOT / "dvc.yaml"
    path.write_text(rewrite_dvc_deps(path.read_text()))
    print(f"rewrote the code deps of {path}", file=sys.stderr)


def _dvc() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


@pytest.fixture(scope="module")
def code_only_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the code with dvc.yaml's stages, code deps exactly as declared and commands that do nothing,
    reproduced once so dvc.lock holds every dep's hash: `dvc status` then tells which stages a code edit makes
    stale, as DVC itself decides it for `dvc repro`."""
    work = tmp_path_factory.mktemp("dvcdeps")
    for top in ("ops", "models", "stages"):
        shutil.copytree(ROOT / top, work / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    stages = {name: {"cmd": "true", "deps": [d for d in spec["deps"] if not d.startswith("${")]}
              for name, spec in DVC.items()}
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    for cmd in (["git", "init", "-q"], [_dvc(), "init", "-q"], [_dvc(), "repro", "-q"]):
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True, timeout=300)
    return work


def _stale_after_edit(work: Path, rel: str) -> set[str]:
    path = work / rel
    original = path.read_text()
    path.write_text(original + "# an edit that changes no behaviour\n")
    try:
        out = subprocess.run([_dvc(), "status", "--json"], cwd=work, capture_output=True, text=True, check=True,
                             timeout=300, env=dict(os.environ, DVC_NO_ANALYTICS="1")).stdout
    finally:
        path.write_text(original)
    return set(json.loads(out))


@pytest.mark.parametrize("edited", ["models/clip/model.py", "models/stylegan3/synthesis_layer.py",
                                    "models/projected/fastgan.py"])
def test_dvc_status_after_a_code_edit_names_only_the_stages_that_import_it(code_only_pipeline: Path,
                                                                            edited: str) -> None:
    stale = _stale_after_edit(code_only_pipeline, edited)
    unit = dep_unit(ROOT / edited)
    assert stale == {name for name in DVC if unit in code_deps(name)}
    assert not stale & {"demo_data", "prepare", "validate"}, "data stages never depend on network code"
    if edited.startswith("models/clip/"):
        assert stale == {"generate"}, "only `generate rank` uses CLIP"
