"""The example notebook runs end to end on CPU: a tiny snapshot and a tiny CLIP stand in for ffhq and ViT-B/32.

Run under a real Jupyter kernel with nbclient (the `dev` extra), and as a plain script (its `.py` twin),
so a broken cell fails the suite whether or not Jupyter is installed.
"""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path

import pytest
import torch

from models import save_snapshot
from tests.test_generate import RES, tiny_g
from tests.test_rank import save_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SEEDS = 12


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_notebook", EXAMPLES / "sync_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_matches_its_script() -> None:
    sync = _sync_module()
    cells = sync.script_cells((EXAMPLES / "notebook.py").read_text())
    nb = json.loads((EXAMPLES / "notebook.ipynb").read_text())
    assert sync.notebook_cells(nb) == cells, "run: python examples/sync_notebook.py"
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")  # committed without outputs
    assert [kind for kind, _ in cells].count("code") == 5


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The notebook's NETWORK and CLIP_MODEL pointed at tiny files; no download is possible."""
    G = tiny_g()
    save_snapshot(tmp_path / "g.safetensors", {"G": G, "G_ema": G})
    save_tiny_clip(tmp_path / "clip")
    monkeypatch.setenv("SG2_NOTEBOOK_NETWORK", str(tmp_path / "g.safetensors"))
    monkeypatch.setenv("SG2_NOTEBOOK_CLIP", str(tmp_path / "clip"))
    monkeypatch.setenv("SG2_NOTEBOOK_SEEDS", str(SEEDS))
    monkeypatch.setenv("SG2_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports the project from any working directory
    return tmp_path


def test_notebook_runs_in_a_kernel(stand_ins: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(stand_ins)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1 + 2 + 1  # the sample grid, one top-k grid per prompt, the style-mixing grid
    text = "".join(o.get("text", "") for o in outputs)
    assert f"Generator: {RES} px" in text and "a smiling face [(" in text


def test_notebook_script_runs(stand_ins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(stand_ins)
    shown: list = []
    if importlib.util.find_spec("IPython") is not None:  # else the script falls back to print
        monkeypatch.setattr("IPython.display.display", shown.append)
    ns = runpy.run_path(str(EXAMPLES / "notebook.py"), run_name="__main__")
    assert ns["images"].shape == (SEEDS, 3, RES, RES)
    scores = ns["scores"]
    assert scores.shape == (SEEDS, 2) and bool(((scores >= -1) & (scores <= 1)).all())
    # The notebook's ranking is CLIP's own cosine similarity.
    clip = ns["clip"]
    expected = torch.nn.functional.normalize(clip.encode_image(clip.preprocess(ns["images"])), dim=1) @ \
        torch.nn.functional.normalize(clip.encode_text(clip.tokenize(ns["PROMPTS"])), dim=1).T
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert len(ns["mixes"]) == 3 and ns["mixes"][0].shape == (1, 3, RES, RES)
    if shown:
        assert len(shown) == 2 and shown[0].size == (3 * RES, 3 * RES)  # one top-9 grid per prompt
