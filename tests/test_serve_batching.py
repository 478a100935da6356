"""Dynamic batching and bounds of `python -m stages.export serve`: the DynamicBatcher on its own (window, max
batch, keys, queue bound, a failing request failing alone, shutdown), then the server on a small hand-built
ONNX graph and on a snapshot: concurrent requests share runs and get the same images as one at a time, bad
requests are 4xx, and a full server says 503 instead of growing."""

from __future__ import annotations

import concurrent.futures
import contextlib
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

from stages.export.config import ServeConfig
from stages.export.serve import make_server
from stages.serving.batching import BatchOptions, DynamicBatcher, Overloaded

Z, C = 8, 2

# ---------------------------------------------------------------------------------------------
# the batcher


def gather(batcher: DynamicBatcher, items: list[Any], sizes: list[int] | None = None, stagger_s: float = 0.0
           ) -> list[Any]:
    """Submit the items from one thread each (optionally staggered); results or exceptions, in order."""
    sizes = sizes or [1] * len(items)

    def one(i: int) -> Any:
        time.sleep(i * stagger_s)
        try:
            return batcher.submit(items[i], sizes[i])
        except Exception as exc:  # returned for the test to look at
            return exc

    with concurrent.futures.ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(one, range(len(items))))


def test_requests_in_one_window_run_as_one_batch():
    calls: list[list[int]] = []
    b = DynamicBatcher(lambda items: (calls.append(list(items)), [x * 10 for x in items])[1], max_batch=16,
                       window_s=0.2, max_queue=64)
    try:
        results = gather(b, list(range(6)))
        assert [r for r, _ in results] == [0, 10, 20, 30, 40, 50]
        assert len(calls) == 1 and sorted(calls[0]) == list(range(6))
        assert {info.batch for _, info in results} == {6}
        stats = b.snapshot_stats()
        assert (stats["batches"], stats["images"], stats["requests"], stats["mean_batch"]) == (1, 6, 6, 6.0)
    finally:
        b.close()


def test_max_batch_counts_images_and_keys_split_batches():
    calls: list[list[tuple[str, int]]] = []
    b = DynamicBatcher(lambda items: (calls.append(list(items)), [None] * len(items))[1], max_batch=4,
                       window_s=0.2, max_queue=64, key=lambda item: item[0])
    try:
        items = [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 5)]
        gather(b, items, sizes=[2, 1, 2, 1, 1])
        for call in calls:  # one key per run, at most 4 images
            assert len({k for k, _ in call}) == 1
            assert sum({1: 2, 2: 1, 3: 2, 4: 1, 5: 1}[i] for _, i in call) <= 4
        assert sorted(i for call in calls for _, i in call) == [1, 2, 3, 4, 5]
        with pytest.raises(ValueError, match=r"1\.\.4 images"):
            b.submit(("a", 9), size=5)
    finally:
        b.close()


def test_a_full_batch_does_not_wait_for_the_window():
    b = DynamicBatcher(lambda items: list(items), max_batch=3, window_s=5.0, max_queue=64)
    try:
        start = time.perf_counter()
        gather(b, [1, 2, 3])
        assert time.perf_counter() - start < 2.0
    finally:
        b.close()


def test_the_window_closes_once_every_possible_request_is_in():
    """With `expected` (a server's open connections), nobody else can join once that many are queued."""
    b = DynamicBatcher(lambda items: list(items), max_batch=16, window_s=5.0, max_queue=64, expected=lambda: 3)
    try:
        start = time.perf_counter()
        results = gather(b, [1, 2, 3])
        assert time.perf_counter() - start < 2.0 and {info.batch for _, info in results} == {3}
    finally:
        b.close()


def test_window_zero_runs_each_request_on_its_own_thread():
    threads: list[str] = []
    b = DynamicBatcher(lambda items: (threads.append(threading.current_thread().name), list(items))[1],
                       max_batch=8, window_s=0.0, max_queue=64)
    results = gather(b, list(range(5)))
    assert not b.batching and {info.batch for _, info in results} == {1}
    assert len(threads) == 5 and "batcher" not in threads
    b.close()


def test_the_queue_is_bounded():
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(10)
        return list(items)

    b = DynamicBatcher(slow, max_batch=1, window_s=0.001, max_queue=2, timeout_s=10)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(b.submit, i) for i in range(4)]
            time.sleep(0.3)
            release.set()
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result(timeout=20)[0])
                except Overloaded:
                    outcomes.append("503")
        assert outcomes.count("503") == 2 and b.snapshot_stats()["rejected"] == 2
        assert b.submit(7)[0] == 7  # and it takes requests again once there is room
    finally:
        b.close()


def test_a_request_waiting_too_long_gets_overloaded():
    release = threading.Event()
    b = DynamicBatcher(lambda items: (release.wait(5), list(items))[1], max_batch=1, window_s=0.001, max_queue=8,
                       timeout_s=0.3)
    try:
        threading.Timer(0.6, release.set).start()  # the first request runs 0.6 s; the second waits in the queue
        results = gather(b, [1, 2], stagger_s=0.05)
        assert results[0][0] == 1 and isinstance(results[1], Overloaded)
    finally:
        b.close()


