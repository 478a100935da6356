"""`python -m stages.evaluate` end to end: tiny snapshot in a run folder, tiny dataset ZIP, stand-in detectors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models import save_snapshot
from stages.evaluate.cli import main as cli_main
from stages.evaluate.config import EvaluateConfig
from stages.metrics.detectors import OFFLINE_ENV
from stages.metrics.runner import MetricOptions, compute_metrics
from tests.test_metrics import make_detector_dir, make_zip, tiny_generator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run(tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("SG2_CACHE_DIR", str(tmp_path / "dl-cache"))   # never the user's cache
    monkeypatch.setenv(OFFLINE_ENV, "1")                              # and never a download
    monkeypatch.delenv("SG2_DETECTOR_DIR", raising=False)
    data = make_zip(tmp_path / "toy.zip", n=12, labels=True)
    run_dir = tmp_path / "runs" / "00000-toy"
    run_dir.mkdir(parents=True)
    G = tiny_generator(c_dim=2)
    tsk = dict(path=str(data), use_labels=True, max_size=12, xflip=False, resolution=16, random_seed=0)
    (run_dir / "training_options.json").write_text(json.dumps(dict(training_set_kwargs=tsk)))
    save_snapshot(run_dir / "network-snapshot-000000.safetensors", {"G": G, "G_ema": G}, training_set_kwargs=tsk)
    save_snapshot(run_dir / "network-snapshot-000004.safetensors", {"G": G, "G_ema": G}, training_set_kwargs=tsk)
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    return dict(tmp=tmp_path, data=data, run_dir=run_dir, params=params,
                detectors=make_detector_dir(tmp_path / "detectors", feature_dim=64))


def test_cli_end_to_end(run, capsys) -> None:
    out = run["tmp"] / "metrics.json"
    rc = cli_main(["--params", str(run["params"]), "--network", str(run["run_dir"]), "--metrics", "fid16_full,kid16",
                   "--detector-dir", str(run["detectors"]), "--cache-dir", str(run["tmp"] / "stats"),
                   "--out", str(out), "--batch-size", "8", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    assert set(results) == {"fid16_full", "kid16"} and results["fid16_full"] >= 0
    line = json.loads((run["run_dir"] / "metric-fid16_full.jsonl").read_text().splitlines()[-1])
    assert set(line) == {"results", "metric", "total_time", "total_time_str", "num_gpus", "snapshot_pkl", "timestamp"}
    assert line["snapshot_pkl"] == "network-snapshot-000004.safetensors"  # newest snapshot, relative to the run
    assert line["results"] == {"fid16_full": results["fid16_full"]} and line["num_gpus"] == 1
    assert list((run["tmp"] / "stats").glob("toy-*.npz"))  # real statistics cached (shared with kid: all rows)
    # Same seed, cached reals: same numbers on a second run.
    rc = cli_main(["--params", str(run["params"]), "--network", str(run["run_dir"]), "--metrics", "fid16_full",
                   "--detector-dir", str(run["detectors"]), "--cache-dir", str(run["tmp"] / "stats"),
                   "--out", str(out), "--batch-size", "8", "--no-progress"])
    # (The first run kept every real row for fid and kid together; alone, fid accumulates mean and covariance
    # batch by batch: the same statistics up to float64 summation order.)
    assert rc == 0 and json.loads(out.read_text())["fid16_full"] == pytest.approx(results["fid16_full"], rel=1e-9)


def test_cli_missing_detector_fails_or_skips(run, capsys) -> None:
    """No NVIDIA detector files: FID runs on the offline Inception port, precision/recall (VGG16's fc layers,
    which nothing installable has) fails in one line naming the file and why, or is skipped when asked."""
    out = run["tmp"] / "metrics.json"
    args = ["--params", str(run["params"]), "--network", str(run["run_dir"]), "--metrics", "fid16_full,pr163",
            "--detector-dir", str(run["tmp"] / "empty"), "--out", str(out), "--no-progress"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vgg16.pt" in err and "fully connected layers" in err
    assert "--detector-dir" in err and not out.exists()
    assert cli_main([*args, "--skip-missing-detectors", "--cache-dir", str(run["tmp"] / "stats")]) == 0
    assert set(json.loads(out.read_text())) == {"fid16_full"}  # Inception FID offline
    assert "skipped pr163: detector 'vgg16.pt' not found" in capsys.readouterr().err
    # The vgg16 stand-in present: pr computed from it, fid still from the offline port.
    (run["tmp"] / "empty").mkdir()
    shutil.copy(run["detectors"] / "vgg16.pt", run["tmp"] / "empty")
    assert cli_main([*args, "--cache-dir", str(run["tmp"] / "stats")]) == 0
    assert set(json.loads(out.read_text())) == {"fid16_full", "pr163_precision", "pr163_recall"}


def test_cli_bad_options_exit_2(run, capsys) -> None:
    assert cli_main(["--params", str(run["params"]), "--network", str(run["run_dir"]), "--metrics", "fid"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_compute_metrics_api_reads_snapshot_dataset_kwargs(run) -> None:
    snap = run["run_dir"] / "network-snapshot-000000.safetensors"
    out = compute_metrics(snap, ["is20"], options=MetricOptions(detector_dir=run["detectors"], progress=False))
    assert set(out["records"]["is20"]["results"]) == {"is20_mean", "is20_std"} and out["skipped"] == {}


def test_config_defaults_match_params_section() -> None:
    cfg = EvaluateConfig()
    assert cfg.metrics == ("fid50k_full",) and cfg.out == "metrics.json" and not cfg.skip_missing_detectors


@pytest.mark.slow
def test_cli_full_width_inception_standin(run) -> None:
    """2048-d stand-in features, as the real detector: exercises the full-size sqrtm path (~1 min on 2 cores)."""
    dets = make_detector_dir(run["tmp"] / "dets2048", feature_dim=2048)
    out = run["tmp"] / "m.json"
    assert cli_main(["--params", str(run["params"]), "--network", str(run["run_dir"]), "--metrics", "fid16_full",
                     "--detector-dir", str(dets), "--cache-dir", str(run["tmp"] / "s"), "--out", str(out),
                     "--no-progress"]) == 0
    assert json.loads(out.read_text())["fid16_full"] >= 0


def test_torchrun_two_processes_equal_one(run) -> None:
    """A real 2-process gloo launch (torchrun) gives the single-process numbers (~8 s)."""
    common = ["--params", str(run["params"]), "--network", str(run["run_dir"]), "--metrics", "kid16,pr163_full",
              "--detector-dir", str(run["detectors"]), "--batch-size", "4", "--no-progress", "--cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    one, two = run["tmp"] / "one.json", run["tmp"] / "two.json"
    subprocess.run([sys.executable, "-m", "stages.evaluate", *common, "--out", str(one),
                    "--cache-dir", str(run["tmp"] / "c1")], check=True, cwd=ROOT, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "stages.evaluate", *common, "--out", str(two), "--cache-dir", str(run["tmp"] / "c2")],
                   check=True, cwd=ROOT, env=env, timeout=300)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k
    line = json.loads((run["run_dir"] / "metric-kid16.jsonl").read_text().splitlines()[-1])
    assert line["num_gpus"] == 2


def test_fid_and_kid_of_one_size_share_their_feature_passes(run, monkeypatch) -> None:
    """fid16_full and kid16_full together: the same numbers as apart, with one generated and one real feature
    pass instead of two each (the demo evaluates fid2k_full and kid2k_full)."""
    from stages.metrics import runner

    calls = {"n": 0}
    opened = runner.open_detector

    def counting(*args, **kwargs):
        det, ident = opened(*args, **kwargs)

        def wrapped(images, **kw):
            calls["n"] += images.shape[0]
            return det(images, **kw)
        return wrapped, ident

    monkeypatch.setattr(runner, "open_detector", counting)
    snap = run["run_dir"] / "network-snapshot-000000.safetensors"
    opts = MetricOptions(detector_dir=run["detectors"], progress=False, use_cache=False)
    apart = {}
    for name in ("fid16_full", "kid16_full"):
        apart.update(compute_metrics(snap, [name], options=opts)["records"][name]["results"])
    images_apart, calls["n"] = calls["n"], 0
    together = compute_metrics(snap, ["fid16_full", "kid16_full"], options=opts)["records"]
    assert together["kid16_full"]["results"]["kid16_full"] == apart["kid16_full"]
    assert together["fid16_full"]["results"]["fid16_full"] == pytest.approx(apart["fid16_full"], rel=1e-9, abs=1e-9)
    assert calls["n"] * 2 == images_apart
