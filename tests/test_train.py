"""End-to-end training on CPU: tiny preset, 16 px, batch 4, a few steps (one tick per step)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from stages.common.config import ConfigError
from stages.train import checkpoint as ckpt
from stages.train.cli import main as cli_main
from stages.train.config import TrainConfig
from stages.train.loop import train
from stages.train.phases import TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
STEP_KIMG = 0.004  # one batch of 4


def make_zip(path: Path, n: int = 8, res: int = 16, labels: bool = False, classes: int = 2) -> Path:
    """A dataset in the official layout: 00000/img########.png + dataset.json."""
    rng = np.random.RandomState(0)
    entries = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            buf = io.BytesIO()
            PIL.Image.fromarray((rng.rand(res, res, 3) * 255).astype(np.uint8)).save(buf, "PNG")
            name = f"00000/img{i:08d}.png"
            zf.writestr(name, buf.getvalue())
            entries.append([name, i % classes])
        zf.writestr("dataset.json", json.dumps({"labels": entries if labels else None}))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_zip(tmp_path_factory.mktemp("data") / "toy.zip")


def cfg(data: Path, run_dir: Path, steps: int, **kw) -> TrainConfig:
    base = dict(data=str(data), run_dir=str(run_dir), cfg="tiny", aug="noaug", batch=4, kimg=steps * STEP_KIMG,
                tick_kimg=STEP_KIMG, snap=1, checkpoint_ticks=1, keep_checkpoints=2, workers=0, grid_w=2, grid_h=2)
    base.update(kw)
    return TrainConfig(**base)


def latest_state(run_dir: Path) -> dict:
    state, _ = ckpt.load_checkpoint(ckpt.find_latest(run_dir))
    return state


def assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs (max abs {(a.double() - b.double()).abs().max():.3g})"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_smoke_outputs_losses_and_fakes(data, tmp_path):
    run = train(cfg(data, tmp_path / "run", steps=2, metrics=("fid16_full",)))
    names = sorted(p.name for p in run.iterdir())
    # Snapshots less than 1 kimg apart carry kimg with three decimals, so each tick keeps its own.
    assert names == ["checkpoints", "curves.csv", "curves.png", "fakes000000.004.png", "fakes000000.008.png",
                     "fakes_init.png", "log.txt", "metric-fid16_full.jsonl", "network-snapshot-000000.004.safetensors",
                     "network-snapshot-000000.008.safetensors", "quality.csv", "reals.png", "stats.jsonl",
                     "training_options.json"]
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for key in ("Loss/G/loss", "Loss/D/loss", "Loss/G/reg", "Loss/D/reg"):
        assert np.isfinite(records[0][key]["mean"]), key
    assert records[1]["Progress/kimg"]["mean"] == pytest.approx(2 * STEP_KIMG)
    init = np.asarray(PIL.Image.open(run / "fakes_init.png"))
    assert init.shape == (32, 32, 3)
    assert not np.array_equal(init, np.asarray(PIL.Image.open(run / "fakes000000.008.png")))
    opts = json.loads((run / "training_options.json").read_text())
    assert opts["batch_size"] == 4 and opts["G_reg_interval"] == 4 and opts["D_reg_interval"] == 16
    log = (run / "log.txt").read_text()
    assert "metric fid16_full: fid16_full" in log and "tick 1" in log  # Inception, offline
    from models import load_network

    nets = load_network(run / "network-snapshot-000000.008.safetensors")
    assert_same(nets["G_ema"].state_dict(), latest_state(run)["G_ema"], "snapshot G_ema")


def test_resume_is_bit_exact(data, tmp_path):
    """2 steps straight == 1 step, checkpoint, resume, 1 step: weights, optimizers, RNG, counters, stats.

    Bit-identical (torch.equal), not within a tolerance: same process, same thread count, and every
    random draw comes from restored generators. Step 1 runs all four phases, step 2 only Gmain/Dmain.
    """
    straight = train(cfg(data, tmp_path / "a", steps=2))
    first = train(cfg(data, tmp_path / "b", steps=1))
    resumed = train(cfg(data, tmp_path / "b", steps=2, resume="latest"))
    assert first == resumed
    a, b = latest_state(straight), latest_state(resumed)
    for key in ("G", "D", "G_ema", "optimizers", "loss", "rng", "sampler_position", "stats"):
        assert_same(a[key], b[key], key)
    assert {k: v for k, v in a["progress"].items() if k != "elapsed_sec"} == \
        {k: v for k, v in b["progress"].items() if k != "elapsed_sec"}
    assert "resuming from checkpoint" in (resumed / "log.txt").read_text()


