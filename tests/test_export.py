"""Export stage: ONNX graphs vs PyTorch through onnxruntime, Triton config, TensorRT script/refusal, MLflow.

Tiny networks (channel_base 512, channel_max 32, z/w 16) keep each torch.onnx (dynamo) export to a few
seconds; graphs are exported once per module and shared by the tests.
"""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from models import Generator, save_snapshot
from stages.common.images import nhwc, to_uint8
from stages.export.config import ExportConfig
from stages.export.exporter import export_all
from stages.export.onnx_export import add_uint8_output, describe_io, export_generator
from stages.export.parity import check_parity, make_inputs, ort_session, reference_images
from stages.export.tensorrt_build import (
    BatchProfile,
    TensorRTUnavailable,
    build_engine,
    profile_shapes,
    require_tensorrt,
    trtexec_command,
)
from stages.export.triton import parse_pbtxt

Z = 16


def tiny_generator(res: int, c_dim: int = 0, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(z_dim=Z, c_dim=c_dim, w_dim=Z, img_resolution=res, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32))
    with torch.no_grad():
        G.mapping.w_avg.normal_()  # a non-zero truncation centre, so psi visibly matters
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)  # baked const noise must show up in the graph
    return G.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def uncond32(tmp_path_factory):
    """The whole stage on an unconditional 32 px network (fp16 + onnxslim on), from a snapshot file."""
    out = tmp_path_factory.mktemp("export32")
    G = tiny_generator(32)
    save_snapshot(out / "net.safetensors", {"G_ema": G})
    config = ExportConfig(network=str(out / "net.safetensors"), outdir=str(out / "exports"), fp16=True,
                          simplify=True, triton_instance_kind="KIND_CPU")
    summary = export_all(config)
    return G, Path(config.outdir), summary


@pytest.fixture(scope="module")
def cond64():
    G = tiny_generator(64, c_dim=4, seed=1)
    return G, export_generator(G)


def test_stage_outputs_and_parity(uncond32):
    _, out, summary = uncond32
    for name in ("generator.onnx", "generator_uint8.onnx", "synthesis.onnx", "generator_fp16.onnx",
                 "synthesis_fp16.onnx", "parity.json", "build_engine.sh", "export_summary.json",
                 "model_repository/stylegan2_generator/1/model.onnx",
                 "model_repository/stylegan2_generator/config.pbtxt"):
        assert (out / name).is_file(), name
    assert not list(out.rglob(".*.tmp-*")), "temp files left behind"
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["batches"] == [1, 3, 8]
    for name in ("generator", "synthesis"):  # synthesis-only graph included
        assert report["variants"][name]["max_abs_err"] <= 1e-3
    assert report["variants"]["generator_uint8"]["max_level_diff"] <= 1
    assert report["variants"]["generator_fp16"]["psnr_db"] > 30
    for path in out.glob("*.onnx"):
        onnx.checker.check_model(onnx.load(path), full_check=True)
        assert onnx.load(path).opset_import[0].version >= 17
    assert json.loads((out / "export_summary.json").read_text())["parity"]["passed"]
    assert summary["simplify"]["generator"]["nodes"] <= summary["simplify"]["generator"].get("nodes_before", 10**9)


def test_fp16_keeps_float32_io(uncond32):
    _, out, _ = uncond32
    assert describe_io(onnx.load(out / "generator_fp16.onnx")) == describe_io(onnx.load(out / "generator.onnx"))


def test_conditional_64px_parity(cond64):
    G, model = cond64
    io = describe_io(model)
    assert [i["name"] for i in io["inputs"]] == ["z", "c", "truncation_psi"]
    assert io["inputs"][2]["shape"] == ["batch", 1] and io["outputs"][0]["shape"] == ["batch", 3, 64, 64]
    report = check_parity(G, {"generator": model, "generator_uint8": add_uint8_output(model)}, batches=(1, 3))
    assert report["passed"], report
    assert report["variants"]["generator"]["max_abs_err"] <= 1e-3


