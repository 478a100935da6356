"""A small HTTP server for an exported generator on CPU: seeds in, PNGs out, and the KServe v2 JSON protocol.

    python -m stages.export serve --model exports/generator_uint8.onnx --port 8080

    GET  /png?seed=3&psi=0.7[&class=2]           one image/png (seed rule of the official generate.py)
    POST /png  {"seeds": [0, 1], "truncation_psi": 0.7, "class_idx": 2}
                                                 -> {"images": [{"seed": 0, "png_base64": "..."}, ...]}
    GET  /v2/health/live, /v2/health/ready       200 once the model is loaded (as Triton answers)
    GET  /v2/models/<name>                       model metadata: input/output names, datatypes, shapes
    POST /v2/models/<name>/infer                 KServe v2 JSON inference, the request Triton takes

The KServe v2 paths make `exports/triton_client.py` work against this server and against Triton alike, so a
client can be developed on a laptop and pointed at the GPU server later. Requests run on the threads of a
ThreadingHTTPServer; onnxruntime sessions and no-grad PyTorch forwards are safe to share between them. This is
a development and small-deployment server: no TLS, no authentication; it listens on 127.0.0.1 unless told.
"""

from __future__ import annotations

import base64
import io
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import PIL.Image

from stages.common.errors import BadInput
from stages.export.config import ServeConfig
from stages.export.render import Renderer

# KServe v2 datatype names <-> numpy.
V2_DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64}
NUMPY_TO_V2 = {np.dtype(v).name: k for k, v in V2_DTYPES.items()}
ORT_TO_V2 = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(uint8)": "UINT8"}


MAX_BODY_BYTES = 16 * 2**20  # a KServe JSON request of 64 seeds x 512 floats is under 1 MiB


