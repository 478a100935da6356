"""OpenVINO as the CPU deployment target: the export stage writes generator[_uint8].xml/.bin from its ONNX graphs,
parity.json gains OpenVINO fp32 and bf16 entries, and `render` / `serve` run an .xml.

Tolerances (image units, [-1, 1]): OpenVINO fp32 meets the ONNX graphs' gate, max abs error <= 1e-3 (measured
2-5e-6 on these networks), uint8 within one grey level; bf16 (the same IR compiled with INFERENCE_PRECISION_HINT
bf16) meets PSNR >= 30 dB against PyTorch fp32 (measured 38-62 dB on the tiny test networks, max abs 0.006-0.12;
34.7-36.5 dB on `--cfg auto` networks at 64-256 px, where eager PyTorch bf16 gives 35.9-38.1 dB).
A tiny conditional 32 px network, exported once through the CLI, is shared by the tests.
"""

from __future__ import annotations

import builtins
import importlib.util
import json
import threading
import urllib.request

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from models import save_snapshot
from stages.common.images import nhwc, to_uint8
from stages.export.onnx_export import describe_io
from stages.export.parity import Gate, check_parity, make_inputs, psnr, reference_images
from tests.test_export import Z, tiny_generator

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed (pip install openvino: the `export` extra)")

C_DIM = 4
FP32_ATOL = 1e-4       # tighter than the stage's 1e-3 gate: measured <= 5e-6
BF16_MIN_PSNR = 30.0   # the stage's default gate (export.openvino_bf16_psnr)
BF16_MAX_ABS = 0.25    # a sanity bound on the worst pixel (measured <= 0.12); the gate is the PSNR


