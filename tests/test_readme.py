"""The README is a front door and the docs cannot go stale: checked against the tree at test time.

- README.md stays short (at most 200 lines); the reference lives under docs/.
- Every relative link in README.md and docs/*.md points to a file that exists (anchors ignored).
- Every `python -m <module>` (also `accelerate launch ... -m`, `torchrun ... -m`) names a module of this
  repository that can be run: `a/b.py`, or a package `a/b/` with `__main__.py` (checked by file, not import).
- docs/layout.md names every package directory under models/, stages/, ops/ and flows/ (a directory with
  `__init__.py`), and every path it names exists. A package added later fails here until it is documented.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LAYOUT = DOCS / "layout.md"
CODE_ROOTS = ("models", "stages", "ops", "flows")
MAX_README_LINES = 200

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")       # [text](target "title")
MODULE = re.compile(r"(?:\bpython3?(?:\.\d+)?|\baccelerate\s+launch|\btorchrun)\b[^\n`]*?\s-m\s+([A-Za-z_][\w.<>]*)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def package_dirs() -> list[str]:
    """Every package directory under the code roots, as `models/clip/`, read from the tree now."""
    found = []
    for top in CODE_ROOTS:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            if "__pycache__" not in init.parts:
                found.append(rel(init.parent) + "/")
    return found


def layout_paths(text: str) -> set[str]:
    """Repository paths named in code spans of docs/layout.md: `models/clip/`, `stages/train/loop.py`, ...

    A span is a path when it is one word with a `/` in it and no placeholder (`<step>`, `*`, `{a,b}`) and is
    not a URL or a command (those have spaces)."""
    paths = set()
    for span in CODE_SPAN.findall(text):
        token = span.strip()
        if "/" not in token or re.search(r"[\s<>*{}$~]|://", token):
            continue
        paths.add(token)
    return paths


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move reference material to docs/"


@pytest.mark.parametrize("doc", doc_files(), ids=rel)
def test_relative_links_point_to_existing_files(doc: Path):
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):   # http:, mailto:, same-page anchor
            continue
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{rel(doc)} links to missing files: {broken}"


def module_runs(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


@pytest.mark.parametrize("doc", doc_files(), ids=rel)
def test_python_m_names_a_module_of_this_repository(doc: Path):
    found = MODULE.findall(doc.read_text(encoding="utf-8"))
    named = {m.rstrip(".") for m in found if "<" not in m}      # `python -m stages.<step>` is a pattern, not a module
    missing = sorted(m for m in named if not module_runs(m))
    assert not missing, f"{rel(doc)} names modules that are not in the repository: {missing}"


def test_module_pattern_finds_the_commands():
    """The checks above are only as good as the pattern: it finds the forms the docs use."""
    text = ("`python -m stages.train --data x` and accelerate launch --config_file a.yaml -m stages.train "
            "and torchrun --nproc_per_node 2 -m stages.evaluate; python3 -m flows.sweep, python -m stages.<step>")
    assert MODULE.findall(text) == ["stages.train", "stages.train", "stages.evaluate", "flows.sweep", "stages.<step>"]
    assert LINK.findall("[a](docs/x.md#y) ![img](img/a.png) [u](https://e.org)") == \
        ["docs/x.md#y", "img/a.png", "https://e.org"]


def test_layout_names_every_package():
    text = LAYOUT.read_text(encoding="utf-8")
    named = layout_paths(text)
    missing = [p for p in package_dirs() if p not in named]
    assert not missing, f"docs/layout.md does not describe these packages (add a row for each): {missing}"


def test_layout_names_only_paths_that_exist():
    named = layout_paths(LAYOUT.read_text(encoding="utf-8"))
    assert named, "docs/layout.md names no paths"
    gone = sorted(p for p in named if not (ROOT / p).exists())
    assert not gone, f"docs/layout.md names paths that do not exist: {gone}"
