"""Transfer learning: `--resume` from an official-layout pickle, with Freeze-D and a frozen mapping.

The pickle is written in the official persistence layout by the fakes of tests/test_legacy_pickle.py
(no NVIDIA code), from networks with exactly the shapes the `tiny` preset builds, with random weights.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from models import Discriminator, Generator
from stages.common.dataset import ImageFolderDataset
from stages.train import checkpoint as ckpt
from stages.train.config import TrainConfig
from stages.train.loop import train
from stages.train.options import resolve_options
from tests.test_legacy_pickle import _randomize, _record, install_fake_nvidia
from tests.test_train import cfg, make_zip


@pytest.fixture
def fake_nvidia(monkeypatch):
    return install_fake_nvidia(monkeypatch)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp("data") / "toy.zip")


def write_official_pickle(fake, path, data, channel_max: int | None = None) -> dict[str, torch.nn.Module]:
    opts = resolve_options(TrainConfig(data=str(data), cfg="tiny"), ImageFolderDataset(str(data)))
    g_kwargs, d_kwargs = opts.G_kwargs, opts.D_kwargs
    if channel_max is not None:  # a pretrained network of another width
        g_kwargs["synthesis_kwargs"]["channel_max"] = d_kwargs["channel_max"] = channel_max
    nets = {"G": _randomize(Generator(**g_kwargs), 1), "D": _randomize(Discriminator(**d_kwargs), 2),
            "G_ema": _randomize(Generator(**g_kwargs), 3)}
    src = "class Generator: pass\n"
    payload = {"training_set_kwargs": {"path": "pretrained.zip", "resolution": 16, "use_labels": False},
               **{k: _record(fake, m, src, m.init_kwargs) for k, m in nets.items()}}
    with open(path, "wb") as fh:
        pickle.dump(payload, fh)
    return nets


def test_resume_from_official_pickle_with_freeze_d_and_frozen_mapping(fake_nvidia, data, tmp_path):
    pkl = tmp_path / "pretrained.pkl"
    src = write_official_pickle(fake_nvidia, pkl, data)
    run_dir = train(cfg(data, tmp_path / "run", steps=2, resume=str(pkl), freezed=2, freeze_mapping=True))

    assert f"starting from network weights {pkl}" in (run_dir / "log.txt").read_text()
    opts = json.loads((run_dir / "training_options.json").read_text())
    assert opts["resume_pkl"] == str(pkl) and opts["ema_rampup"] is None  # official fine-tuning settings
    assert opts["D_kwargs"]["block_kwargs"]["freeze_layers"] == 2
    state, _ = ckpt.load_checkpoint(ckpt.find_latest(run_dir))
    ref = {k: m.state_dict() for k, m in src.items()}

    def same(net: str, name: str) -> bool:
        return torch.equal(state[net][name], ref[net][name])

    # Freeze-D: the first two D layers (fromrgb and conv0 of the highest-resolution block) are buffers,
    # so they keep the pretrained values; every later D layer trained.
    first = f"b{16}"
    frozen_d = [n for n in ref["D"] if n.startswith((f"{first}.fromrgb.", f"{first}.conv0."))]
    assert frozen_d and all(same("D", n) for n in frozen_d)
    assert not same("D", f"{first}.conv1.weight") and not same("D", "b4.out.weight")
    # Frozen mapping: the mapping weights are the pretrained ones, the synthesis weights moved.
    mapping = [n for n in ref["G"] if n.startswith("mapping.") and n != "mapping.w_avg"]
    assert mapping and all(same("G", n) for n in mapping)
    assert not same("G", "synthesis.b16.conv1.weight")
    assert not same("G", "mapping.w_avg")  # the running w average is a statistic, not a weight: it updates


def test_resume_from_pickle_of_other_shapes_names_the_tensors(fake_nvidia, data, tmp_path):
    pkl = tmp_path / "wide.pkl"
    write_official_pickle(fake_nvidia, pkl, data, channel_max=32)
    with pytest.raises(ckpt.CheckpointError) as info:
        train(cfg(data, tmp_path / "run", steps=1, resume=str(pkl)))
    msg = str(info.value)
    assert str(pkl) in msg and "[G]" in msg and "synthesis.b16.conv1.weight" in msg and "shape" in msg