def test_dynamic_batch_one_session(cond64):
    G, model = cond64
    sess = ort_session(model, ["CPUExecutionProvider"])
    for b in (1, 5):
        feeds = make_inputs(G, b, (0.7, 1.0), seed=b)
        out = sess.run(None, feeds)[0]
        assert out.shape == (b, 3, 64, 64)
        np.testing.assert_allclose(out, reference_images(G, feeds), atol=1e-3)


def test_psi_is_an_input(uncond32):
    G, out, _ = uncond32
    sess = ort_session(str(out / "generator.onnx"), ["CPUExecutionProvider"])
    feeds = make_inputs(G, 2, (1.0,), seed=3)
    full = sess.run(None, feeds)[0]
    half = sess.run(None, {**feeds, "truncation_psi": np.full([2, 1], 0.5, np.float32)})[0]
    assert np.abs(full - half).max() > 1e-2
    untruncated = G(torch.from_numpy(feeds["z"]), None, noise_mode="const", force_fp32=True).numpy()
    np.testing.assert_allclose(full, untruncated, atol=1e-4)


def test_uint8_matches_official_conversion(uncond32):
    G, out, _ = uncond32
    feeds = make_inputs(G, 3, (1.0, 0.7, 0.5), seed=4)
    img = ort_session(str(out / "generator.onnx")).run(None, feeds)[0]
    u8 = ort_session(str(out / "generator_uint8.onnx")).run(None, feeds)[0]
    assert u8.dtype == np.uint8 and u8.shape == (3, 32, 32, 3)
    assert np.abs(u8.astype(int) - nhwc(to_uint8(img)).astype(int)).max() <= 1


def test_triton_config_matches_graph(uncond32):
    _, out, _ = uncond32
    root = out / "model_repository" / "stylegan2_generator"
    cfg = parse_pbtxt((root / "config.pbtxt").read_text())
    assert cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 32
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8, 32]
    assert cfg["instance_group"][0] == {"kind": "KIND_CPU", "count": 1}
    io = describe_io(onnx.load(root / "1" / "model.onnx"))
    dtypes = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}
    for key, section in (("inputs", "input"), ("outputs", "output")):
        got = [(t["name"], t["data_type"], t["dims"]) for t in cfg[section]]
        want = [(t["name"], dtypes[t["dtype"]], t["shape"][1:]) for t in io[key]]  # Triton dims omit batch
        assert got == want
        assert all(t["shape"][0] == "batch" for t in io[key])


def test_trtexec_command_and_profile():
    inputs = [{"name": "z", "shape": ["batch", 512]}, {"name": "truncation_psi", "shape": ["batch", 1]}]
    shapes = profile_shapes(inputs, BatchProfile(1, 8, 32))
    assert shapes["z"] == ((1, 512), (8, 512), (32, 512))
    cmd = trtexec_command("generator.onnx", "generator.plan", shapes, fp16=True, workspace_mb=2048)
    for part in ("trtexec", "--onnx=generator.onnx", "--saveEngine=generator.plan",
                 "--minShapes=z:1x512,truncation_psi:1x1", "--optShapes=z:8x512,truncation_psi:8x1",
                 "--maxShapes=z:32x512,truncation_psi:32x1", "--fp16", "--memPoolSize=workspace:2048"):
        assert part in cmd.split(), part
    assert "--fp16" not in trtexec_command("g.onnx", "g.plan", shapes, fp16=False)
    with pytest.raises(ValueError):
        BatchProfile(8, 4, 32)


def test_build_script(uncond32):
    _, out, _ = uncond32
    script = (out / "build_engine.sh").read_text()
    assert os.access(out / "build_engine.sh", os.X_OK)
    assert "--minShapes=z:1x16,truncation_psi:1x1" in script and "--onnx=synthesis.onnx" in script


