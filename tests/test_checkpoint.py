"""Checkpoint writing, discovery, rotation and fault handling; sampler and stats state (no training)."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from stages.train import checkpoint as ckpt
from stages.train.data import InfiniteBatchSampler
from stages.train.stats import StatsCollector


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3, betas=(0.0, 0.99))
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"G": lin.state_dict(), "optimizers": {"G": opt.state_dict()}, "progress": {"cur_nimg": 8},
            "rng": [ckpt.rng_state()]}


def _save(run, nimg: int, keep: int = 3):
    return ckpt.save_checkpoint(run, _state(), nimg, {"config_hash": "x"}, keep=keep)


def test_roundtrip_is_weights_only_and_restores_rng(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    path = _save(tmp_path, 4000)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    state, meta = ckpt.load_checkpoint(path)
    assert meta["cur_nimg"] == 4000 and path.name == "ckpt-00004.000"
    # Loading with weights_only=True worked, so nothing in the file can execute code.
    assert torch.load(path / ckpt.STATE, weights_only=True)["progress"]["cur_nimg"] == 8
    torch.manual_seed(123)  # perturb, then restore the saved generators
    ckpt.set_rng_state(state["rng"][0])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
    opt_state = state["optimizers"]["G"]
    assert opt_state["param_groups"][0]["betas"] == (0.0, 0.99)


def test_incomplete_and_truncated_checkpoints_are_ignored(tmp_path):
    good = _save(tmp_path, 1000)
    # Folder with the final name but no marker (writer killed between rename and marker in an older scheme,
    # or copied by hand): never picked.
    partial = tmp_path / "checkpoints" / ckpt.checkpoint_name(2000)
    shutil.copytree(good, partial)
    (partial / ckpt.COMMIT).unlink()
    # Marker present but state truncated.
    trunc = tmp_path / "checkpoints" / ckpt.checkpoint_name(3000)
    shutil.copytree(good, trunc)
    with (trunc / ckpt.STATE).open("r+b") as fh:
        fh.truncate(100)
    (tmp_path / "checkpoints" / ".ckpt-00004.000.tmp-999").mkdir()
    assert ckpt.find_latest(tmp_path) == good
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.load_checkpoint(trunc)


def test_corrupt_state_fails_checksum(tmp_path):
    path = _save(tmp_path, 1000)
    data = bytearray((path / ckpt.STATE).read_bytes())
    data[-20] ^= 0xFF
    (path / ckpt.STATE).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load_checkpoint(path)


def test_rotation_keeps_the_newest_k(tmp_path):
    for nimg in (1000, 2000, 3000, 4000, 5000):
        _save(tmp_path, nimg, keep=2)
    names = [p.name for p in ckpt.list_complete(tmp_path)]
    assert names == ["ckpt-00004.000", "ckpt-00005.000"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == names


def test_failure_while_writing_keeps_previous_and_raises(tmp_path, monkeypatch):
    good = _save(tmp_path, 1000)

    def broken_save(obj, fh):  # writes part of a file, then the disk "fills up"
        fh.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(ckpt.CheckpointError, match="No space left"):
        _save(tmp_path, 2000)
    assert ckpt.find_latest(tmp_path) == good
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [good.name]  # no temp folder left


def test_free_space_precheck(tmp_path, monkeypatch):
    good = _save(tmp_path, 1000)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 10))
    with pytest.raises(ckpt.CheckpointError, match="not enough free space"):
        _save(tmp_path, 2000)
    assert ckpt.find_latest(tmp_path) == good


def test_mismatched_shapes_are_named():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 4)
    with pytest.raises(ckpt.CheckpointError, match=r"weight: file \(4, 3\) vs model \(2, 3\)"):
        ckpt.load_module_state(a, b.state_dict(), "G")


def test_sampler_resumes_at_its_position():
    full = InfiniteBatchSampler(5, batch=4, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(6)]  # crosses epoch boundaries
    resumed = iter(InfiniteBatchSampler(5, batch=4, seed=3, start=3 * 4))
    assert [next(resumed) for _ in range(3)] == first[3:]
    for epoch in range(4):  # each epoch is a permutation
        flat = [i for b in first for i in b][epoch * 5:(epoch + 1) * 5]
        assert sorted(flat) == list(range(5))
    # Two processes split each global batch.
    r0, r1 = iter(InfiniteBatchSampler(5, 4, 3, rank=0, world=2)), iter(InfiniteBatchSampler(5, 4, 3, rank=1, world=2))
    assert next(r0) + next(r1) == first[0]


def test_stats_collector_moments_and_state(tmp_path):
    s = StatsCollector(jsonl=tmp_path / "stats.jsonl")
    s.report("a", torch.tensor([1.0, 3.0]))
    s.report("a", 5.0)
    s.report("empty", torch.zeros(0))
    state = s.state_dict()
    s2 = StatsCollector()
    s2.load_state_dict(state)
    assert s2.mean("a") == pytest.approx(3.0)
    means = s.flush({"Progress/tick": 7})
    assert means == {"a": pytest.approx(3.0), "Progress/tick": 7.0}
    line = json.loads((tmp_path / "stats.jsonl").read_text())
    assert line["a"]["num"] == 3 and line["a"]["std"] == pytest.approx(np.std([1, 3, 5]))
    assert "timestamp" in line and s.collect() == {}
    ada = StatsCollector("Loss/signs/real")
    ada.report("Loss/signs/fake", 1.0)
    assert np.isnan(ada.mean("Loss/signs/real"))


def test_curves_csv_from_stats_jsonl(tmp_path):
    from stages.train.stats import CURVE_COLUMNS, write_curves_csv

    jsonl = tmp_path / "stats.jsonl"
    jsonl.write_text(
        json.dumps({"Progress/kimg": {"num": 1, "mean": 4.0, "std": 0}, "Loss/G/loss": {"num": 8, "mean": 0.5,
                                                                                         "std": 0.1}}) + "\n"
        + json.dumps({"Progress/kimg": {"num": 1, "mean": 8.0, "std": 0}, "Progress/augment": {"num": 1, "mean": 0.25,
                                                                                               "std": 0}}) + "\n"
        + '{"Progress/kimg": {"num": 1, "mea'  # a line cut by a crash
    )
    assert write_curves_csv(jsonl, tmp_path / "curves.csv") == 2
    lines = (tmp_path / "curves.csv").read_text().splitlines()
    assert lines[0].split(",") == list(CURVE_COLUMNS)
    first, second = (dict(zip(CURVE_COLUMNS, line.split(","))) for line in lines[1:])
    assert (first["kimg"], first["G_loss"], first["augment_p"]) == ("4", "0.5", "")
    assert (second["kimg"], second["augment_p"], second["G_loss"]) == ("8", "0.25", "")