class RequestError(ValueError):
    """A malformed request: answered with 400 and {"error": message}."""


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, C] -> PNG file bytes (C = 1 is saved as greyscale)."""
    buf = io.BytesIO()
    PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def model_metadata(renderer: Renderer, name: str) -> dict[str, Any]:
    """KServe v2 model metadata (batch dimension -1), from the graph itself where there is one."""
    if renderer._torch is not None:
        G = renderer._torch
        inputs = [{"name": n, "datatype": "FP32", "shape": [-1, {"z": G.z_dim, "c": G.c_dim}.get(n, 1)]}
                  for n in renderer.input_names]
        outputs = [{"name": "img_uint8", "datatype": "UINT8",
                    "shape": [-1, G.img_resolution, G.img_resolution, G.img_channels]}]
        platform = "pytorch"
    elif renderer._trt is None:
        sess = renderer.session

        def spec(t: Any) -> dict[str, Any]:
            shape = [d if isinstance(d, int) else -1 for d in t.shape]
            return {"name": t.name, "datatype": ORT_TO_V2.get(t.type, t.type), "shape": shape}

        inputs, outputs = [spec(t) for t in sess.get_inputs()], [spec(t) for t in sess.get_outputs()]
        platform = "onnxruntime_onnx"
    else:
        inputs = [{"name": n, "datatype": "FP32", "shape": [-1, -1]} for n in renderer.input_names]
        outputs = [{"name": renderer.output_name, "datatype": "FP32", "shape": [-1, -1, -1, -1]}]
        platform = "tensorrt_plan"
    return {"name": name, "versions": ["1"], "platform": platform, "inputs": inputs, "outputs": outputs}


def decode_infer_request(body: dict[str, Any], input_names: list[str], max_batch: int) -> dict[str, np.ndarray]:
    """KServe v2 JSON `inputs` -> feeds, with the checks a client needs to hear about."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise RequestError('expected a JSON object with an "inputs" list (KServe v2)')
    feeds: dict[str, np.ndarray] = {}
    for item in body["inputs"]:
        try:
            name, shape, dtype = item["name"], [int(d) for d in item["shape"]], V2_DTYPES[item["datatype"]]
            feeds[name] = np.asarray(item["data"], dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError(f"bad input entry {str(item)[:80]}: {type(exc).__name__}: {exc}") from None
    for name, value in feeds.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():  # a nan psi renders black images silently
            raise RequestError(f"input {name}: values must be finite")
    if sorted(feeds) != sorted(input_names):
        raise RequestError(f"inputs {sorted(feeds)} do not match the model's {sorted(input_names)}")
    batches = {v.shape[0] if v.ndim else -1 for v in feeds.values()}
    if len(batches) != 1 or not 1 <= next(iter(batches)) <= max_batch:
        raise RequestError(f"every input needs the same batch size, 1..{max_batch}; got {sorted(batches)}")
    return feeds


def encode_infer_response(name: str, output_name: str, out: np.ndarray) -> dict[str, Any]:
    return {"model_name": name, "model_version": "1",
            "outputs": [{"name": output_name, "datatype": NUMPY_TO_V2[out.dtype.name], "shape": list(out.shape),
                         "data": out.reshape(-1).tolist()}]}


class GeneratorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], cfg: ServeConfig, renderer: Renderer) -> None:
        self.cfg, self.renderer = cfg, renderer
        self.metadata = model_metadata(renderer, cfg.name)
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: GeneratorServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the base class names the argument `format`
        pass  # one line per request on stderr would drown the start-up line; errors go back to the client

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True  # the body stays unread: it must not be parsed as the next request
            raise RequestError("bad Content-Length") from None
        if not 0 <= length <= MAX_BODY_BYTES:  # read no more than a request of max_batch seeds can need
            self.close_connection = True
            raise RequestError(f"request body of {length} bytes; at most {MAX_BODY_BYTES} are read")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError as exc:
            raise RequestError(f"body is not JSON: {exc}") from None

    def _render(self, seeds: list[int], psi: Any, class_idx: Any) -> np.ndarray:
        if not 1 <= len(seeds) <= self.server.cfg.max_batch:
            raise RequestError(f"give 1..{self.server.cfg.max_batch} seeds, got {len(seeds)}")
        try:
            return self.server.renderer.render(seeds, psi, class_idx, batch=self.server.cfg.max_batch)
        except ValueError as exc:  # class index missing or out of range, psi of the wrong length
            raise RequestError(str(exc)) from None

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        v2 = f"/v2/models/{self.server.cfg.name}"
        try:
            if method == "GET" and url.path in ("/v2/health/live", "/v2/health/ready", "/health"):
                self._json(200, {"ready": True})
            elif method == "GET" and url.path in (v2, v2 + "/versions/1"):
                self._json(200, self.server.metadata)
            elif method == "POST" and url.path in (v2 + "/infer", v2 + "/versions/1/infer"):
                r = self.server.renderer
                feeds = decode_infer_request(self._body(), r.input_names, self.server.cfg.max_batch)
                self._json(200, encode_infer_response(self.server.cfg.name, r.output_name, r.run(feeds)))
            elif method == "GET" and url.path == "/png":
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                try:
                    seed, psi = int(q["seed"]), float(q.get("psi", 1.0))
                    cls = int(q["class"]) if "class" in q else None
                except (KeyError, ValueError):
                    raise RequestError("use /png?seed=N[&psi=0.7][&class=K]") from None
                self._send(200, png_bytes(self._render([seed], psi, cls)[0]), "image/png")
            elif method == "POST" and url.path == "/png":
                body = self._body()
                if not isinstance(body, dict) or not isinstance(body.get("seeds"), list):
                    raise RequestError('expected {"seeds": [...], "truncation_psi": 1.0, "class_idx": null}')
                seeds = [int(s) for s in body["seeds"]]
                images = self._render(seeds, body.get("truncation_psi", 1.0), body.get("class_idx"))
                self._json(200, {"images": [{"seed": s, "png_base64": base64.b64encode(png_bytes(im)).decode()}
                                            for s, im in zip(seeds, images)]})
            else:
                self._json(404, {"error": f"no {method} {url.path}; see GET /v2/models/{self.server.cfg.name}"})
        except RequestError as exc:
            self._json(400, {"error": str(exc)})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


def make_server(cfg: ServeConfig) -> GeneratorServer:
    """Load the model and bind the port (port 0: any free one, see `server.server_address`)."""
    providers = ["CPUExecutionProvider"] if cfg.cpu else None
    renderer = Renderer(cfg.model, providers, precision=cfg.precision)
    try:
        return GeneratorServer((cfg.host, cfg.port), cfg, renderer)
    except OSError as exc:
        raise BadInput(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
