"""The house rules of the layout, checked from the code: dvc.yaml deps follow the imports of each stage,
the lower layers never import the upper ones, and no package imports itself in a circle."""

from __future__ import annotations

import ast
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


def code_deps(stage: str) -> set[str]:
    """dvc.yaml-style dependency entries of a stage: `models`, `ops`, `stages/<package>`."""
    files = closure(sorted((ROOT / "stages" / stage).glob("*.py")))
    out = set()
    for f in files:
        rel = f.relative_to(ROOT).parts
        out.add(rel[0] if rel[0] in ("models", "ops") else "/".join(rel[:2]) if rel[0] == "stages" else rel[0])
    return {d for d in out if d not in ("stages/__init__.py",)}


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
