"""ONNX graphs of a generator: mapping + synthesis, synthesis only, a uint8 serving head, fp16, slimming.

Graphs (all with a dynamic batch axis named `batch`, opset >= 17, noise baked as constants):

    generator.onnx        z [B, z_dim] f32, (c [B, c_dim] f32 if conditional), truncation_psi [B, 1] f32
                          -> img [B, C, H, W] f32, ~[-1, 1]
    generator_uint8.onnx  same inputs -> img_uint8 [B, H, W, C] uint8, (img * 127.5 + 128).clamp(0, 255)
    synthesis.onnx        ws [B, num_ws, w_dim] f32 -> img [B, C, H, W] f32
    *_fp16.onnx           same IO names, shapes and dtypes (float32 in and out), float16 inside

StyleGAN3 generators (same graphs and IO) have no noise; their user transform `synthesis.input.transform` is
a buffer and is baked as a constant with the value it holds when the graph is exported.

psi is `[B, 1]` rather than a scalar so that every input's first dimension is the batch (Triton
with max_batch_size > 0 and dynamic batching require it) and a batch can mix truncation values.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper

from stages.common.errors import CheckFailed
from stages.common.fileio import write_bytes_atomic
from stages.export.wrappers import SynthesisForExport, generator_for_export, symbolic_batch_shapes

log = logging.getLogger(__name__)

BATCH_DIM = "batch"
MIN_OPSET = 17
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so trace with 2


class ExportError(CheckFailed):
    """The exporter produced a graph that does not meet the contract (e.g. a fixed batch size)."""


def generator_input_names(c_dim: int) -> list[str]:
    return ["z", "c", "truncation_psi"] if c_dim > 0 else ["z", "truncation_psi"]


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
            output_names: list[str], opset: int) -> onnx.ModelProto:
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} < {MIN_OPSET}: TensorRT and the float16 converter need >= {MIN_OPSET}")
    batch = torch.export.Dim(BATCH_DIM, min=1, max=65536)
    dynamic_shapes = tuple({0: batch} for _ in args)
    with symbolic_batch_shapes(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (e.g. torchvision ops not registered)
        program = torch.onnx.export(
            module, args, None, dynamo=True, opset_version=opset, optimize=True, verbose=False,
            input_names=input_names, output_names=output_names, dynamic_shapes=dynamic_shapes,
        )
    model = program.model_proto
    _name_batch_dims(model)
    check_dynamic_batch(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _name_batch_dims(model: onnx.ModelProto) -> None:
    # The exporter names the symbol after the Dim ("batch") on inputs but may use "s0"-style names on
    # outputs; one name everywhere makes the graph self-describing for Triton/TensorRT users.
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = BATCH_DIM


def check_dynamic_batch(model: onnx.ModelProto) -> None:
    """Every graph input and output must have a symbolic first dimension."""
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            fixed = dims[0].dim_value if dims else None
            raise ExportError(f"{vi.name}: batch dimension is fixed ({fixed}), expected a dynamic '{BATCH_DIM}' axis")


def export_generator(G: torch.nn.Module, truncation_cutoff: int | None = None, opset: int = 18) -> onnx.ModelProto:
    """Mapping + truncation (psi input) + synthesis in one graph; output `img` [B, C, H, W] float32."""
    module = generator_for_export(G, truncation_cutoff)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn([EXAMPLE_BATCH, G.z_dim], generator=gen)
    psi = torch.full([EXAMPLE_BATCH, 1], 0.7)
    args: tuple[torch.Tensor, ...] = (z, psi)
    if G.c_dim > 0:
        c = torch.nn.functional.one_hot(torch.arange(EXAMPLE_BATCH) % G.c_dim, G.c_dim).to(torch.float32)
        args = (z, c, psi)
    return _export(module, args, generator_input_names(G.c_dim), ["img"], opset)


def export_synthesis(G: torch.nn.Module, opset: int = 18) -> onnx.ModelProto:
    """Synthesis only: `ws` [B, num_ws, w_dim] -> `img` [B, C, H, W] float32."""
    ws = torch.randn([EXAMPLE_BATCH, G.num_ws, G.w_dim], generator=torch.Generator().manual_seed(0))
    return _export(SynthesisForExport(G).eval(), (ws,), ["ws"], ["img"], opset)


def add_uint8_output(model: onnx.ModelProto, source: str = "img", name: str = "img_uint8") -> onnx.ModelProto:
    """Replace float output `source` [B, C, H, W] by `name` [B, H, W, C] uint8, the official conversion.

    Appended as graph nodes (not a second export) so the serving graph is the fp32 graph plus exactly
    this head: (x * 127.5 + 128).clamp(0, 255) -> uint8 (truncation, like torch's .to(uint8)) -> NHWC.
    """
    model = _copy(model)
    graph = model.graph
    (out,) = [o for o in graph.output if o.name == source]
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]  # [B, C, H, W]
    p = f"{name}_"
    graph.initializer.extend([
        helper.make_tensor(p + "scale", TensorProto.FLOAT, [], [127.5]),
        helper.make_tensor(p + "offset", TensorProto.FLOAT, [], [128.0]),
        helper.make_tensor(p + "lo", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor(p + "hi", TensorProto.FLOAT, [], [255.0]),
    ])
    graph.node.extend([
        helper.make_node("Mul", [source, p + "scale"], [p + "scaled"], name=p + "mul"),
        helper.make_node("Add", [p + "scaled", p + "offset"], [p + "shifted"], name=p + "add"),
        helper.make_node("Clip", [p + "shifted", p + "lo", p + "hi"], [p + "clipped"], name=p + "clip"),
        helper.make_node("Cast", [p + "clipped"], [p + "nchw"], to=TensorProto.UINT8, name=p + "cast"),
        helper.make_node("Transpose", [p + "nchw"], [name], perm=[0, 2, 3, 1], name=p + "nhwc"),
    ])
    graph.output.remove(out)
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.UINT8, [dims[0], dims[2], dims[3], dims[1]]))
    onnx.checker.check_model(model, full_check=True)
    return model


# Kept in float32 inside fp16 graphs: the mapping MLP and the demodulation coefficients (Gemm/MatMul
# over squared styles, Pow, Sqrt, Reciprocal) are a negligible share of the FLOPs but can overflow
# float16 (sums of squares of styles), while the convolutions that dominate run in float16.
FP16_KEEP_FP32_OPS = ("Gemm", "MatMul", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "ReduceSum")


def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and activations inside, float32 IO (keep_io_types), selected ops kept in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model16 = convert_float_to_float16(
        _copy(model), keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32_OPS],
    )
    # The converter appends the input casts at the end of the node list; ONNX requires topological order.
    _toposort(model16.graph)
    # Intermediate type annotations from the fp32 export are partly stale after the conversion (the
    # converter retypes tensors it casts); drop them and let shape inference recompute.
    del model16.graph.value_info[:]
    onnx.checker.check_model(model16, full_check=True)
    return model16


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    new_nodes = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(new_nodes, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(new_nodes)


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """onnxslim where installed and where it reduces the node count; else the model unchanged.

    The caller must re-run parity on the result (the CLI does).
    """
    before = len(model.graph.node)
    try:
        import onnxslim
    except ImportError:
        return model, {"simplified": False, "reason": "onnxslim not installed", "nodes": before}
    slim = onnxslim.slim(_copy(model))
    after = len(slim.graph.node)
    if after >= before:
        return model, {"simplified": False, "reason": "no reduction", "nodes": before}
    check_dynamic_batch(slim)
    onnx.checker.check_model(slim, full_check=True)
    return slim, {"simplified": True, "nodes_before": before, "nodes": after}


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    # Generators up to 1024 px are ~120 MB, far below protobuf's 2 GB limit: one self-contained file.
    return write_bytes_atomic(path, model.SerializeToString())


_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.UINT8: "uint8",
           TensorProto.INT64: "int64", TensorProto.INT32: "int32"}


def describe_io(model: onnx.ModelProto) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{'inputs': [{'name', 'dtype', 'shape'}], 'outputs': [...]}; symbolic dims appear by name."""
    def one(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        tt = vi.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tt.shape.dim]
        return {"name": vi.name, "dtype": _DTYPES.get(tt.elem_type, str(tt.elem_type)), "shape": shape}

    initializers = {i.name for i in model.graph.initializer}
    return {
        "inputs": [one(vi) for vi in model.graph.input if vi.name not in initializers],
        "outputs": [one(vi) for vi in model.graph.output],
    }


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
