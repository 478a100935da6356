"""Triton Inference Server model repository: `<repo>/<name>/config.pbtxt` + `<repo>/<name>/1/model.*`.

With `max_batch_size > 0` Triton prepends the batch dimension itself: `dims` list the per-sample shape
only, and every input must be batched along its first dimension (hence psi as [B, 1], dims [1]).
`parse_pbtxt` reads back the subset of protobuf text format written here, so tests can compare the
config with the ONNX graph without the tritonclient protos.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.fileio import write_bytes_atomic, write_text_atomic

PLATFORMS = {"onnx": "onnxruntime_onnx", "plan": "tensorrt_plan"}
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8",
                 "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")


@dataclass(frozen=True)
class TritonModelConfig:
    name: str
    platform: str                                   # onnxruntime_onnx | tensorrt_plan
    max_batch_size: int
    inputs: list[dict[str, Any]]                    # {'name', 'dtype' (numpy name), 'shape' with batch first}
    outputs: list[dict[str, Any]]
    preferred_batch_sizes: Sequence[int] = (8, 32)
    max_queue_delay_us: int = 100
    instance_kind: str = "KIND_GPU"
    instance_count: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.platform not in MODEL_FILES:
            raise ValueError(f"platform must be one of {sorted(MODEL_FILES)}, got {self.platform!r}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValueError(f"instance_kind must be one of {INSTANCE_KINDS}, got {self.instance_kind!r}")
        if self.platform == "tensorrt_plan" and self.instance_kind != "KIND_GPU":
            raise ValueError("a TensorRT plan runs on KIND_GPU only")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1 (dynamic batching needs a batch dimension)")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} outside 1..max_batch_size={self.max_batch_size}")


def _tensor_block(specs: list[dict[str, Any]]) -> str:
    items = []
    for spec in specs:
        dims = [int(d) for d in spec["shape"][1:]]  # without the batch dimension
        if any(d <= 0 for d in dims):
            raise ValueError(f"{spec['name']}: only the batch dimension may be dynamic, got {spec['shape']}")
        items.append(
            "  {\n"
            f'    name: "{spec["name"]}"\n'
            f"    data_type: {TRITON_DTYPES[spec['dtype']]}\n"
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n"
            "  }"
        )
    return "[\n" + ",\n".join(items) + "\n]"


def render_config(cfg: TritonModelConfig) -> str:
    preferred = ", ".join(str(b) for b in sorted(set(cfg.preferred_batch_sizes)))
    return (
        f'name: "{cfg.name}"\n'
        f'platform: "{cfg.platform}"\n'
        f"max_batch_size: {cfg.max_batch_size}\n"
        f"input {_tensor_block(cfg.inputs)}\n"
        f"output {_tensor_block(cfg.outputs)}\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {int(cfg.max_queue_delay_us)}\n"
        "}\n"
        "instance_group [\n"
        "  {\n"
        f"    kind: {cfg.instance_kind}\n"
        f"    count: {int(cfg.instance_count)}\n"
        "  }\n"
        "]\n"
    )


def write_model_repository(repo: str | os.PathLike, cfg: TritonModelConfig, model_file: str | os.PathLike,
                           version: int = 1) -> dict[str, Path]:
    """Copy the model into `<repo>/<name>/<version>/model.{onnx,plan}` and write config.pbtxt (atomically)."""
    root = Path(repo) / cfg.name
    model_path = write_bytes_atomic(root / str(version) / MODEL_FILES[cfg.platform], Path(model_file).read_bytes())
    # Config last: a polling Triton sees a complete model directory or none.
    config_path = write_text_atomic(root / "config.pbtxt", render_config(cfg))
    return {"config": config_path, "model": model_path}


# --------------------------------------------------------------------------------------------------
# A parser for the text-format subset above: `key: scalar`, `key: [ scalars ]`, `key { ... }`,
# `key [ { ... }, ... ]`. Repeated keys collect into lists. Enums stay strings, numbers become ints.

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([\[\]{}:,])|([^\s\[\]{}:,"#]+))')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot parse pbtxt near {text[pos:pos + 20]!r}")
            break
        pos = m.end()
        if m.group(1) is None:
            out.append(m.group(2) or m.group(3) or m.group(4))
    return out


def _scalar(tok: str) -> Any:
    if tok.startswith('"'):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if re.fullmatch(r"-?\d*\.\d*(e-?\d+)?", tok):
        return float(tok)
    return {"true": True, "false": False}.get(tok, tok)


def parse_pbtxt(text: str) -> dict[str, Any]:
    toks = _tokens(text)
    pos = 0

    def value() -> Any:
        nonlocal pos
        tok = toks[pos]
        if tok == "{":
            pos += 1
            return message("}")
        if tok == "[":
            pos += 1
            items = []
            while toks[pos] != "]":
                items.append(value())
                if toks[pos] == ",":
                    pos += 1
            pos += 1
            return items
        pos += 1
        return _scalar(tok)

    def message(end: str | None) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(toks) and toks[pos] != end:
            key = toks[pos]
            pos += 1
            if toks[pos] == ":":
                pos += 1
            v = value()
            if key in out:  # repeated field written as separate entries
                prev = out[key]
                out[key] = [*(prev if isinstance(prev, list) else [prev]), *(v if isinstance(v, list) else [v])]
            else:
                out[key] = v
        pos += 1
        return out

    return message(None)
