"""OpenVINO IR of the exported ONNX graphs, and a CPU session over it that speaks onnxruntime's interface.

    generator.xml + generator.bin              from generator.onnx (same IO: z, [c], truncation_psi -> img)
    generator_uint8.xml + generator_uint8.bin  from generator_uint8.onnx (-> img_uint8 [B, H, W, C], the serving graph)

The IR is converted from the ONNX files as the stage wrote them (after slimming), with float32 weights
(`save_model(..., compress_to_fp16=False)`; OpenVINO's default would halve them to float16 on disk and break
fp32 parity). One IR serves both precisions: fp32 and bf16 are a compile-time choice,
`INFERENCE_PRECISION_HINT` f32 or bf16 (AMX / AVX-512 BF16 run the bf16 convolutions). The hint is always set
explicitly: on a CPU with bf16 units OpenVINO's own default is bf16, so an unset hint would not be fp32.

`openvino` is imported inside the functions: the rest of the export stage works without it, and a machine
without it gets a one-line refusal (`OpenVINOUnavailable`, exit 1) when the option asks for it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import BadInput, EnvironmentFault
from stages.common.fileio import fsync_dir

IR_GRAPHS = ("generator", "generator_uint8")  # ONNX graphs converted to IR (the fp32 graph and the serving graph)
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}  # our precision name -> INFERENCE_PRECISION_HINT
_ORT_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "u8": "tensor(uint8)", "i64": "tensor(int64)",
              "i32": "tensor(int32)"}  # OpenVINO element type -> onnxruntime's type string (serve's metadata)


class OpenVINOUnavailable(EnvironmentFault):
    """The openvino package is not installed (or cannot load) on this machine."""


def require_openvino() -> Any:
    """The `openvino` module, or a one-line refusal naming the package and the option that asked for it."""
    try:
        import openvino
    except ImportError as exc:
        raise OpenVINOUnavailable(
            f"OpenVINO is not installed ({exc}): pip install 'openvino>=2026.4' (in the project's `export` extra), "
            "or turn the IR off with --no-openvino / export.openvino: false") from None
    return openvino


def openvino_version() -> str:
    return str(require_openvino().get_version())


def ir_paths(xml: str | os.PathLike) -> tuple[Path, Path]:
    """(model.xml, model.bin): OpenVINO finds the weights next to the topology under the same stem."""
    xml = Path(xml)
    return xml, xml.with_suffix(".bin")


def convert_to_ir(onnx_path: str | os.PathLike, xml_path: str | os.PathLike) -> Path:
    """ONNX file -> IR (`xml_path` and its .bin), float32 weights; both files replace any old pair only once
    written (written in a hidden temporary folder beside them, then renamed: .bin first, .xml last)."""
    ov = require_openvino()
    xml, binary = ir_paths(xml_path)
    xml.parent.mkdir(parents=True, exist_ok=True)
    # Core.read_model reads ONNX through the same front end as `ov.convert_model`, without the model-conversion
    # tool's telemetry (which looks up and contacts a remote host on every call: tests/services checks that no
    # command contacts anything but 127.0.0.1).
    model = ov.Core().read_model(str(onnx_path))
    with tempfile.TemporaryDirectory(prefix=f".{xml.name}.", suffix=".tmp", dir=xml.parent) as tmp:
        tmp_xml, tmp_bin = ir_paths(Path(tmp) / xml.name)
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        for src in (tmp_bin, tmp_xml):
            with open(src, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_bin, binary)
        os.replace(tmp_xml, xml)
    fsync_dir(xml.parent)
    return xml


def compile_ir(model: str | os.PathLike | Any, precision: str = "fp32", threads: int | None = None) -> Any:
    """An IR file (or an in-memory `openvino.Model`) compiled for the CPU in `precision` (fp32 | bf16).

    `threads`: INFERENCE_NUM_THREADS (None = OpenVINO's choice, all physical cores). PERFORMANCE_HINT LATENCY:
    one stream, every thread on the one request, which is how render and serve call it (one batch at a time).
    """
    if precision not in PRECISION_HINTS:
        raise BadInput(f"OpenVINO precision must be one of {list(PRECISION_HINTS)}, got {precision!r}")
    ov = require_openvino()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    source = str(model) if isinstance(model, str | os.PathLike) else model
    return ov.Core().compile_model(source, "CPU", config)


@dataclass(frozen=True)
class TensorSpec:
    """What onnxruntime's `NodeArg` offers and our callers read: name, shape (symbolic dims by name), type."""

    name: str
    shape: list[int | str]
    type: str


def _message(exc: BaseException, limit: int = 200) -> str:
    """The informative line of an OpenVINO error (its first lines are "Exception from src/...cpp:N:" frames)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Exception from ")]
    text = (useful or lines or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _spec(port: Any) -> TensorSpec:
    shape = [d.get_length() if d.is_static else "batch" if i == 0 else "?"
             for i, d in enumerate(port.get_partial_shape())]
    etype = port.get_element_type().get_type_name()
    return TensorSpec(port.get_any_name(), shape, _ORT_TYPES.get(etype, etype))


class OpenVINOSession:
    """An IR compiled for the CPU behind onnxruntime's `InferenceSession` interface (`get_inputs`, `get_outputs`,
    `run(output_names, feeds)`), so that parity, `render` and `serve` drive it as they drive onnxruntime.

    Thread-safe: each calling thread gets its own infer request (the server runs unbatched requests on their
    own threads). Outputs are copies, never views of a request's buffers.
    """

    runtime = "openvino"

    def __init__(self, model: str | os.PathLike | Any, precision: str = "fp32", threads: int | None = None) -> None:
        require_openvino()
        self.path = Path(model) if isinstance(model, str | os.PathLike) else None
        if self.path is not None and self.path.suffix == ".xml" and not ir_paths(self.path)[1].is_file():
            raise BadInput(f"{self.path}: its weights {ir_paths(self.path)[1].name} are missing beside it")
        self.precision = precision
        try:
            self.compiled = compile_ir(model, precision, threads)
        except RuntimeError as exc:  # OpenVINO reports unreadable or inconsistent IR files as RuntimeError
            raise BadInput(f"{self.path or 'model'}: not a loadable OpenVINO IR ({_message(exc)})") from None
        self._inputs = [_spec(p) for p in self.compiled.inputs]
        self._dtypes = {p.get_any_name(): p.get_element_type().to_dtype() for p in self.compiled.inputs}
        self._outputs = [_spec(p) for p in self.compiled.outputs]
        self._local = threading.local()

    def get_inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def describe(self) -> dict[str, Any]:
        """What actually runs: the precision OpenVINO settled on (it may differ from the hint on a CPU without
        bf16 units), threads, and the runtime's version."""
        return {"runtime": self.runtime, "openvino": openvino_version(), "precision": self.precision,
                "inference_precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS"))}

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if set(feeds) != set(self._dtypes):  # OpenVINO's own message names an internal node, not the input
            raise ValueError(f"inputs {sorted(feeds)} do not match the model's {sorted(self._dtypes)}")
        tensors = {k: np.ascontiguousarray(v, dtype=self._dtypes[k]) for k, v in feeds.items()}
        results = self._request().infer(tensors, share_inputs=False, share_outputs=False)
        names = list(output_names) if output_names else [s.name for s in self._outputs]
        return [np.asarray(results[self.compiled.output(name)]) for name in names]