def cpu_has_bf16() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`python -m stages.export` (in process) on a conditional 32 px snapshot; openvino is on by default."""
    from stages.export.cli import main

    root = tmp_path_factory.mktemp("openvino")
    G = tiny_generator(32, c_dim=C_DIM, seed=1)
    save_snapshot(root / "net.safetensors", {"G_ema": G})
    out = root / "exports"
    assert main(["--network", str(root / "net.safetensors"), "--outdir", str(out),
                 "--triton-instance-kind", "KIND_CPU"]) == 0
    return G, out


def official(G: torch.nn.Module, seeds: list[int], psi: float, cls: int) -> np.ndarray:
    """uint8 NHWC of the official call for the seeds (official seed rule, one-hot class)."""
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(Z) for s in seeds]).astype(np.float32))
    c = torch.nn.functional.one_hot(torch.full([len(seeds)], cls), C_DIM).float()
    with torch.no_grad():
        return nhwc(to_uint8(G(z, c, truncation_psi=psi, noise_mode="const", force_fp32=True)))


def levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@needs_openvino
def test_ir_written_beside_onnx(exported):
    _, out = exported
    for name in ("generator", "generator_uint8"):
        assert (out / f"{name}.xml").is_file() and (out / f"{name}.bin").stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    summary = json.loads((out / "export_summary.json").read_text())["openvino"]
    assert summary["enabled"] and summary["precisions"] == ["fp32", "bf16"]
    for name, ir in summary["ir"].items():  # same IO contract as the ONNX graph it came from
        assert describe_io(onnx.load(out / f"{name}.onnx")) == {"inputs": ir["inputs"], "outputs": ir["outputs"]}
        assert len(ir["sha256"]["bin"]) == 64


@needs_openvino
def test_parity_report_has_openvino_fp32_and_bf16(exported):
    _, out = exported
    report = json.loads((out / "parity.json").read_text())
    v = report["variants"]
    assert report["passed"]
    assert v["generator_openvino_fp32"]["gate"] == {"max_abs_err": 1e-3}
    assert v["generator_openvino_fp32"]["max_abs_err"] <= FP32_ATOL
    assert v["generator_uint8_openvino_fp32"]["max_level_diff"] <= 1
    for name in ("generator_openvino_bf16", "generator_uint8_openvino_bf16"):
        assert v[name]["gate"] == {"min_psnr_db": BF16_MIN_PSNR} and v[name]["psnr_db"] >= BF16_MIN_PSNR
        assert v[name]["passed"]
    assert v["generator_openvino_bf16"]["max_abs_err"] <= BF16_MAX_ABS
    # What ran: fp32 really in f32 (OpenVINO's own default on a bf16 CPU is bf16), bf16 where the CPU has it.
    assert v["generator_openvino_fp32"]["runtime"]["inference_precision"] == "f32"
    want = "bf16" if cpu_has_bf16() else "f32"
    assert v["generator_openvino_bf16"]["runtime"]["inference_precision"] == want
    metrics = json.loads((out / "export_summary.json").read_text())["parity"]
    assert {"parity.generator_openvino_bf16.psnr_db", "parity.generator_openvino_fp32.max_abs_err"} <= set(metrics)


@needs_openvino
def test_fp32_equals_pytorch(exported):
    from stages.export.openvino_export import OpenVINOSession

    G, out = exported
    sess = OpenVINOSession(out / "generator.xml", "fp32")
    for batch in (1, 5):  # one compiled model, dynamic batch
        feeds = make_inputs(G, batch, (1.0, 0.7, 0.5), seed=10 + batch)
        img = sess.run(None, feeds)[0]
        assert img.shape == (batch, 3, 32, 32) and img.dtype == np.float32
        np.testing.assert_allclose(img, reference_images(G, feeds), atol=FP32_ATOL, rtol=0)


@needs_openvino
def test_bf16_within_looser_tolerance(exported):
    from stages.export.openvino_export import OpenVINOSession

    G, out = exported
    feeds = make_inputs(G, 6, (1.0, 0.7, 0.5), seed=21)
    ref = reference_images(G, feeds)
    bf16 = OpenVINOSession(out / "generator.xml", "bf16").run(None, feeds)[0]
    fp32 = OpenVINOSession(out / "generator.xml", "fp32").run(None, feeds)[0]
    assert psnr(bf16, ref) >= BF16_MIN_PSNR and np.abs(bf16 - ref).max() <= BF16_MAX_ABS
    if cpu_has_bf16():  # the hint took effect: bf16 differs from fp32, and fp32 is not bf16 in disguise
        assert np.abs(bf16 - fp32).max() > 1e-3 > np.abs(fp32 - ref).max()


@needs_openvino
@pytest.mark.parametrize("graph", ["generator_uint8", "generator"])
def test_render_xml_gives_the_onnx_pngs(exported, tmp_path, graph):
    from stages.export.cli import main

    G, out = exported
    pngs = {}
    for suffix in (".onnx", ".xml"):
        folder = tmp_path / suffix[1:]
        assert main(["render", "--model", str(out / f"{graph}{suffix}"), "--seeds", "0-4", "--trunc", "0.7",
                     "--class", "2", "--outdir", str(folder), "--cpu"]) == 0
        pngs[suffix] = np.stack([np.asarray(Image.open(folder / f"seed{s:04d}.png")) for s in range(5)])
    assert pngs[".xml"].shape == (5, 32, 32, 3)
    assert levels(pngs[".xml"], pngs[".onnx"]) <= 1
    assert levels(pngs[".xml"], official(G, list(range(5)), 0.7, 2)) <= 1


@needs_openvino
def test_render_xml_in_bf16(exported, tmp_path):
    from stages.export.cli import main

    G, out = exported
    assert main(["render", "--model", str(out / "generator_uint8.xml"), "--precision", "bf16", "--seeds", "0-3",
                 "--class", "1", "--outdir", str(tmp_path)]) == 0
    img = np.stack([np.asarray(Image.open(tmp_path / f"seed{s:04d}.png")) for s in range(4)])
    assert psnr(img, official(G, list(range(4)), 1.0, 1), data_range=255.0) >= BF16_MIN_PSNR
    # An ONNX graph still runs in the precision it was exported in.
    assert main(["render", "--model", str(out / "generator_uint8.onnx"), "--precision", "bf16", "--seeds", "0",
                 "--class", "1", "--outdir", str(tmp_path)]) == 2


@needs_openvino
def test_conditional_network_keeps_its_class(exported):
    from stages.export.render import Renderer, describe_renderer

    G, out = exported
    ir, graph = Renderer(out / "generator_uint8.xml"), Renderer(out / "generator_uint8.onnx")
    assert describe_renderer(ir)["backend"] == "openvino"
    assert ir.input_names == ["z", "c", "truncation_psi"] and ir.c_dim == C_DIM and ir.z_dim == Z
    seeds = [3, 4]
    by_class = {cls: ir.render(seeds, 0.7, class_idx=cls) for cls in (0, 3)}
    for cls, img in by_class.items():
        assert levels(img, graph.render(seeds, 0.7, class_idx=cls)) <= 1
        assert levels(img, official(G, seeds, 0.7, cls)) <= 1
    assert levels(by_class[0], by_class[3]) > 8  # the class changes the image
    mixed = ir.render(seeds, 0.7, class_idx=[0, 3])  # per-image classes in one batch
    assert levels(mixed[0], by_class[0][0]) <= 1 and levels(mixed[1], by_class[3][1]) <= 1


@needs_openvino
def test_serve_runs_an_xml(exported):
    """The server takes its model through the Renderer, so an IR serves as the ONNX graph does."""
    from stages.export.config import ServeConfig
    from stages.export.render import Renderer
    from stages.export.serve import make_server

    _, out = exported
    srv = make_server(ServeConfig(model=str(out / "generator_uint8.xml"), port=0, max_batch=8))
    thread = threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        with urllib.request.urlopen(f"{url}/png?seed=3&psi=0.7&class=1", timeout=30) as r:
            served = np.asarray(Image.open(r))
        with urllib.request.urlopen(f"{url}/v2/models/stylegan2_generator", timeout=30) as r:
            meta = json.loads(r.read())
    finally:
        srv.shutdown()
        srv.server_close()
    assert levels(served, Renderer(out / "generator_uint8.onnx").render([3], 0.7, class_idx=1)[0]) <= 1
    assert [i["name"] for i in meta["inputs"]] == ["z", "c", "truncation_psi"]
    assert meta["inputs"][0]["shape"] == [-1, Z] and meta["outputs"][0]["datatype"] == "UINT8"


@needs_openvino
def test_session_is_thread_safe(exported):
    from stages.export.openvino_export import OpenVINOSession

    G, out = exported
    sess = OpenVINOSession(out / "generator_uint8.xml", "fp32")
    feeds = [make_inputs(G, 2 + i, (0.7,), seed=i) for i in range(4)]
    alone = [sess.run(None, f)[0] for f in feeds]
    together: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, sess.run(None, feeds[i])[0]))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(together[i], alone[i]) for i in range(4))
    with pytest.raises(ValueError, match="do not match"):
        sess.run(None, {"z": feeds[0]["z"]})


@needs_openvino
def test_gate_is_enforced(exported):
    from stages.export.openvino_export import OpenVINOSession

    G, out = exported
    sess = OpenVINOSession(out / "generator.xml", "bf16")
    report = check_parity(G, {"generator_openvino_bf16": sess}, batches=(2,),
                          gates={"generator_openvino_bf16": Gate(min_psnr_db=1000.0)})
    assert not report["passed"] and not report["variants"]["generator_openvino_bf16"]["passed"]
    assert not Gate(max_abs_err=1.0).passes({"max_abs_err": float("nan")})  # NaN images never pass


@needs_openvino
def test_broken_ir_is_bad_input(exported, tmp_path):
    from stages.export.cli import main

    _, out = exported
    (tmp_path / "lonely.xml").write_text((out / "generator.xml").read_text())  # no .bin beside it
    (tmp_path / "junk.xml").write_text("not an IR")
    (tmp_path / "junk.bin").write_bytes(b"\0")
    for name in ("lonely.xml", "junk.xml"):
        assert main(["render", "--model", str(tmp_path / name), "--seeds", "0", "--outdir", str(tmp_path)]) == 2


def test_refusal_without_openvino(monkeypatch, tmp_path, capsys):
    """Option on, package absent: one line, exit 1 (environment), before any export work."""
    from stages.export.cli import main

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    save_snapshot(tmp_path / "net.safetensors", {"G_ema": tiny_generator(16)})
    (tmp_path / "g.xml").write_text("<net/>")
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    assert main(["--network", str(tmp_path / "net.safetensors"), "--outdir", str(tmp_path / "exports")]) == 1
    assert main(["render", "--model", str(tmp_path / "g.xml"), "--seeds", "0", "--outdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("error: OpenVINO is not installed" in line for line in err), err
    assert "--no-openvino" in err[0]
    assert not (tmp_path / "exports" / "generator.onnx").exists()


def test_config_checks_openvino_fields():
    from stages.common.config import ConfigError
    from stages.export.config import ExportConfig

    assert ExportConfig(network="x").openvino  # on by default: the IR is the CPU deployment target
    for bad in (dict(openvino_precisions=("fp16",)), dict(openvino_precisions=()), dict(openvino_bf16_psnr=0.0)):
        with pytest.raises(ConfigError, match="openvino"):
            ExportConfig(network="x", **bad)
