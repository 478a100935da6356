"""A small HTTP server for an exported generator on CPU: seeds in, PNGs out, and the KServe v2 JSON protocol.

    python -m stages.export serve --model exports/generator_uint8.onnx --port 8080

    GET  /png?seed=3&psi=0.7[&class=2]           one image/png (seed rule of the official generate.py)
    POST /png  {"seeds": [0, 1], "truncation_psi": 0.7, "class_idx": 2}
                                                 -> {"images": [{"seed": 0, "png_base64": "..."}, ...]}
    GET  /v2/health/live, /v2/health/ready       200 once the model is loaded (as Triton answers)
    GET  /v2/models/<name>                       model metadata: input/output names, datatypes, shapes
    POST /v2/models/<name>/infer                 KServe v2 JSON inference, the request Triton takes
    GET  /v2/models/<name>/stats                 batches run, images, batch-size histogram, rejected requests

The KServe v2 paths make `exports/triton_client.py` work against this server and against Triton alike, so a
client can be developed on a laptop and pointed at the GPU server later. This is a development and
small-deployment server: no TLS, no authentication; it listens on 127.0.0.1 unless told.

Load. Requests are parsed on the threads of a ThreadingHTTPServer and rendered by one `DynamicBatcher`:
requests that arrive within `window_ms` of the oldest waiting one run through the model together, up to
`max_batch` images (Triton's dynamic batching: `max_queue_delay_microseconds`, `max_batch_size`). A window of 0
turns batching off: each request runs the model on its own thread, as this server did before. What the server
holds is bounded: at most `max_connections` open connections (one thread each; more are answered 503 and
closed), at most `max_queue` images waiting for the model (more: 503 with Retry-After), request bodies of
`MAX_BODY_BYTES`, idle connections closed after `timeout_s`. A malformed request is a 4xx with a one-line JSON
error; an unexpected failure is a 500 for that request only: the server keeps serving.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Hashable, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np

from stages.common.errors import BadInput
from stages.common.images import nhwc, to_uint8
from stages.export.config import ServeConfig
from stages.export.render import Renderer
from stages.serving.batching import BatchInfo, BatchOptions, DynamicBatcher, RequestError
from stages.serving.http import BoundedHTTPServer, SafeHandler, parse_number, parse_seed, png_bytes, query_params

# KServe v2 datatype names <-> numpy.
V2_DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64}
NUMPY_TO_V2 = {np.dtype(v).name: k for k, v in V2_DTYPES.items()}
ORT_TO_V2 = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(uint8)": "UINT8"}

# ---------------------------------------------------------------------------------------------
# the generator server


def model_metadata(renderer: Renderer, name: str) -> dict[str, Any]:
    """KServe v2 model metadata (batch dimension -1), from the graph itself where there is one."""
    if renderer._torch is not None:
        G = renderer._torch
        inputs = [{"name": n, "datatype": "FP32", "shape": [-1, {"z": G.z_dim, "c": G.c_dim}.get(n, 1)]}
                  for n in renderer.input_names]
        outputs = [{"name": "img_uint8", "datatype": "UINT8",
                    "shape": [-1, G.img_resolution, G.img_resolution, G.img_channels]}]
        platform = "pytorch"
    elif renderer._trt is None and getattr(renderer, "session", None) is not None:
        sess = renderer.session

        def spec(t: Any) -> dict[str, Any]:
            shape = [d if isinstance(d, int) else -1 for d in t.shape]
            return {"name": t.name, "datatype": ORT_TO_V2.get(t.type, t.type), "shape": shape}

        inputs, outputs = [spec(t) for t in sess.get_inputs()], [spec(t) for t in sess.get_outputs()]
        platform = "openvino" if getattr(renderer, "backend", "") == "openvino" else "onnxruntime_onnx"
    else:  # a TensorRT engine (or another runtime): names from the renderer, shapes left open
        inputs = [{"name": n, "datatype": "FP32", "shape": [-1, -1]} for n in renderer.input_names]
        outputs = [{"name": renderer.output_name, "datatype": "FP32", "shape": [-1, -1, -1, -1]}]
        platform = "tensorrt_plan" if renderer._trt is not None else "other"
    return {"name": name, "versions": ["1"], "platform": platform, "inputs": inputs, "outputs": outputs}


def decode_infer_request(body: dict[str, Any], input_names: list[str], max_batch: int,
                         inputs: Sequence[dict[str, Any]] = ()) -> dict[str, np.ndarray]:
    """KServe v2 JSON `inputs` -> feeds, with the checks a client needs to hear about. `inputs`: the model
    metadata's input specs; their fixed dimensions and datatypes are checked."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise RequestError('expected a JSON object with an "inputs" list (KServe v2)')
    if len(body["inputs"]) > len(input_names):
        raise RequestError(f"{len(body['inputs'])} inputs given; the model takes {sorted(input_names)}")
    feeds: dict[str, np.ndarray] = {}
    for item in body["inputs"]:
        try:
            if not isinstance(item["shape"], list):
                raise TypeError("shape must be a list")
            name, shape, dtype = str(item["name"]), [int(d) for d in item["shape"]], V2_DTYPES[item["datatype"]]
            if len(shape) > 8 or any(d < 0 for d in shape) or math.prod(shape) > max_batch * 2**16:
                raise ValueError(f"shape {shape[:8]} out of range")
            data = item["data"]
            if not isinstance(data, list):
                raise TypeError("data must be a list")
            feeds[name] = np.asarray(data, dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise RequestError(f"bad input entry {str(item)[:80]}: {type(exc).__name__}: {exc}") from None
    for name, value in feeds.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():  # a nan psi renders black images silently
            raise RequestError(f"input {name}: values must be finite")
    if sorted(feeds) != sorted(input_names):
        raise RequestError(f"inputs {sorted(feeds)} do not match the model's {sorted(input_names)}")
    batches = {v.shape[0] if v.ndim else -1 for v in feeds.values()}
    if len(batches) != 1 or not 1 <= next(iter(batches)) <= max_batch:
        raise RequestError(f"every input needs the same batch size, 1..{max_batch}; got {sorted(batches)}")
    for spec in inputs:
        value = feeds[spec["name"]]
        want = [d for d in spec["shape"][1:]]
        if value.ndim != len(spec["shape"]) or any(w > 0 and w != g for w, g in zip(want, value.shape[1:])):
            raise RequestError(f"input {spec['name']}: shape {list(value.shape)}, the model takes {spec['shape']}")
        if spec.get("datatype") in V2_DTYPES and value.dtype != V2_DTYPES[spec["datatype"]]:
            raise RequestError(f"input {spec['name']}: datatype {NUMPY_TO_V2.get(value.dtype.name)}, the model "
                               f"takes {spec['datatype']}")
    return feeds


def encode_infer_response(name: str, output_name: str, out: np.ndarray) -> dict[str, Any]:
    return {"model_name": name, "model_version": "1",
            "outputs": [{"name": output_name, "datatype": NUMPY_TO_V2[out.dtype.name], "shape": list(out.shape),
                         "data": out.reshape(-1).tolist()}]}


def feeds_key(feeds: dict[str, np.ndarray]) -> Hashable:
    """Feeds that can be concatenated into one run: same names, datatypes and per-image shapes."""
    return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items()))


