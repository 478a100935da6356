"""Export stage with StyleGAN3 generators: ONNX graphs with a dynamic batch, onnxruntime parity, the user
transform baked as a constant. Tiny networks (4 layers, <= 16 channels, 16 px) keep each export to seconds."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import ops.impl
from models import StyleGAN3Generator, save_snapshot
from stages.export.config import ExportConfig
from stages.export.exporter import export_all
from stages.export.onnx_export import describe_io, export_generator
from stages.export.parity import check_parity, make_inputs, ort_session, reference_images
from stages.generate.images import make_transform

RES = 16


def tiny_sg3(cfg: str, c_dim: int = 0, seed: int = 0) -> StyleGAN3Generator:
    torch.manual_seed(seed)
    kw: dict = dict(conv_kernel=1, use_radial_filters=True) if cfg == "r" else {}
    G = StyleGAN3Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=RES, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=16, num_layers=4,
                           num_critical=2, **kw)
    with torch.no_grad():
        G.mapping.w_avg.normal_()  # psi must visibly matter
    return G.eval().requires_grad_(False)


MOVE = np.linalg.inv(make_transform((0.1, -0.05), 20.0))  # what `generate images --translate --rotate` sets


@pytest.fixture(scope="module")
def r16(tmp_path_factory):
    """The whole stage on a conditional -r network whose transform is set, from a snapshot file. fp16 and
    onnxslim are left to tests/test_export.py to keep this file fast (on this network they give 79 dB)."""
    root = tmp_path_factory.mktemp("export_sg3")
    G = tiny_sg3("r", c_dim=2)
    G.synthesis.input.transform.copy_(torch.from_numpy(MOVE))
    path = save_snapshot(root / "net.safetensors", {"G_ema": G})
    config = ExportConfig(network=str(path), outdir=str(root / "exports"), fp16=False, simplify=False,
                          triton_instance_kind="KIND_CPU")
    return G, Path(config.outdir), export_all(config)


def test_stage_outputs_and_parity(r16):
    _, out, summary = r16
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and summary["parity"]["passed"]
    for name in ("generator", "synthesis"):
        assert report["variants"][name]["max_abs_err"] <= 1e-5  # measured 1.8e-7
    assert report["variants"]["generator_uint8"]["max_level_diff"] <= 1
    io = describe_io(onnx.load(out / "generator.onnx"))
    assert [i["name"] for i in io["inputs"]] == ["z", "c", "truncation_psi"]  # the transform is no input
    assert io["outputs"][0]["shape"] == ["batch", 3, RES, RES]
    assert (out / "model_repository" / "stylegan2_generator" / "1" / "model.onnx").is_file()
    np.testing.assert_allclose(summary["transform"], MOVE, rtol=0, atol=1e-7)
    # The export context put every shape reader back.
    for name in ("ops.filtered_lrelu", "ops.modulated_conv", "models.stylegan3.synthesis",
                 "models.stylegan3.synthesis_layer"):
        assert importlib.import_module(name).static_shape is ops.impl.static_shape, name


def test_transform_is_baked_at_export_time(r16):
    G, out, _ = r16
    sess = ort_session(str(out / "generator.onnx"), ["CPUExecutionProvider"])
    feeds = make_inputs(G, 3, (1.0, 0.7), seed=11)
    img = sess.run(None, feeds)[0]
    np.testing.assert_allclose(img, reference_images(G, feeds), rtol=0, atol=1e-5)
    unmoved = G.synthesis.input.transform.clone()
    try:
        G.synthesis.input.transform.copy_(torch.eye(3))
        identity = reference_images(G, feeds)
    finally:
        G.synthesis.input.transform.copy_(unmoved)
    assert np.abs(img - identity).max() > 1e-2  # the graph renders the moved image, not the identity one


def test_translation_equivariant_t_config_dynamic_batch():
    G = tiny_sg3("t", seed=3)
    model = export_generator(G)
    report = check_parity(G, {"generator": model}, batches=(1, 5), psi_values=(1.0, 0.5))
    assert report["passed"], report
    assert report["variants"]["generator"]["max_abs_err"] <= 1e-5
    assert [v["shape"][0] for v in report["variants"]["generator"]["per_batch"].values()] == [1, 5]
