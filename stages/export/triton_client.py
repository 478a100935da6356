"""Render seeds through a served generator: Triton Inference Server, or `python -m stages.export serve`.

    python triton_client.py --url http://localhost:8000 --model stylegan2_generator --seeds 0-7 --trunc 0.7 --outdir out
    python triton_client.py --url http://localhost:8000 --model stylegan2_generator_trt --seeds 0-3   # the engine

Speaks the KServe v2 HTTP/JSON protocol that both servers implement: it reads the model's metadata (input names
and sizes, output name and datatype), draws z from each seed by the official rule (np.random.RandomState(seed)
.randn(z_dim), as generate.py), sends one infer request per batch, and writes seed%04d.png. A uint8 NHWC output
(generator_uint8.onnx) is saved as it is; a float NCHW output (generator.onnx, a TensorRT plan) is converted with
the official rule, (x * 127.5 + 128).clip(0, 255) truncated to uint8.

Needs numpy and Pillow only (urllib from the standard library); this file is copied into every export folder and
runs without the project installed. For gRPC or Triton's binary tensors use NVIDIA's `tritonclient` package: the
request it sends carries the same input names and shapes.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

V2_TO_NUMPY = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64}


def parse_seeds(spec: str) -> list[int]:
    """'0-3,10' -> [0, 1, 2, 3, 10]."""
    seeds: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 300) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise SystemExit(f"{url}: HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"{url}: {exc.reason} (is the server running?)") from None


def metadata(url: str, model: str) -> dict[str, Any]:
    return _request(f"{url.rstrip('/')}/v2/models/{model}")


def infer_request(meta: dict[str, Any], seeds: list[int], psi: float, class_idx: int | None) -> dict[str, Any]:
    """The KServe v2 JSON body for these seeds (inputs z, truncation_psi and, if the model has it, c)."""
    dims = {t["name"]: t["shape"] for t in meta["inputs"]}
    n = len(seeds)
    z = np.stack([np.random.RandomState(s).randn(dims["z"][-1]) for s in seeds]).astype(np.float32)
    feeds = {"z": z, "truncation_psi": np.full([n, 1], psi, np.float32)}
    if "c" in dims:
        c_dim = dims["c"][-1]
        if class_idx is None or not 0 <= class_idx < c_dim:
            raise SystemExit(f"conditional model: give --class in 0..{c_dim - 1}")
        feeds["c"] = np.eye(c_dim, dtype=np.float32)[[class_idx] * n]
    return {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.reshape(-1).tolist()}
                       for k, v in feeds.items()],
            "outputs": [{"name": meta["outputs"][0]["name"]}]}


def to_images(output: dict[str, Any]) -> np.ndarray:
    """An infer response's output -> uint8 [N, H, W, C]."""
    arr = np.asarray(output["data"], dtype=V2_TO_NUMPY[output["datatype"]]).reshape(output["shape"])
    if arr.dtype == np.uint8:
        return arr  # generator_uint8.onnx: already NHWC levels
    levels = np.clip(arr.astype(np.float32) * 127.5 + 128, 0, 255).astype(np.uint8)  # [N, C, H, W]
    return levels.transpose(0, 2, 3, 1)


def render(url: str, model: str, seeds: list[int], psi: float = 1.0, class_idx: int | None = None,
           batch: int = 8) -> np.ndarray:
    """uint8 [N, H, W, C] images of `seeds` from the served model."""
    meta = metadata(url, model)
    chunks = []
    for i in range(0, len(seeds), batch):
        body = infer_request(meta, seeds[i:i + batch], psi, class_idx)
        response = _request(f"{url.rstrip('/')}/v2/models/{model}/infer", body)
        chunks.append(to_images(response["outputs"][0]))
    return np.concatenate(chunks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://localhost:8000", help="server root (Triton's HTTP port is 8000)")
    ap.add_argument("--model", default="stylegan2_generator", help="model name in the repository")
    ap.add_argument("--seeds", default="0-3", help="e.g. 0-7,10")
    ap.add_argument("--trunc", type=float, default=1.0, help="truncation psi")
    ap.add_argument("--class", dest="class_idx", type=int, default=None, help="class index (conditional models)")
    ap.add_argument("--batch", type=int, default=8, help="seeds per request (<= the model's max_batch_size)")
    ap.add_argument("--outdir", default="out/triton")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    images = render(args.url, args.model, seeds, args.trunc, args.class_idx, args.batch)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for seed, img in zip(seeds, images):
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(out / f"seed{seed:04d}.png")
    print(f"wrote {len(seeds)} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
