"""`python -m stages.generate explore` over HTTP, without a browser: the page and its files, /api/info, images
against the generator called directly (seed, psi, class, snapshot, interpolation, style mixing, StyleGAN3
translation, FFT view), dynamic batching, and hostile requests (4xx, and the server keeps serving).
Tiny networks on CPU; one server per network setup for the module."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from models import Generator, StyleGAN3Generator, load_generator, save_snapshot
from models.projected.fastgan import FastGANGenerator
from stages.common.images import nhwc, to_uint8
from stages.common.seeds import seeds_to_z
from stages.generate.config import ExploreConfig
from stages.generate.explore import make_explore_server
from stages.generate.images import make_transform

SG2_RES, SG3_RES = 16, 32
SNAPSHOTS = ("network-snapshot-000000.safetensors", "network-snapshot-000004.safetensors",
             "network-snapshot-000008.safetensors")


# ---------------------------------------------------------------------------------------------
# tiny networks and a server (also used by test_explore_browser.py)


def tiny_sg2(c_dim: int = 3, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=SG2_RES, img_channels=3,
                  mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 256, "channel_max": 16})
    with torch.no_grad():  # a non-zero w_avg makes truncation do something
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


def tiny_sg3(seed: int = 0) -> StyleGAN3Generator:
    torch.manual_seed(seed)
    G = StyleGAN3Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=SG3_RES, img_channels=3,
                           mapping_kwargs={"num_layers": 2}, channel_base=256, channel_max=16, num_layers=6,
                           num_critical=2)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


def tiny_fastgan() -> FastGANGenerator:
    torch.manual_seed(0)
    G = FastGANGenerator(z_dim=16, img_resolution=32, ngf=8)
    norms = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:  # statistics of one batch: fresh (0, 1) statistics blow an untrained FastGAN up
        m.momentum = 1.0
    with torch.no_grad():
        G.train()(torch.randn(8, 16), None, noise_mode="none")
    return G.eval().requires_grad_(False)


def make_nets(root: Path) -> dict[str, Path]:
    """A conditional StyleGAN2 run folder of three snapshots (different weights), a StyleGAN3 and a FastGAN."""
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(SNAPSHOTS):
        G = tiny_sg2(seed=i)
        save_snapshot(run / name, {"G": G, "G_ema": G})
    (run / "log.txt").write_text("not a snapshot\n")
    sg3, fastgan = tiny_sg3(), tiny_fastgan()
    return {"run": run, "sg3": save_snapshot(root / "sg3.safetensors", {"G_ema": sg3}),
            "fastgan": save_snapshot(root / "fastgan.safetensors", {"G_ema": fastgan})}


@contextlib.contextmanager
def serving(**kwargs: Any) -> Iterator[tuple[Any, str]]:
    srv = make_explore_server(ExploreConfig(**{"port": 0, **kwargs}))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_nets(tmp_path_factory.mktemp("explore"))


@pytest.fixture(scope="module")
def server(nets) -> Iterator[str]:
    """The run folder (conditional StyleGAN2) beside the StyleGAN3 network."""
    with serving(network=str(nets["run"]), compare=str(nets["sg3"]), batch_window_ms=20.0, batch_size=8) as (_, url):
        yield url


def get(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
        ) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def image(url: str) -> np.ndarray:
    status, body, headers = get(url)
    assert status == 200 and headers["Content-Type"] == "image/png", body[:200]
    return np.asarray(PIL.Image.open(io.BytesIO(body)).convert("RGB")).astype(int)


@torch.no_grad()
def reference(path: Path, seed: int, psi: float = 1.0, cls: int | None = None, seed2: int | None = None,
              t: float = 0.0, mix: tuple[int, int, int] | None = None,
              transform: np.ndarray | None = None) -> np.ndarray:
    """What the explorer should show, from the generator called directly (official recipes)."""
    G = load_generator(path)
    c = torch.zeros([1, G.c_dim])
    if cls is not None:
        c[0, cls] = 1

    def w(s: int) -> torch.Tensor:
        return G.mapping(seeds_to_z([s], G.z_dim), c, truncation_psi=psi)

    ws = w(seed)
    if seed2 is not None:
        ws = torch.lerp(ws, w(seed2), t)
    if mix is not None:
        ws[:, mix[1] : mix[2] + 1] = w(mix[0])[:, mix[1] : mix[2] + 1]
    if transform is not None:
        G.synthesis.input.transform.copy_(torch.from_numpy(np.linalg.inv(transform)))
    return nhwc(to_uint8(G.synthesis(ws, noise_mode="const")))[0].astype(int)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to one grey level: a batch of 8 and a batch of 1 may round a pixel differently."""
    return a.shape == b.shape and np.abs(a - b).max() <= 1