def test_nan_stops_with_phase_and_tick_and_keeps_checkpoint(data, tmp_path, monkeypatch):
    import models.loss

    real = models.loss.g_nonsaturating_loss
    calls = {"n": 0}

    def poisoned(logits):
        calls["n"] += 1
        out = real(logits)
        return out * float("nan") if calls["n"] > 1 else out  # step 1 fine, step 2 diverges

    monkeypatch.setattr(models.loss, "g_nonsaturating_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"phase Gmain at tick 1"):
        train(cfg(data, tmp_path / "run", steps=3))
    good = ckpt.find_latest(tmp_path / "run")
    assert good is not None and good.name == ckpt.checkpoint_name(4)


def test_dry_run_prints_table_and_writes_nothing(data, tmp_path, capsys):
    assert cli_main(["--data", str(data), "--outdir", str(tmp_path / "runs"), "--cfg", "tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "G_kwargs.synthesis_kwargs.channel_base" in out and "batch_size" in out
    assert not (tmp_path / "runs").exists()


def test_user_errors_are_one_line(data, tmp_path, capsys):
    assert cli_main(["--data", str(data), "--cfg", "bogus", "--outdir", str(tmp_path)]) == 2
    assert cli_main(["--data", str(tmp_path / "missing.zip"), "--outdir", str(tmp_path)]) == 2
    assert cli_main(["--data", str(data), "--aug", "noaug", "--p", "0.5", "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("python -m stages.train: error: ") for line in err), err
    assert "Traceback" not in "".join(err)
    with pytest.raises(ConfigError, match="cond"):
        train(cfg(data, tmp_path / "c", steps=1, cond=True))


def test_explicit_run_dir_with_checkpoints_needs_resume(data, tmp_path):
    ckpt.save_checkpoint(tmp_path / "run", {"x": torch.zeros(1)}, 4, {"config_hash": "x"}, keep=1)
    with pytest.raises(ConfigError, match="--resume latest"):
        train(cfg(data, tmp_path / "run", steps=1))


# ------------------------------------------------------------------------------------------------
# The command line in a subprocess: signals and hard kills.


def _start_cli(data: Path, run: Path, steps: int, *extra: str, workers: int = 0) -> subprocess.Popen:
    args = [sys.executable, "-m", "stages.train", "--data", str(data), "--run-dir", str(run), "--cfg", "tiny",
            "--aug", "noaug", "--batch", "4", "--kimg", str(steps * STEP_KIMG), "--tick-kimg", str(STEP_KIMG),
            "--snap", "1", "--workers", str(workers), "--grid-w", "2", "--grid-h", "2", *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for training progress")
        time.sleep(0.2)


def test_sigterm_writes_checkpoint_and_exits_zero(data, tmp_path):
    run = tmp_path / "run"
    proc = _start_cli(data, run, 200, "--checkpoint-ticks", "1000")
    _wait_for(lambda: (run / "log.txt").exists() and "tick 0" in (run / "log.txt").read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by signal" in out
    latest = ckpt.find_latest(run)
    assert latest is not None and 0 < json.loads((latest / ckpt.META).read_text())["cur_nimg"] < 800


def test_sigterm_to_process_group_with_loader_workers(data, tmp_path):
    # Ctrl-C, Slurm and Kubernetes signal the whole process group, DataLoader workers included.
    run = tmp_path / "run"
    proc = _start_cli(data, run, 200, "--checkpoint-ticks", "1000", workers=2)
    _wait_for(lambda: (run / "log.txt").exists() and "tick 0" in (run / "log.txt").read_text(), proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stopped by signal" in out and ckpt.find_latest(run) is not None


def test_crash_with_loader_workers_exits_instead_of_hanging(data, tmp_path):
    # The reader of our stdout disappears (a killed `dvc repro`), then the group gets SIGTERM: logging
    # fails with a broken pipe, the loop dies, and workers that ignore SIGTERM must not block the exit.
    run = tmp_path / "run"
    proc = _start_cli(data, run, 200, "--checkpoint-ticks", "1000", workers=2)
    _wait_for(lambda: (run / "log.txt").exists() and "tick 0" in (run / "log.txt").read_text(), proc)
    proc.stdout.close()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("training hung after its stdout closed and SIGTERM")
    time.sleep(1)
    leftover = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not leftover, f"worker processes left behind: {leftover}"


@pytest.mark.slow
def test_kill9_then_resume_latest(data, tmp_path):
    run = tmp_path / "run"
    proc = _start_cli(data, run, 200, "--checkpoint-ticks", "1")
    _wait_for(lambda: len(ckpt.list_complete(run)) >= 2, proc)
    proc.kill()  # SIGKILL: no handler, possibly mid-write
    proc.wait()
    before = ckpt.find_latest(run)
    nimg = json.loads((before / ckpt.META).read_text())["cur_nimg"]
    resume = _start_cli(data, run, nimg // 4 + 1, "--resume", "latest")
    out, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0, out
    assert f"resuming from checkpoint {before}" in out
    assert json.loads((ckpt.find_latest(run) / ckpt.META).read_text())["cur_nimg"] == nimg + 4


def test_resume_auto_continues_same_options_and_restarts_changed_ones(data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(cfg(data, run_dir, steps=1))
    # Same options, longer run (what `dvc repro` does after a crash or a kimg bump): continues.
    train(cfg(data, run_dir, steps=2, resume="auto"))
    assert "resuming from checkpoint" in (run_dir / "log.txt").read_text()
    assert len(ckpt.list_complete(run_dir)) == 2
    # A changed option (gamma): the old run is cleared and a new one starts from step 0.
    train(cfg(data, run_dir, steps=1, resume="auto", gamma=3.0))
    out = capsys.readouterr().out
    assert "options changed" in out and "gamma" in out.replace("r1_gamma", "gamma")
    assert "resuming" not in (run_dir / "log.txt").read_text()
    # Only the new run's single checkpoint is left, at the first step's image count.
    assert [p.name for p in ckpt.list_complete(run_dir)] == [ckpt.checkpoint_name(4)]
    assert json.loads((run_dir / "training_options.json").read_text())["loss_kwargs"]["r1_gamma"] == 3.0


def test_resuming_a_finished_run_trains_nothing_more(data, tmp_path):
    run_dir = tmp_path / "run"
    train(cfg(data, run_dir, steps=2))
    before = latest_state(run_dir)
    train(cfg(data, run_dir, steps=2, resume="auto"))
    assert "nothing to do" in (run_dir / "log.txt").read_text()
    assert_same(latest_state(run_dir), before, "state")
    assert (run_dir / "curves.csv").read_text().count("\n") == 3  # header + 2 ticks


def test_resume_from_older_checkpoint_sets_newer_aside_and_rewrites_history(data, tmp_path):
    """Going back to an earlier checkpoint of the same run: the newer ones of the abandoned trajectory
    are moved aside (never deleted, never outranking the new ones), and the ticks logged after the
    restored checkpoint are dropped from stats.jsonl before they are logged again."""
    straight = train(cfg(data, tmp_path / "a", steps=3, keep_checkpoints=5))
    run_dir = tmp_path / "b"
    train(cfg(data, run_dir, steps=3, keep_checkpoints=5))
    first = run_dir / ckpt.CKPT_DIR / ckpt.checkpoint_name(4)
    train(cfg(data, run_dir, steps=3, keep_checkpoints=5, resume=str(first)))

    assert [p.name for p in ckpt.list_complete(run_dir)] == [ckpt.checkpoint_name(n) for n in (4, 8, 12)]
    aside = [p for p in (run_dir / ckpt.CKPT_DIR).iterdir() if p.name.startswith("abandoned-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == [ckpt.checkpoint_name(n) for n in (8, 12)]
    assert_same(latest_state(straight)["G"], latest_state(run_dir)["G"], "G")
    ticks = [json.loads(line)["Progress/tick"]["mean"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert ticks == [0, 1, 2]
    assert (run_dir / "curves.csv").read_text().count("\n") == 4  # header + 3 ticks
    log = (run_dir / "log.txt").read_text()
    assert "moved to" in log and "2 stats.jsonl record(s)" in log


def test_per_process_state_shares_keep_totals_for_any_process_count():
    a = {"Loss/signs/real": torch.tensor([4.0, 2.0, 4.0], dtype=torch.float64)}
    b = {"Loss/signs/real": torch.tensor([4.0, -1.0, 3.0], dtype=torch.float64)}
    assert ckpt.share_sums([a, b], 1, 2) is b  # same process count: each its own partial sums
    total = ckpt.share_sums([a, b], 0, 3)      # other count: all on rank 0, so the reduction is unchanged
    assert torch.equal(total["Loss/signs/real"], torch.tensor([8.0, 1.0, 7.0], dtype=torch.float64))
    assert ckpt.share_sums([a, b], 2, 3) == {}
    assert ckpt.share_sums(a, 0, 1) is a       # a checkpoint written before per-process saving
    saved = [{"pl_mean": torch.tensor(1.0)}, {"pl_mean": torch.tensor(3.0)}]
    assert float(ckpt.share_loss_state(saved, 0, 1)["pl_mean"]) == 2.0   # other count: the mean
    assert float(ckpt.share_loss_state(saved, 1, 2)["pl_mean"]) == 3.0   # same count: its own
    assert ckpt.share_loss_state([{}, {}], 0, 1) == {}                     # a loss without state


def test_ada_speed_defaults_follow_transfer_learning_and_an_explicit_value_is_kept(data):
    """Official: p moves by one unit in 500 kimg, 100 when starting from pretrained weights; a speed the user
    gives is theirs in both cases (500 given explicitly under transfer learning used to become 100)."""
    from stages.common.dataset import ImageFolderDataset
    from stages.train.options import resolve_options

    ds = ImageFolderDataset(str(data))
    speed = {(given, transfer): resolve_options(TrainConfig(data=str(data), cfg="tiny", ada_kimg=given), ds,
                                                transfer_source="pretrained.pkl" if transfer else None).ada_kimg
             for given in (None, 500, 37) for transfer in (False, True)}
    assert speed == {(None, False): 500, (None, True): 100, (500, False): 500, (500, True): 500,
                     (37, False): 37, (37, True): 37}


def test_preset_batch_gpu_is_an_upper_bound_and_max_size_counts_images(data):
    from stages.common.dataset import ImageFolderDataset
    from stages.train.options import resolve_options

    c = TrainConfig(data=str(data), cfg="stylegan2", mirror=True)
    ds = ImageFolderDataset(str(data), xflip=True)
    opts = resolve_options(c, ds, num_processes=16)  # official: batch 32 over 16 GPUs = 2 each, one round
    assert (opts.batch_size, opts.batch_gpu) == (32, 2)
    assert resolve_options(c, ds, num_processes=8).batch_gpu == 4  # the preset's own per-GPU batch
    assert len(ds) == 16 and opts.training_set_kwargs["max_size"] == 8  # images, not mirrored copies


def test_resume_latest_skips_a_corrupt_newest_checkpoint(data, tmp_path):
    run_dir = tmp_path / "run"
    train(cfg(data, run_dir, steps=2))
    newest = ckpt.find_latest(run_dir)
    raw = bytearray((newest / ckpt.STATE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, so it still looks complete; only the checksum tells
    (newest / ckpt.STATE).write_bytes(bytes(raw))
    train(cfg(data, run_dir, steps=2, resume="latest"))
    log = (run_dir / "log.txt").read_text()
    assert "checksum does not match" in log
    assert f"resuming from checkpoint {run_dir / ckpt.CKPT_DIR / ckpt.checkpoint_name(4)}" in log
    assert ckpt.find_latest(run_dir).name == ckpt.checkpoint_name(8)
    ckpt.load_checkpoint(ckpt.find_latest(run_dir))  # rewritten, intact


def test_ada_raises_p_by_itself_on_a_100_image_subset(tmp_path):
    """The ADA controller alone moves p: on 100 images D's real-sign mean r_t quickly exceeds the 0.6
    target and p climbs from 0; with an unreachable target (r_t <= 1) p must stay at 0."""
    data = make_zip(tmp_path / "toy120.zip", n=120)
    common = dict(steps=32, aug="ada", subset=100, ada_kimg=1.0, tick_kimg=0.032, snap=100, checkpoint_ticks=100)
    run = train(cfg(data, tmp_path / "ada", **common))
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    p = [r["Progress/augment"]["mean"] for r in records]
    r_t = [r["Loss/signs/real"]["mean"] for r in records]
    assert p[0] == 0 and p[-1] > 0.05, p
    assert max(r_t) > 0.6
    opts = json.loads((run / "training_options.json").read_text())
    assert opts["training_set_kwargs"]["max_size"] == 100 and opts["ada_target"] == 0.6
    # Each adjustment moves p by batch * interval / (ada_kimg * 1000) = 0.016: p is a multiple of it.
    assert abs(p[-1] / 0.016 - round(p[-1] / 0.016)) < 1e-3
    unreachable = train(cfg(data, tmp_path / "never", target=1.0, **common))
    last = json.loads((unreachable / "stats.jsonl").read_text().splitlines()[-1])
    assert last["Progress/augment"]["mean"] == 0


def test_resume_latest_falls_back_past_a_refused_or_mismatched_newest_checkpoint(data, tmp_path):
    """A newest checkpoint whose checksum matches but whose contents the safe loader refuses (a disallowed
    global), or whose tensors have other shapes, is named and the previous intact one is used."""
    import datetime
    import hashlib

    run_dir = tmp_path / "run"
    train(cfg(data, run_dir, steps=2))
    newest = ckpt.find_latest(run_dir)

    def replace_state(obj) -> None:
        torch.save(obj, newest / ckpt.STATE)
        raw = (newest / ckpt.STATE).read_bytes()
        (newest / ckpt.COMMIT).write_text(json.dumps({"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}))

    good = latest_state(run_dir)
    replace_state({**good, "progress": {**good["progress"], "when": datetime.date(2026, 1, 1)}})
    train(cfg(data, run_dir, steps=3, resume="latest"))
    log = (run_dir / "log.txt").read_text()
    assert "cannot be loaded safely" in log and "datetime" in log
    assert f"resuming from checkpoint {run_dir / ckpt.CKPT_DIR / ckpt.checkpoint_name(4)}" in log

    newest = ckpt.find_latest(run_dir)
    good = latest_state(run_dir)
    replace_state({**good, "G": {k: v[..., :1] if v.ndim else v for k, v in good["G"].items()}})  # other shapes
    train(cfg(data, run_dir, steps=4, resume="latest"))
    log = (run_dir / "log.txt").read_text()
    assert "shape mismatch" in log and "used an older checkpoint" in log


def test_stylegan3_trains_resumes_exactly_and_follows_the_official_config(data, tmp_path, capsys):
    """The same loop trains the alias-free generator: no Greg phase, G and D learning rates of their own,
    batch-derived EMAs, and a resume that continues bit for bit."""
    straight = train(cfg(data, tmp_path / "straight", steps=4, cfg="stylegan3-tiny", snap=2, checkpoint_ticks=2))
    opts = json.loads((straight / "training_options.json").read_text())
    assert opts["G_reg_interval"] is None
    assert opts["G_opt_kwargs"]["lr"] == 0.0025 and opts["D_opt_kwargs"]["lr"] == 0.002
    assert opts["ema_kimg"] == 4 * 10 / 32 and opts["G_kwargs"]["magnitude_ema_beta"] == 0.5 ** (4 / 20000)
    assert opts["loss_kwargs"]["pl_weight"] == 0 and opts["loss_kwargs"]["style_mixing_prob"] == 0
    from models import StyleGAN3Generator, load_network

    assert isinstance(load_network(straight)["G_ema"], StyleGAN3Generator)
    resumed_dir = tmp_path / "resumed"
    train(cfg(data, resumed_dir, steps=2, cfg="stylegan3-tiny", snap=2, checkpoint_ticks=2))
    train(cfg(data, resumed_dir, steps=4, cfg="stylegan3-tiny", snap=2, checkpoint_ticks=2, resume="latest"))
    a, b = latest_state(straight), latest_state(resumed_dir)
    for key in ("G", "D", "G_ema", "optimizers"):
        assert_same(a[key], b[key], key)
    assert any(k.endswith("magnitude_ema") for k in a["G_ema"])  # the SG3 buffers travel in the checkpoint

    assert cli_main(["--data", str(data), "--cfg", "stylegan3-r", "--outdir", str(tmp_path)]) == 2
    assert "pass --gamma" in capsys.readouterr().err
    assert cli_main(["--data", str(data), "--cfg", "stylegan3-t", "--gamma", "2", "--pl-weight", "2",
                     "--outdir", str(tmp_path)]) == 2
    assert "--pl-weight: not used by --cfg stylegan3-t (StyleGAN3 configs train without" in capsys.readouterr().err


def test_stylegan3_r_blurs_the_discriminator_input_and_fades_it(data):
    from models.families import stylegan3_batch_rules
    from models.presets import resolve_preset
    from stages.common.dataset import ImageFolderDataset
    from stages.train.options import resolve_options

    ds = ImageFolderDataset(str(data))
    r = resolve_options(TrainConfig(data=str(data), cfg="stylegan3-r", gamma=2, batch=32), ds)
    assert r.loss_kwargs["blur_init_sigma"] == 10 and r.loss_kwargs["blur_fade_kimg"] == 200
    assert r.G_kwargs["conv_kernel"] == 1 and r.G_kwargs["use_radial_filters"] is True
    assert r.G_kwargs["channel_base"] == 65536 and r.G_kwargs["channel_max"] == 1024
    assert resolve_preset("stylegan3-r", 16).requires_gamma
    tuned = resolve_options(TrainConfig(data=str(data), cfg="stylegan3-r", gamma=2, batch=32), ds,
                            transfer_source="pretrained.pkl")
    assert tuned.loss_kwargs["blur_init_sigma"] == 0 and tuned.ema_rampup is None  # official: off when resuming
    assert stylegan3_batch_rules(64, radial=False, transfer=False)["blur_fade_kimg"] == 0

    from models.loss import StyleGAN2Loss

    loss = StyleGAN2Loss(None, None, lambda img, c: img.mean([1, 2, 3])[:, None], blur_init_sigma=10,
                         blur_fade_kimg=200)
    assert loss.blur_sigma(0) == 10 and loss.blur_sigma(100_000) == 5 and loss.blur_sigma(300_000) == 0
    img = torch.zeros(1, 1, 64, 64)
    img[..., 32, 32] = 1
    blurred = loss.run_D(img, None, blur_sigma=2.0)
    assert float(blurred) == pytest.approx(float(img.mean()), rel=1e-5)  # the blur keeps the mass


def test_fastgan_projected_trains_through_the_same_loop_and_resumes_exactly(data, tmp_path, capsys):
    """Projected GAN: hinge loss, the frozen EfficientNet and projections untouched by training, no Dreg
    phase, no augment pipe; resume continues bit for bit; options it would ignore are refused."""
    common = dict(cfg="fastgan_tiny", snap=2, checkpoint_ticks=2, aug=None)
    straight = train(cfg(data, tmp_path / "straight", steps=4, **common))
    opts = json.loads((straight / "training_options.json").read_text())
    assert (opts["G_class"], opts["D_class"]) == ("FastGANGenerator", "ProjectedDiscriminator")
    assert opts["G_reg_interval"] is None and opts["D_reg_interval"] is None and opts["augment_kwargs"] is None
    assert opts["G_opt_kwargs"]["lr"] == opts["D_opt_kwargs"]["lr"] == 0.0002
    state = latest_state(straight)
    from models import load_network
    from models.projected import ProjectedDiscriminator

    fresh = ProjectedDiscriminator(**opts["D_kwargs"]).state_dict()
    pretrained = [k for k in fresh if k.startswith("feature_network.pretrained.")]
    assert pretrained and all(torch.equal(state["D"][k], fresh[k]) for k in pretrained)  # ImageNet weights as loaded
    first, _ = ckpt.load_checkpoint(ckpt.list_complete(straight)[0])
    frozen = [k for k in fresh if k.startswith("feature_network.")]  # + the random projections
    assert all(torch.equal(state["D"][k], first["D"][k]) for k in frozen)
    trained = [k for k in fresh if k.startswith("discriminator.") and k.endswith("weight_orig")]
    assert trained and any(not torch.equal(state["D"][k], first["D"][k]) for k in trained)
    nets = load_network(straight)
    assert type(nets["G_ema"]).__name__ == "FastGANGenerator" and type(nets["D"]).__name__ == "ProjectedDiscriminator"

    resumed = tmp_path / "resumed"
    train(cfg(data, resumed, steps=2, **common))
    train(cfg(data, resumed, steps=4, resume="latest", **common))
    assert_same(state["G"], latest_state(resumed)["G"], "G")
    assert_same(state["optimizers"], latest_state(resumed)["optimizers"], "optimizers")

    assert cli_main(["--data", str(data), "--cfg", "fastgan_lite", "--gamma", "1", "--aug", "ada",
                     "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--gamma, --aug: not used by --cfg fastgan_lite" in err


def test_a_stop_within_the_kimg_of_the_last_tick_does_not_replace_its_snapshot() -> None:
    """Tick at 6.008 kimg writes network-snapshot-000006; SIGTERM at 6.048 used to write the same name over it."""
    import types

    from stages.train.artifacts import RunArtifacts

    writer = RunArtifacts.__new__(RunArtifacts)
    writer.opts = types.SimpleNamespace(kimg_tag=lambda nimg: f"{nimg // 1000:06d}")
    writer._tagged = {}
    assert writer.tag(6008) == "000006" and writer.tag(6008) == "000006"  # fakes and network of one tick
    assert writer.tag(6048) == "000006.048"
    assert writer.tag(7008) == "000007"
    writer.resumed_at(7500)  # a resumed run: the files of its start may carry the coarse name already
    assert writer.tag(7900) == "000007.900"
