"""Write `notebook.ipynb` from the cells of `notebook.py` (`# %%` code cells, `# %% [markdown]` text cells).

    python examples/sync_notebook.py            # rewrite notebook.ipynb (no outputs)
    python examples/sync_notebook.py --check    # exit 1 when the two differ

The script is the source: it diffs well and is linted; the notebook is what people open.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT, NOTEBOOK = HERE / "notebook.py", HERE / "notebook.ipynb"


def script_cells(text: str) -> list[tuple[str, str]]:
    """[(kind, source)] with kind 'code' or 'markdown'; markdown lines lose their leading '# '."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        out.append((kind, "\n".join(lines).strip("\n")))
    return out


def notebook_cells(nb: dict) -> list[tuple[str, str]]:
    return [(c["cell_type"], "".join(c["source"]).strip("\n")) for c in nb["cells"]]


def build_notebook(cells: list[tuple[str, str]]) -> dict:
    def cell(kind: str, source: str, i: int) -> dict:
        lines = source.splitlines(keepends=True)
        base = {"cell_type": kind, "id": f"cell-{i}", "metadata": {}, "source": lines}
        return {**base, "execution_count": None, "outputs": []} if kind == "code" else base

    return {
        "cells": [cell(kind, src, i) for i, (kind, src) in enumerate(cells)],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def main(argv: list[str]) -> int:
    cells = script_cells(SCRIPT.read_text())
    if "--check" in argv:
        same = NOTEBOOK.is_file() and notebook_cells(json.loads(NOTEBOOK.read_text())) == cells
        print("in sync" if same else f"{NOTEBOOK.name} differs from {SCRIPT.name}: run {Path(__file__).name}")
        return 0 if same else 1
    NOTEBOOK.write_text(json.dumps(build_notebook(cells), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