def test_tensorrt_refusal(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed") as exc:
        require_tensorrt()
    assert "\n" not in str(exc.value)
    with pytest.raises(TensorRTUnavailable):
        build_engine(tmp_path / "g.onnx", tmp_path / "g.plan", {})
    from stages.export.cli import main

    assert main(["render", "--model", str(tmp_path / "missing.plan"), "--seeds", "0", "--outdir", str(tmp_path)]) == 2


def test_render_cli(uncond32, tmp_path):
    from PIL import Image

    from stages.export.cli import main

    G, out, _ = uncond32
    assert main(["render", "--model", str(out / "generator_uint8.onnx"), "--seeds", "0-2", "--trunc", "0.7",
                 "--outdir", str(tmp_path), "--cpu"]) == 0
    img = np.asarray(Image.open(tmp_path / "seed0002.png"))
    z = torch.from_numpy(np.random.RandomState(2).randn(1, Z).astype(np.float32))  # official seed rule
    ref = nhwc(to_uint8(G(z, None, truncation_psi=0.7, noise_mode="const", force_fp32=True).numpy()))[0]
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= 1


def test_cli_errors_are_one_line(capsys, tmp_path):
    from stages.export.cli import main

    assert main(["--help"]) == 0
    assert main(["--params", "/dev/null"]) == 2
    assert main(["--params", "/dev/null", "--network", str(tmp_path / "nope.safetensors"),
                 "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("python -m stages.export: error:") for line in err), err


def test_mlflow_registry_champion_moves_only_to_better_quality(uncond32, tmp_path, monkeypatch):
    import mlflow

    from stages.export.registry import is_better, register_generator
    from stages.export.render import Renderer

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)  # mlruns/mlartifacts land in the temp dir
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        _, out, _ = uncond32
        onnx = out / "generator_uint8.onnx"
        first = register_generator(onnx, "sg2-test", quality=("fd_effnet1k_full", 40.0, True),
                                   links={"train_run_id": "abc"}, metrics={"parity.generator.max_abs_err": 1e-5})
        assert first["champion"] and first["aliases"] == ["challenger", "champion"]
        model = mlflow.pyfunc.load_model("models:/sg2-test@champion")
        import pandas as pd

        images = model.predict(pd.DataFrame({"seed": [0, 5], "truncation_psi": [0.7, 1.0]}))
        expected = Renderer(onnx).render([0, 5], [0.7, 1.0])
        assert images.dtype == np.uint8 and np.array_equal(images, expected)
        # The optional columns are optional: seeds alone render at psi 1 (the README's example).
        assert np.array_equal(model.predict(pd.DataFrame({"seed": [0, 5]})), Renderer(onnx).render([0, 5], 1.0))

        worse = register_generator(onnx, "sg2-test", quality=("fd_effnet1k_full", 55.0, True))
        client = mlflow.MlflowClient()
        assert not worse["champion"]
        assert str(client.get_model_version_by_alias("sg2-test", "champion").version) == first["version"]
        assert str(client.get_model_version_by_alias("sg2-test", "challenger").version) == worse["version"]
        unknown = register_generator(onnx, "sg2-test", quality=("fd_effnet1k_full", None, True))
        assert not unknown["champion"]  # no number never replaces a champion that has one
        better = register_generator(onnx, "sg2-test", quality=("fd_effnet1k_full", 31.5, True))
        assert better["champion"]
        version = client.get_model_version_by_alias("sg2-test", "champion")
        assert str(version.version) == better["version"] and version.tags["quality.fd_effnet1k_full"] == "31.5"
        assert client.get_model_version("sg2-test", first["version"]).tags["train_run_id"] == "abc"
    finally:
        mlflow.set_tracking_uri(None)
    assert is_better(0.8, 0.7, lower_is_better=False) and not is_better(float("nan"), 1.0, True)


@pytest.mark.slow
@pytest.mark.parametrize("res", [128, 256])
def test_parity_large(res):
    G = tiny_generator(res, seed=2)
    report = check_parity(G, {"generator": export_generator(G)}, batches=(1, 3))
    assert report["passed"] and report["variants"]["generator"]["max_abs_err"] <= 1e-3