def parity_sessions(ir_files: dict[str, Path], precisions: Sequence[str],
                    threads: int | None = None) -> dict[str, OpenVINOSession]:
    """Variant name -> compiled IR for `check_parity`: `<graph>_openvino_<precision>` (e.g. generator_openvino_bf16,
    generator_uint8_openvino_fp32). 'uint8' in the name makes parity compare grey levels."""
    return {f"{graph}_openvino_{precision}": OpenVINOSession(path, precision, threads)
            for graph, path in ir_files.items() for precision in precisions}


def describe_ir(xml: str | os.PathLike) -> dict[str, Any]:
    """Paths, sizes and IO of an IR for export_summary.json (IO read from the model, not compiled)."""
    ov = require_openvino()
    xml, binary = ir_paths(xml)
    model = ov.Core().read_model(str(xml))
    return {"xml": str(xml), "bin": str(binary), "bytes": xml.stat().st_size + binary.stat().st_size,
            "inputs": [_io_entry(p) for p in model.inputs], "outputs": [_io_entry(p) for p in model.outputs]}


def _io_entry(port: Any) -> dict[str, Any]:
    """As `onnx_export.describe_io` writes an input or output: name, numpy dtype name, shape ('batch' dynamic)."""
    spec = _spec(port)
    return {"name": spec.name, "dtype": np.dtype(port.get_element_type().to_dtype()).name, "shape": spec.shape}
