"""validate: the great-expectations suite passes on a good dataset and fails on broken ones."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from stages.validate.cli import main
from stages.validate.config import ValidateConfig
from stages.validate.suite import ValidationFailed, validate_dataset


def make_zip(path: Path, sizes: list[int], labels: list[int] | None, dup: bool = False) -> Path:
    rs = np.random.RandomState(0)
    with zipfile.ZipFile(path, "w") as zf:
        names = []
        prev = None
        for i, s in enumerate(sizes):
            arr = rs.randint(0, 256, (s, s, 3)).astype(np.uint8)
            if dup and prev is not None and i == len(sizes) - 1:
                arr = prev
            prev = arr
            buf = io.BytesIO()
            PIL.Image.fromarray(arr).save(buf, "png")
            names.append(f"00000/img{i:08d}.png")
            zf.writestr(names[-1], buf.getvalue())
        zf.writestr(
            "dataset.json", json.dumps({"labels": None if labels is None else [list(x) for x in zip(names, labels)]})
        )
    return path


def test_good_dataset_passes(tmp_path, capsys):
    ds = make_zip(tmp_path / "good.zip", [16] * 6, [0, 1, 2, 0, 1, 2], dup=True)
    out = tmp_path / "reports" / "validation.json"
    assert main(["--dataset", str(ds), "--out", str(out), "--workers", "1"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["success"] and metrics["num_images"] == 6 and metrics["num_classes"] == 3
    assert metrics["resolution"] == 16 and metrics["channels"] == 3 and metrics["duplicates"] == 1
    assert metrics["class_counts"] == {"0": 2, "1": 2, "2": 2} and metrics["class_imbalance"] == 1.0
    assert metrics["expectations"]["few_duplicates"]["success"] is False  # warning only
    assert "PASSED" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["validation.json"]


def test_mixed_resolutions_fail(tmp_path):
    ds = make_zip(tmp_path / "mixed.zip", [16, 16, 32], None)
    out = tmp_path / "v.json"
    assert main(["--dataset", str(ds), "--out", str(out), "--workers", "1"]) == 1
    metrics = json.loads(out.read_text())
    assert not metrics["success"] and {"one_width", "one_height"} <= set(metrics["failed_critical"])


def test_out_of_range_and_negative_labels_fail(tmp_path):
    ds = make_zip(tmp_path / "lab.zip", [8] * 4, [0, 1, 2, 5])
    with pytest.raises(ValidationFailed) as info:
        validate_dataset(ValidateConfig(dataset=str(ds), out=str(tmp_path / "a.json"), num_classes=3, workers=1))
    assert info.value.summary["failed_critical"] == ["labels_in_range"]
    neg = make_zip(tmp_path / "neg.zip", [8] * 3, [0, -1, 1])
    with pytest.raises(ValidationFailed, match="labels_in_range"):
        validate_dataset(ValidateConfig(dataset=str(neg), out=str(tmp_path / "b.json"), workers=1))


def test_missing_dataset_is_a_one_line_error(tmp_path, capsys):
    assert main(["--dataset", str(tmp_path / "nope.zip"), "--out", str(tmp_path / "v.json")]) == 2
    expected = f"python -m stages.validate: error: dataset not found: {tmp_path / 'nope.zip'}"
    assert capsys.readouterr().err.strip() == expected