# ---------------------------------------------------------------------------------------------
# the page


def test_page_and_its_files_are_served_locally(server):
    status, html, headers = get(server + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    page = html.decode()
    assert '<script src="/static/explore.js"' in page and 'href="/static/explore.css"' in page
    for name in ("explore.js", "explore.css"):
        status, body, headers = get(server + "/static/" + name)
        assert status == 200 and len(body) > 500
        page += body.decode()
    # no CDN: nothing the page loads comes from elsewhere
    for needle in ('src="http', "src='http", 'href="http', "@import", "url(http", "fetch('http", 'fetch("http'):
        assert needle not in page, needle


def test_info_describes_both_networks_and_the_snapshots(server, nets):
    info = json.loads(get(server + "/api/info")[1])
    a, b = info["networks"]
    assert a["kind"] == "run" and [s["name"] for s in a["snapshots"]] == list(SNAPSHOTS)
    assert a["snapshot"] == SNAPSHOTS[-1] and [s["kimg"] for s in a["snapshots"]] == [0, 4, 8]
    assert (a["c_dim"], a["num_ws"], a["resolution"], a["features"]["transform"]) == (3, 6, SG2_RES, False)
    assert a["features"]["mixing"] and a["features"]["truncation"]
    assert b["family"] == "StyleGAN3Generator" and b["features"]["transform"] and not b["features"]["noise"]
    assert info["defaults"]["seed"] == 0 and info["limits"]["max_batch"] == 8


# ---------------------------------------------------------------------------------------------
# images


def test_images_are_the_generators_own(server, nets):
    newest = nets["run"] / SNAPSHOTS[-1]
    assert close(image(server + "/api/image?seed=5&psi=0.7&class=1"), reference(newest, 5, 0.7, 1))
    assert close(image(server + "/api/image?net=1&seed=3"), reference(nets["sg3"], 3))
    # POST takes the same parameters as JSON
    status, body, _ = get(server + "/api/image", "POST", json.dumps({"seed": 5, "psi": 0.7, "class": 1}).encode())
    assert status == 200
    assert close(np.asarray(PIL.Image.open(io.BytesIO(body))).astype(int), reference(newest, 5, 0.7, 1))


def test_psi_zero_is_the_same_image_for_every_seed(server):
    first = image(server + "/api/image?seed=0&psi=0&class=2")
    for seed in (1, 77, 2**32 - 1):
        assert close(image(server + f"/api/image?seed={seed}&psi=0&class=2"), first)
    assert not close(image(server + "/api/image?seed=1&psi=1&class=2"),
                     image(server + "/api/image?seed=0&psi=1&class=2"))


def test_class_changes_the_output(server):
    images = [image(server + f"/api/image?seed=4&class={k}") for k in range(3)]
    assert not close(images[0], images[1]) and not close(images[1], images[2])


def test_snapshot_picker_renders_the_chosen_file(server, nets):
    for name in SNAPSHOTS[:2]:
        got = image(server + f"/api/image?seed=6&class=0&snap={name}")
        assert close(got, reference(nets["run"] / name, 6, cls=0))
    assert not close(image(server + f"/api/image?seed=6&class=0&snap={SNAPSHOTS[0]}"),
                     image(server + f"/api/image?seed=6&class=0&snap={SNAPSHOTS[1]}"))


def test_interpolation_and_style_mixing(server, nets):
    newest = nets["run"] / SNAPSHOTS[-1]
    assert close(image(server + "/api/image?seed=2&class=1&seed2=9&t=0"), reference(newest, 2, cls=1))
    assert close(image(server + "/api/image?seed=2&class=1&seed2=9&t=1"), reference(newest, 9, cls=1))
    assert close(image(server + "/api/image?seed=2&class=1&seed2=9&t=0.3"), reference(newest, 2, cls=1, seed2=9,
                                                                                       t=0.3))
    mixed = image(server + "/api/image?seed=85&class=0&mix=55&mix_lo=0&mix_hi=2")
    assert close(mixed, reference(newest, 85, cls=0, mix=(55, 0, 2)))
    assert not close(mixed, reference(newest, 85, cls=0))


def test_stylegan3_translation_moves_the_content(server, nets):
    a = image(server + "/api/image?net=1&seed=5")
    b = image(server + f"/api/image?net=1&seed=5&tx={4 / SG3_RES}&ty={-2 / SG3_RES}")  # 4 px right, 2 px up
    m = 6  # border pixels influenced by the padding of the feature maps
    assert np.abs(b[m : -m - 2, m + 4 : -m] - a[m + 2 : -m, m : -m - 4]).max() <= 1
    assert np.abs(b[m:-m, m:-m] - a[m:-m, m:-m]).max() > 10
    rotated = image(server + "/api/image?net=1&seed=5&rot=30&tx=0.1")
    assert close(rotated, reference(nets["sg3"], 5, transform=make_transform((0.1, 0.0), 30.0)))
    assert close(image(server + "/api/image?net=1&seed=5"), a)  # the transform does not stick


def test_fft_view_is_the_image_beside_its_spectrum(server):
    plain = image(server + "/api/image?net=1&seed=8")
    both = image(server + "/api/image?net=1&seed=8&view=fft")
    assert both.shape == (SG3_RES, 2 * SG3_RES, 3)
    assert np.array_equal(both[:, :SG3_RES], plain)
    spectrum = both[:, SG3_RES:]
    assert spectrum.std() > 5  # a colour map, not a flat field


def test_concurrent_requests_share_batches(server, nets):
    newest = nets["run"] / SNAPSHOTS[-1]
    urls = [server + f"/api/image?seed={s}&class={s % 3}&psi=0.5" for s in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(get, urls))
    sizes = [int(h["X-Batch-Size"]) for _, _, h in results]
    assert max(sizes) > 1, sizes
    for s, (status, body, _) in enumerate(results):
        assert status == 200
        got = np.asarray(PIL.Image.open(io.BytesIO(body))).astype(int)
        assert close(got, reference(newest, s, 0.5, s % 3)), s
    stats = json.loads(get(server + "/api/stats")[1])
    assert stats["batches"] < stats["requests"] and stats["rejected"] == 0


# ---------------------------------------------------------------------------------------------
# hostile requests: 4xx, one line, and the server keeps serving


BAD_QUERIES = [
    "seed=x&class=0", "seed=-1&class=0", "seed=4294967296&class=0", "seed=99999999999999999999999&class=0",
    "seed=1e3&class=0", "seed=0x10&class=0", "seed=%C2%B9&class=0", "seed=1&class=0&psi=nan", "seed=1&class=0&psi=inf",
    "seed=1&class=0&psi=-1e309", "seed=1&class=0&psi=1e3", "seed=1&class=3", "seed=1&class=-1", "seed=1&class=1.5",
    "seed=1", "class=0", "seed=1&class=0&unknown=1", "seed=1&class=0&noise=loud", "seed=1&class=0&cutoff=7",
    "seed=1&class=0&view=../../etc", "seed=1&class=0&tx=0.1", "seed=1&class=0&seed2=3", "seed=1&class=0&t=0.5",
    "seed=1&class=0&seed2=3&t=2", "seed=1&class=0&mix=3", "seed=1&class=0&mix=3&mix_lo=4&mix_hi=2",
    "seed=1&class=0&mix=3&mix_lo=0&mix_hi=6", "net=2&seed=1", "net=-1&seed=1", "net=1&seed=1&class=0",
    "net=1&seed=1&noise=random", "net=1&seed=1&rot=nan", "net=1&seed=1&tx=1e400", "%%%%&&==", "&&&",
    "seed=1&class=0&" + "&".join(f"f{i}=1" for i in range(40)), "seed=1&class=0&snap=..%2F..%2Fetc%2Fpasswd",
    "seed=1&class=0&snap=/etc/passwd", "seed=1&class=0&snap=network-snapshot-000099.safetensors",
    "seed=" + "9" * 5000,
]
BAD_BODIES = [
    b"", b"null", b"[]", b"{", b'{"seed": }', b"\xff\xfe", b'"seed"', b"[" * 50000 + b"]" * 50000,
    b'{"seed": NaN, "class": 0}', b'{"seed": 1, "class": 0, "psi": NaN}', b'{"seed": 1, "class": 0, "psi": Infinity}',
    b'{"seed": true, "class": 0}', b'{"seed": 1.5, "class": 0}', b'{"seed": [1], "class": 0}',
    b'{"seed": {"$gt": 1}, "class": 0}', b'{"seed": 1, "class": 0, "snap": ["a"]}', b'{"seed": 1, "class": "0; rm"}',
    b'{"seed": 1, "class": 0, "noise": null, "zzz": 1}', json.dumps({f"k{i}": i for i in range(1000)}).encode(),
    b'{"seed": 1, "class": 0, "psi": 1' + b"0" * 400 + b"}",
]


def test_bad_queries_get_4xx_with_one_line(server):
    for query in BAD_QUERIES:
        status, body, _ = get(server + "/api/image?" + query)
        assert 400 <= status < 500, (query, status, body[:200])
        error = json.loads(body)["error"]
        assert error and "\n" not in error and "Traceback" not in error, query
    assert get(server + "/api/health")[0] == 200


def test_bad_json_bodies_get_4xx(server):
    for body in BAD_BODIES:
        status, reply, _ = get(server + "/api/image", "POST", body, {"Content-Type": "application/json"})
        assert 400 <= status < 500, (body[:60], status, reply[:200])
        assert "\n" not in json.loads(reply)["error"]
    status, reply, _ = get(server + "/api/image", "POST", b"{" + b" " * 70000 + b"}")  # over max_body_bytes
    assert status == 400 and "at most" in json.loads(reply)["error"]
    assert get(server + "/api/health")[0] == 200


@pytest.mark.parametrize("path", [
    "/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fetc%2fpasswd",
    "/static/%252e%252e%252fetc%252fpasswd", "/static/..\\..\\etc\\passwd", "/static/%c0%ae%c0%ae/etc/passwd",
    "/static/", "/static/explore.js/", "/static/./explore.js", "/static/explore.js%00.png", "/static//etc/passwd",
    "/../../etc/passwd", "/api/../static/explore.js/../../../etc/passwd", "//etc/passwd", "/etc/passwd",
    "/static/%ff%fe", "/index.html?x=1", "/api/info/..", "/api/image/../../x", "/api/info?%zz=1&&", "/?a=b",
    "/static/explore.js?v=../../etc/passwd",
])
def test_path_tricks_get_4xx(server, path):
    conn = http.client.HTTPConnection("127.0.0.1", int(server.rsplit(":", 1)[1]), timeout=30)
    conn.putrequest("GET", path, skip_accept_encoding=True)  # sent as written: no client-side normalisation
    conn.endheaders()
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    assert 400 <= reply.status < 500, (path, reply.status)
    assert b"root:" not in body


def raw(server: str, payload: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1])), timeout=30) as s:
        s.sendall(payload)
        if not read:
            return b""
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_broken_http_gets_4xx_and_the_server_keeps_serving(server):
    for payload in (
        b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1 extra\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello to a plain-HTTP port
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",                # request line over http.server's limit
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",  # too many headers
        b"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999\r\n\r\n{}",
        b"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"DELETE /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"BREW /coffee HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/info HTTP/1.1\r\nHost: evil.example\r\n\r\n",      # DNS rebinding
        b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1.evil.example\r\n\r\n",
    ):
        reply = raw(server, payload)
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
        assert 400 <= status < 500, (payload[:60], reply[:120])
    # a client that sends half a request and stalls holds one connection, not the server
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1])), timeout=30) as stalled:
        stalled.sendall(b"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"se")
        assert close(image(server + "/api/image?seed=1&class=0"), image(server + "/api/image?seed=1&class=0"))
    assert get(server + "/api/health")[0] == 200


# ---------------------------------------------------------------------------------------------
# other networks, bounds, the command line


def test_fastgan_controls_and_unbatched_mode(nets):
    """FastGAN: one w for every layer (no mixing), truncation without effect; window 0 renders one by one."""
    with serving(network=str(nets["fastgan"]), batch_window_ms=0.0) as (srv, url):
        info = json.loads(get(url + "/api/info")[1])["networks"][0]
        assert not info["features"]["mixing"] and not info["features"]["truncation"]
        assert any("num_ws 1" in n for n in info["notes"]) and any("truncation" in n for n in info["notes"])
        status, body, _ = get(url + "/api/image?seed=1&mix=2&mix_lo=0&mix_hi=0")
        assert status == 400 and "mixing" in json.loads(body)["error"]
        a, b = image(url + "/api/image?seed=1"), image(url + "/api/image?seed=2&seed2=1&t=1")
        assert close(a, b) and not close(a, image(url + "/api/image?seed=2"))
        assert not srv.batcher.batching


def test_an_onnx_graph_gets_seed_psi_and_class_only(tmp_path):
    """What a registry version without its snapshot renders: the exported graph, through onnxruntime."""
    from tests.test_serve_batching import toy_graph

    graph = toy_graph(tmp_path / "generator_uint8.onnx")
    with serving(network=str(graph)) as (_, url):
        info = json.loads(get(url + "/api/info")[1])["networks"][0]
        assert info["kind"] == "onnx" and info["c_dim"] == 2 and info["resolution"] == 4
        assert not any(info["features"][f] for f in ("cutoff", "mixing", "transform", "interpolation", "noise"))
        a, b = image(url + "/api/image?seed=3&psi=0.5&class=1"), image(url + "/api/image?seed=3&psi=0.5&class=0")
        assert a.shape == (4, 4, 3) and not close(a, b)
        for query in ("seed=3&class=1&mix=2&mix_lo=0&mix_hi=0", "seed=3&class=1&seed2=4&t=1", "seed=3&class=1&tx=1"):
            assert get(url + "/api/image?" + query)[0] == 400, query


def test_full_queue_answers_503_and_recovers(nets):
    with serving(network=str(nets["sg3"]), batch_window_ms=300.0, batch_size=1, max_queue=1) as (srv, url):
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = [r[0] for r in pool.map(get, [url + f"/api/image?seed={s}" for s in range(6)])]
        assert 503 in statuses and 200 in statuses, statuses
        assert srv.batcher.snapshot_stats()["rejected"] >= 1
        time.sleep(0.4)
        assert get(url + "/api/image?seed=1")[0] == 200


def test_too_many_connections_answer_503(nets):
    with serving(network=str(nets["sg3"]), max_connections=2) as (srv, url):
        port = int(url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        try:
            time.sleep(0.2)
            reply = raw(url, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 503"), reply[:80]
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
        assert get(url + "/api/health")[0] == 200 and srv.rejected_connections >= 1


def test_command_line(nets, capsys, tmp_path):
    from stages.generate.cli import main

    assert main(["explore", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--network", "--compare", "--port", "--host", "--batch-window-ms", "--max-queue"):
        assert flag in out, flag
    assert main(["explore", "--network", str(tmp_path / "missing.safetensors"), "--port", "0"]) == 2
    assert main(["explore", "--network", str(tmp_path), "--port", "0"]) == 2  # a folder without snapshots
    assert main(["explore", "--network", "models:/no such model", "--port", "0"]) == 2
    assert main(["explore", "--network", str(nets["sg3"]), "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no such file" in err and "no network-snapshot" in err


def test_params_yaml_explore_section_is_valid():
    """The repository's params.yaml `generate.explore` builds the command's config."""
    from stages.common.config import load_params, params_section
    from stages.generate.config import command_section

    root = Path(__file__).resolve().parents[1]
    section = params_section(load_params(root / "params.yaml"), "generate")
    from stages.common.config import build_config

    cfg = build_config(ExploreConfig, command_section(section, "explore"))
    assert cfg.host == "127.0.0.1" and cfg.batch_window_ms >= 0
    for other in ("images", "style_mixing", "video"):  # the new sub-section does not leak into the others
        assert "explore" not in command_section(section, other)


def test_champion_and_challenger_side_by_side_from_a_real_registry(nets, tmp_path, monkeypatch):
    """models:/NAME@ALIAS through MLflow (sqlite in tmp): @champion's registering run names a snapshot that is
    here (the PyTorch generator), @challenger's does not (its logged ONNX graph)."""
    import mlflow

    from tests.test_serve_batching import toy_graph

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("explore", artifact_location=str(tmp_path / "artifacts"))
    client.create_registered_model("gen")
    graph_dir = tmp_path / "pyfunc" / "artifacts"
    graph_dir.mkdir(parents=True)
    toy_graph(graph_dir / "generator_uint8.onnx")
    for alias, network in (("champion", str(nets["sg3"])), ("challenger", str(tmp_path / "gone.safetensors"))):
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "export.network", network)
        client.log_artifacts(run.info.run_id, str(tmp_path / "pyfunc"), "generator")
        client.set_terminated(run.info.run_id)
        version = client.create_model_version("gen", f"{run.info.artifact_uri}/generator", run_id=run.info.run_id)
        client.set_registered_model_alias("gen", alias, version.version)
    with serving(network="models:/gen@champion", compare="models:/gen@challenger") as (_, url):
        a, b = json.loads(get(url + "/api/info")[1])["networks"]
        assert a["kind"] == "registry" and a["family"] == "StyleGAN3Generator" and "v1 @champion" in a["note"]
        assert b["kind"] == "onnx" and "ONNX graph" in b["note"]
        assert close(image(url + "/api/image?seed=3"), reference(nets["sg3"], 3))
        assert image(url + "/api/image?net=1&seed=3&class=1").shape == (4, 4, 3)


def test_registry_uri_resolves_to_the_exported_snapshot(nets, tmp_path, monkeypatch):
    """models:/NAME@ALIAS: the snapshot named by the registering run's `export.network` when it is here; for
    a run folder the newest snapshot written before the version was registered."""
    import types

    import mlflow

    from stages.generate import explore_sources

    versions = {"champion": ("1", str(nets["sg3"]), 0), "challenger": ("2", str(nets["run"]), 1e15)}

    class FakeClient:
        def get_model_version_by_alias(self, name: str, alias: str) -> Any:
            if alias not in versions:
                raise mlflow.exceptions.MlflowException(f"alias {alias} not found")
            version, _, created = versions[alias]
            return types.SimpleNamespace(version=version, run_id=alias, creation_timestamp=created)

        def get_run(self, run_id: str) -> Any:
            return types.SimpleNamespace(data=types.SimpleNamespace(params={"export.network": versions[run_id][1]}))

    monkeypatch.setattr(mlflow, "MlflowClient", FakeClient)
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: None)
    src = explore_sources.resolve_source("models:/gen@champion")
    assert src.kind == "registry" and src.path(None) == nets["sg3"] and "v1 @champion" in src.note
    src = explore_sources.resolve_source("models:/gen@challenger")
    assert src.path(None) == nets["run"] / SNAPSHOTS[-1]
    with pytest.raises(explore_sources.GenerateError, match="not in the registry"):
        explore_sources.resolve_source("models:/gen@nobody")
    with pytest.raises(explore_sources.GenerateError, match="models:/NAME@ALIAS"):
        explore_sources.resolve_source("models:/a/b/c")
