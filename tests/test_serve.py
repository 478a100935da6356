"""Deployment from an export folder, on 127.0.0.1: the CPU server (`python -m stages.export serve`), the Triton
client it shares with Triton (KServe v2 HTTP/JSON), exports/README.md, and build_engine.sh installing the engine
as a second Triton model (with a stand-in `trtexec`, since TensorRT needs a GPU)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from models import Generator, save_snapshot
from stages.common.images import nhwc, to_uint8
from stages.export.config import ExportConfig, ServeConfig
from stages.export.exporter import export_all
from stages.export.serve import make_server
from stages.export.triton import parse_pbtxt

ROOT = Path(__file__).resolve().parents[1]
Z = 8


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> tuple[Generator, Path]:
    out = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    G = Generator(z_dim=Z, c_dim=3, w_dim=Z, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=256, channel_max=16)).eval().requires_grad_(False)
    save_snapshot(out / "net.safetensors", {"G_ema": G})
    export_all(ExportConfig(network=str(out / "net.safetensors"), outdir=str(out / "exports"), parity_batches=(2,),
                            parity_psi=(1.0, 0.7), triton_instance_kind="KIND_CPU", batch_max=8))
    return G, out


@pytest.fixture()
def server(export_dir, request) -> Iterator[str]:
    model, precision = getattr(request, "param", ("exports/generator_uint8.onnx", "fp32"))
    srv = make_server(ServeConfig(model=str(export_dir[1] / model), port=0, max_batch=8, precision=precision))
    thread = threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def client(export_dir: tuple[Generator, Path]) -> Any:
    """The triton_client.py the export wrote, imported from the export folder (as a user runs it)."""
    spec = importlib.util.spec_from_file_location("exported_triton_client", export_dir[1] / "exports" /
                                                  "triton_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official(G: Generator, seeds: list[int], psi: float, cls: int) -> np.ndarray:
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(Z) for s in seeds]).astype(np.float32))
    c = torch.nn.functional.one_hot(torch.full([len(seeds)], cls), 3).float()
    with torch.no_grad():
        return nhwc(to_uint8(G(z, c, truncation_psi=psi, noise_mode="const", force_fp32=True)))


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def post(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_client_renders_seeds_through_the_server_as_the_official_generator(export_dir, server):
    G, _ = export_dir
    tc = client(export_dir)
    images = tc.render(server, "stylegan2_generator", [0, 5, 9], psi=0.7, class_idx=2, batch=2)
    assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 3)
    assert np.abs(images.astype(int) - official(G, [0, 5, 9], 0.7, 2).astype(int)).max() <= 1
    meta = tc.metadata(server, "stylegan2_generator")
    assert {t["name"]: t["shape"] for t in meta["inputs"]} == {"z": [-1, Z], "c": [-1, 3], "truncation_psi": [-1, 1]}
    assert meta["outputs"] == [{"name": "img_uint8", "datatype": "UINT8", "shape": [-1, 16, 16, 3]}]
    status, body, ctype = get(server + "/png?seed=5&psi=0.7&class=2")
    assert status == 200 and ctype == "image/png"
    assert np.array_equal(np.asarray(PIL.Image.open(io.BytesIO(body))), images[1])
    status, body = post(server + "/png", {"seeds": [9], "truncation_psi": 0.7, "class_idx": 2})
    png = PIL.Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png_base64"])))
    assert status == 200 and body["images"][0]["seed"] == 9 and np.array_equal(np.asarray(png), images[2])
    assert get(server + "/v2/health/ready")[0] == 200


def test_bad_requests_get_400_with_one_line(export_dir, server):
    for status, body in (
        post(server + "/v2/models/stylegan2_generator/infer", {"inputs": [{"name": "z", "shape": [1, Z],
                                                                            "datatype": "FP32", "data": [0] * Z}]}),
        post(server + "/png", {"seeds": list(range(9)), "class_idx": 0}),   # more than max_batch
        post(server + "/png", {"seeds": [1]}),                              # conditional: class missing
        (lambda r: (r[0], json.loads(r[1])))(get(server + "/png?seed=x")),
    ):
        assert status == 400 and "\n" not in body["error"], body
    for status, body in (  # non-finite psi: an error, not black images
        (lambda r: (r[0], json.loads(r[1])))(get(server + "/png?seed=1&class=0&psi=nan")),
        post(server + "/png", {"seeds": [1], "class_idx": 0, "truncation_psi": float("inf")}),
        post(server + "/v2/models/stylegan2_generator/infer", {"inputs": [
            {"name": "z", "shape": [1, Z], "datatype": "FP32", "data": [0] * Z},
            {"name": "c", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 0]},
            {"name": "truncation_psi", "shape": [1, 1], "datatype": "FP32", "data": ["NaN"]}]}),
    ):
        assert status == 400 and "finite" in body["error"] and "\n" not in body["error"], body
    assert get(server + "/nowhere")[0] == 404

    # A huge Content-Length is refused before reading (it used to allocate that much and kill the thread).
    import http.client

    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/png")
    conn.putheader("Content-Length", str(10**11))
    conn.endheaders()
    conn.send(b"{}")
    reply = conn.getresponse()
    assert reply.status == 400 and "at most" in json.loads(reply.read())["error"]
    conn.close()
    assert get(server + "/v2/health/ready")[0] == 200  # and the server still answers


@pytest.mark.parametrize("server", [("net.safetensors", "bf16")], indirect=True)
def test_a_snapshot_served_in_bf16(export_dir, server):
    G, _ = export_dir
    images = client(export_dir).render(server, "stylegan2_generator", [0, 1, 2, 3], psi=1.0, class_idx=1)
    diff = np.abs(images.astype(int) - official(G, [0, 1, 2, 3], 1.0, 1).astype(int))
    assert np.percentile(diff, 99.9) <= 8 and diff.mean() < 1.5


def test_readme_and_the_engine_install_into_the_triton_repository(export_dir, tmp_path):
    """build_engine.sh with a stand-in trtexec (writes the file named by --saveEngine) installs generator.plan as
    the model `<name>_trt` whose config matches generator.onnx's inputs and outputs."""
    _, root = export_dir
    out = root / "exports"
    readme = (out / "README.md").read_text()
    for text in ("generator_uint8.onnx", "stages.export serve", "build_engine.sh", "stylegan2_generator_trt",
                 "triton_client.py --url http://localhost:8000"):
        assert text in readme, text
    fake = tmp_path / "trtexec"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --saveEngine=*) echo plan > "${a#*=}";; esac; done\n')
    fake.chmod(0o755)
    subprocess.run(["bash", str(out / "build_engine.sh")], env=dict(os.environ, TRTEXEC=str(fake)), check=True,
                   capture_output=True, timeout=60)
    model = out / "model_repository" / "stylegan2_generator_trt"
    assert (model / "1" / "model.plan").read_text() == "plan\n"
    cfg = parse_pbtxt((model / "config.pbtxt").read_text())
    onnx_cfg = parse_pbtxt((out / "model_repository" / "stylegan2_generator" / "config.pbtxt").read_text())
    assert cfg["platform"] == "tensorrt_plan" and cfg["name"] == "stylegan2_generator_trt"
    assert cfg["instance_group"][0]["kind"] == "KIND_GPU" and cfg["max_batch_size"] == 8
    assert [t["name"] for t in cfg["input"]] == [t["name"] for t in onnx_cfg["input"]]
    assert [(t["name"], t["data_type"], t["dims"]) for t in cfg["output"]] == [("img", "TYPE_FP32", [3, 16, 16])]
    tc = client(export_dir)  # the client converts the engine's float NCHW output by the official rule
    x = np.linspace(-1.2, 1.2, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    got = tc.to_images({"datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()})
    assert np.array_equal(got, nhwc(to_uint8(torch.from_numpy(x))))


def test_serve_cli_prints_its_address_and_answers(export_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.export", "serve", "--model", str(export_dir[1] / "exports" /
                                                                          "generator_uint8.onnx"), "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving "), line + proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" on ")[1].split()[0]
        assert get(url + "/v2/health/ready")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    from stages.export.cli import main

    assert main(["serve", "--model", str(export_dir[1] / "missing.onnx")]) == 2