def test_a_failing_request_fails_alone():
    def run(items: list[Any]) -> list[Any]:
        if any(x == "bad" for x in items):
            raise ValueError("bad item")
        return [x.upper() for x in items]

    b = DynamicBatcher(run, max_batch=8, window_s=0.2, max_queue=64)
    try:
        results = gather(b, ["a", "bad", "c"])
        assert results[0][0] == "A" and results[2][0] == "C"
        assert isinstance(results[1], ValueError)
        assert b.snapshot_stats()["failed"] == 1
        assert b.submit("d")[0] == "D"  # the worker survived
    finally:
        b.close()


def test_close_fails_what_is_queued():
    release = threading.Event()
    b = DynamicBatcher(lambda items: (release.wait(5), list(items))[1], max_batch=1, window_s=0.001, max_queue=8)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.submit(b.submit, 1), pool.submit(b.submit, 2)
        time.sleep(0.2)
        threading.Timer(0.2, release.set).start()
        b.close()
        assert first.result(timeout=10)[0] == 1
        with pytest.raises(Overloaded):
            second.result(timeout=10)
    with pytest.raises(Overloaded):
        b.submit(3)


# ---------------------------------------------------------------------------------------------
# the server


def toy_graph(path: Path) -> Path:
    """A generator-shaped ONNX graph: z [B, 8], c [B, 2], truncation_psi [B, 1] -> img [B, 3, 4, 4] float in
    about [-1, 1] (the float-output contract: the server converts to uint8 by the official rule)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    w = numpy_helper.from_array(rng.randn(Z, 48).astype(np.float32) * 0.5, "w")
    wc = numpy_helper.from_array(rng.randn(C, 48).astype(np.float32), "wc")
    shape = numpy_helper.from_array(np.array([-1, 3, 4, 4], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["z", "w"], ["zw"]), helper.make_node("Mul", ["zw", "truncation_psi"], ["s"]),
             helper.make_node("MatMul", ["c", "wc"], ["cw"]), helper.make_node("Add", ["s", "cw"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]), helper.make_node("Reshape", ["t", "shape"], ["img"])]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", Z]),
              helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", C]),
              helper.make_tensor_value_info("truncation_psi", TensorProto.FLOAT, ["batch", 1])]
    output = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, 4, 4])
    graph = helper.make_graph(nodes, "toy", inputs, [output], initializer=[w, wc, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


@contextlib.contextmanager
def serving(model: Path, window_ms: float, **kwargs: Any) -> Iterator[tuple[Any, str]]:
    opts = {"window_ms": window_ms, **{k: kwargs.pop(k) for k in list(kwargs) if k in ("max_queue",
                                                                                        "max_connections")}}
    srv = make_server(ServeConfig(model=str(model), port=0, **kwargs), BatchOptions(**opts))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def get(url: str, body: Any = None, method: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def png(body: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(body)))


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return toy_graph(tmp_path_factory.mktemp("toy") / "toy.onnx")


def concurrent_pngs(url: str, n: int) -> list[tuple[int, bytes, dict[str, str]]]:
    urls = [url + f"/png?seed={s}&psi={0.5 + 0.1 * (s % 3):.1f}&class={s % 2}" for s in range(n)]
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(get, urls))


def test_batched_server_renders_what_the_unbatched_one_does(graph):
    with serving(graph, 0.0, max_batch=8) as (_, url):
        alone = concurrent_pngs(url, 10)
    with serving(graph, 100.0, max_batch=8) as (_, url):
        together = concurrent_pngs(url, 10)
        stats = json.loads(get(url + "/v2/models/stylegan2_generator/stats")[1])
    assert {int(h["X-Batch-Size"]) for _, _, h in alone} == {1}
    assert max(int(h["X-Batch-Size"]) for _, _, h in together) > 1
    assert max(int(h["X-Batch-Size"]) for _, _, h in together) <= 8
    for (s1, b1, _), (s2, b2, _) in zip(alone, together):
        assert s1 == s2 == 200
        assert np.abs(png(b1).astype(int) - png(b2).astype(int)).max() <= 1
    assert stats["batches"] < stats["requests"] == 10 and stats["window_ms"] == 100.0


def test_a_lone_client_does_not_wait_for_the_window(graph):
    with serving(graph, 2000.0, max_batch=8) as (_, url):
        start = time.perf_counter()
        for s in range(3):
            status, _, headers = get(url + f"/png?seed={s}&class=0")
            assert status == 200 and float(headers["X-Queue-Ms"]) < 1000
        assert time.perf_counter() - start < 3.0


def test_v2_requests_batch_with_png_requests_and_keep_their_rows(graph):
    with serving(graph, 100.0, max_batch=8) as (_, url):
        def infer(seed: int) -> tuple[int, bytes, dict[str, str]]:
            z = np.random.RandomState(seed).randn(2, Z).astype(np.float32)
            return get(url + "/v2/models/stylegan2_generator/infer", {"inputs": [
                {"name": "z", "shape": [2, Z], "datatype": "FP32", "data": z.ravel().tolist()},
                {"name": "c", "shape": [2, C], "datatype": "FP32", "data": [1, 0, 0, 1]},
                {"name": "truncation_psi", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 0.5]}]})

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(infer, [1, 2, 3, 4]))
        single = infer(3)
    assert all(r[0] == 200 for r in replies)
    assert max(int(h["X-Batch-Size"]) for _, _, h in replies) > 2
    assert json.loads(replies[2][1])["outputs"][0]["data"] == pytest.approx(
        json.loads(single[1])["outputs"][0]["data"], abs=1e-5)


def test_bad_requests_are_4xx_and_the_server_keeps_serving(graph):
    with serving(graph, 5.0, max_batch=4) as (_, url):
        infer = url + "/v2/models/stylegan2_generator/infer"
        for status, body, _ in (
            get(infer, {"inputs": [{"name": "z", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]},
                                   {"name": "c", "shape": [1, C], "datatype": "FP32", "data": [1, 0]},
                                   {"name": "truncation_psi", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}),
            get(infer, {"inputs": [{"name": "z", "shape": [1, Z], "datatype": "FP16", "data": [0] * Z},
                                   {"name": "c", "shape": [1, C], "datatype": "FP32", "data": [1, 0]},
                                   {"name": "truncation_psi", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}),
            get(infer, {"inputs": [{"name": "z", "shape": "18", "datatype": "FP32", "data": [0] * Z}]}),
            get(infer, {"inputs": [{"name": "z", "shape": [10**12, 10**12], "datatype": "FP32", "data": [0]}] * 3}),
            get(infer, {"inputs": [1, 2, 3, 4]}),
            get(infer, {"inputs": "z"}),
            get(url + "/png", {"seeds": ["abc"], "class_idx": 0}),
            get(url + "/png", {"seeds": [[1]], "class_idx": 0}),
            get(url + "/png", {"seeds": [2**40], "class_idx": 0}),
            get(url + "/png", {"seeds": [1], "class_idx": "0"}),
            get(url + "/png", {"seeds": [1], "class_idx": True}),
            get(url + "/png", {"seeds": [1], "class_idx": 0, "truncation_psi": "x"}),
            get(url + "/png", {"seeds": list(range(10**4)), "class_idx": 0}),
            get(url + "/png?seed=1&class=0&evil=1"),
            get(url + "/png?seed=1&class=9"),
            get(url + "/png?seed=1e3&class=0"),
            get(url + "/png?seed=1&class=0&psi=-nan"),
            get(url + "/png?seed=1&class=0", method="PUT"),
            get(url + "/v2/models/stylegan2_generator", method="DELETE"),
        ):
            assert 400 <= status < 500, body[:200]
            assert "\n" not in json.loads(body)["error"]
        assert get(url + "/png?seed=1&class=0")[0] == 200


def test_a_full_server_says_503(graph):
    with serving(graph, 400.0, max_batch=1, max_queue=1) as (_, url):
        replies = concurrent_pngs(url, 5)
        statuses = sorted(r[0] for r in replies)
        assert 503 in statuses and 200 in statuses, statuses
        assert next(r[2].get("Retry-After") for r in replies if r[0] == 503) == "1"
        time.sleep(0.5)
        assert get(url + "/png?seed=1&class=0")[0] == 200
    with serving(graph, 5.0, max_batch=4, max_connections=1) as (srv, url):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30):
            time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as second:
                second.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert second.recv(100).startswith(b"HTTP/1.1 503")
        time.sleep(0.2)
        assert get(url + "/health")[0] == 200 and srv.rejected_connections == 1


def test_a_snapshot_batches_requests_of_different_psi(tmp_path):
    from models import Generator, save_snapshot
    from stages.common.images import nhwc, to_uint8
    from stages.common.seeds import seeds_to_z

    torch.manual_seed(0)
    G = Generator(z_dim=Z, c_dim=0, w_dim=Z, img_resolution=16, img_channels=3, mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 256, "channel_max": 16}).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    net = save_snapshot(tmp_path / "g.safetensors", {"G_ema": G})
    with serving(net, 100.0, max_batch=8) as (_, url):
        urls = [url + f"/png?seed={s}&psi={[1.0, 0.5][s % 2]}" for s in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(get, urls))
    assert max(int(h["X-Batch-Size"]) for _, _, h in replies) > 1
    for s, (status, body, _) in enumerate(replies):
        with torch.no_grad():
            want = nhwc(to_uint8(G(seeds_to_z([s], Z), None, truncation_psi=[1.0, 0.5][s % 2], noise_mode="const")))
        assert status == 200 and np.abs(png(body).astype(int) - want[0].astype(int)).max() <= 1