def run_feeds(renderer: Renderer, items: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """One run of the model for several requests' feeds; each gets its own rows of the output back."""
    if len(items) == 1:
        return [renderer.run(items[0])]
    feeds = {k: np.concatenate([f[k] for f in items]) for k in items[0]}
    out = renderer.run(feeds)
    bounds = np.cumsum([len(f["z"]) for f in items])[:-1]
    return np.split(out, bounds)


def as_uint8(out: np.ndarray) -> np.ndarray:
    """A graph's output as uint8 NHWC (float NCHW graphs are converted by the official rule)."""
    return out if out.dtype == np.uint8 else nhwc(to_uint8(out))


class GeneratorServer(BoundedHTTPServer):
    batcher: DynamicBatcher

    def __init__(self, address: tuple[str, int], cfg: ServeConfig, renderer: Renderer,
                 batching: BatchOptions | None = None) -> None:
        self.cfg, self.renderer = cfg, renderer
        self.metadata = model_metadata(renderer, cfg.name)
        options = batching or BatchOptions.of(cfg)
        super().__init__(address, _Handler, options)
        self.batcher = DynamicBatcher(lambda items: run_feeds(renderer, items), max_batch=cfg.max_batch,
                                      window_s=options.window_ms / 1e3, max_queue=max(options.max_queue,
                                                                                       cfg.max_batch),
                                      key=feeds_key, timeout_s=options.timeout_s,
                                      expected=lambda: self.open_connections, name="serve-batcher")

    def server_close(self) -> None:
        super().server_close()
        if self.batcher is not None:
            self.batcher.close()


class _Handler(SafeHandler):
    server: GeneratorServer

    def _render(self, seeds: list[int], psi: Any, class_idx: Any) -> tuple[np.ndarray, BatchInfo]:
        if not 1 <= len(seeds) <= self.server.cfg.max_batch:
            raise RequestError(f"give 1..{self.server.cfg.max_batch} seeds, got {len(seeds)}")
        if isinstance(class_idx, bool) or not (class_idx is None or isinstance(class_idx, int)):
            raise RequestError(f"class_idx must be an integer or null, got {str(class_idx)[:40]!r}")
        if isinstance(psi, bool) or not isinstance(psi, int | float | list):
            raise RequestError(f"truncation_psi must be a number, got {str(psi)[:40]!r}")
        try:
            feeds = self.server.renderer.feeds(seeds, psi, class_idx)
        except (ValueError, TypeError) as exc:  # class index missing or out of range, psi of the wrong length
            raise RequestError(str(exc)) from None
        out, info = self.server.batcher.submit(feeds, size=len(seeds))
        return as_uint8(out), info

    def _timing(self, info: BatchInfo) -> dict[str, str]:
        return {"X-Batch-Size": str(info.batch), "X-Render-Ms": f"{info.run_ms:.2f}",
                "X-Queue-Ms": f"{info.queue_ms:.2f}"}

    def _route(self) -> None:
        method = self.command
        url = urlparse(self.path)
        v2 = f"/v2/models/{self.server.cfg.name}"
        if method == "GET" and url.path in ("/v2/health/live", "/v2/health/ready", "/health"):
            self._json(200, {"ready": True})
        elif method == "GET" and url.path in (v2, v2 + "/versions/1"):
            self._json(200, self.server.metadata)
        elif method == "GET" and url.path in (v2 + "/stats", "/stats"):
            self._json(200, {**self.server.batcher.snapshot_stats(),
                             "rejected_connections": self.server.rejected_connections})
        elif method == "POST" and url.path in (v2 + "/infer", v2 + "/versions/1/infer"):
            r = self.server.renderer
            feeds = decode_infer_request(self._body(), r.input_names, self.server.cfg.max_batch,
                                         self.server.metadata["inputs"])
            out, info = self.server.batcher.submit(feeds, size=len(feeds["z"]))
            self._json(200, encode_infer_response(self.server.cfg.name, r.output_name, out), self._timing(info))
        elif method == "GET" and url.path == "/png":
            q = query_params(url.query, ("seed", "psi", "class"))
            if "seed" not in q:
                raise RequestError("use /png?seed=N[&psi=0.7][&class=K]")
            seed, psi = parse_seed(q["seed"]), parse_number(q.get("psi", "1"), "psi", -100, 100)
            cls = parse_seed(q["class"], "class") if "class" in q else None
            images, info = self._render([seed], psi, cls)
            self._send(200, png_bytes(images[0]), "image/png", self._timing(info))
        elif method == "POST" and url.path == "/png":
            body = self._body()
            if not isinstance(body, dict) or not isinstance(body.get("seeds"), list):
                raise RequestError('expected {"seeds": [...], "truncation_psi": 1.0, "class_idx": null}')
            if len(body["seeds"]) > self.server.cfg.max_batch:
                raise RequestError(f"give 1..{self.server.cfg.max_batch} seeds, got {len(body['seeds'])}")
            seeds = [parse_seed(s) for s in body["seeds"]]
            images, info = self._render(seeds, body.get("truncation_psi", 1.0), body.get("class_idx"))
            self._json(200, {"images": [{"seed": s, "png_base64": base64.b64encode(png_bytes(im)).decode()}
                                        for s, im in zip(seeds, images)]}, self._timing(info))
        elif method in ("GET", "POST"):
            self._json(404, {"error": f"no {method} {url.path[:80]}; see GET /v2/models/{self.server.cfg.name}"})
        else:
            self._method_not_allowed()

def make_server(cfg: ServeConfig, batching: BatchOptions | None = None) -> GeneratorServer:
    """Load the model and bind the port (port 0: any free one, see `server.server_address`). `batching`: the
    batch window and limits (default: those `cfg` carries, else `BatchOptions()`)."""
    providers = ["CPUExecutionProvider"] if cfg.cpu else None
    renderer = Renderer(cfg.model, providers, precision=cfg.precision)
    try:
        return GeneratorServer((cfg.host, cfg.port), cfg, renderer, batching)
    except OSError as exc:
        raise BadInput(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
