"""The export stage as one function: network -> ONNX graphs, parity, TensorRT script/engine, Triton repo.

Outputs in `config.outdir` (each written atomically):
    generator.onnx, generator_uint8.onnx, synthesis.onnx   (+ *_fp16.onnx with fp16)
    generator.xml/.bin, generator_uint8.xml/.bin            OpenVINO IR of the same graphs (with openvino=True)
    parity.json             onnxruntime (and OpenVINO fp32/bf16) vs PyTorch figures (DVC metric)
    build_engine.sh         trtexec commands for the target GPU; installs generator.plan as <triton_name>_trt
    triton/<triton_name>_trt.config.pbtxt   the Triton config of that engine model (copied in by the script)
    generator.plan          only with engine=True (TensorRT + CUDA GPU)
    model_repository/       Triton: <triton_name>/config.pbtxt, <triton_name>/1/model.{onnx,plan}
    triton_client.py        KServe v2 HTTP/JSON client (seeds in, PNGs out) for Triton and `stages.export serve`
    README.md               what each file is and how to serve it, with this export's names and figures
    export_summary.json     what was written, IO of every graph, hashes, parity verdict

StyleGAN3 generators export the same way. Their `synthesis.input.transform` (the inverse of a user's
translate/rotate, see `stages.generate images --translate/--rotate`) is a buffer, so the graphs bake its value
*at export time* as a constant: set it before exporting to serve a moved or rotated generator; it is recorded
in export_summary.json under "transform".
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import onnx
import torch

from models.serialization.loading import load_generator
from stages.common.errors import CheckFailed
from stages.common.fileio import write_json_atomic, write_text_atomic
from stages.export import onnx_export as ox
from stages.export import triton_client
from stages.export.config import ExportConfig
from stages.export.parity import Gate, check_parity, make_inputs, parity_metrics, reference_images
from stages.export.readme import write_readme
from stages.export.tensorrt_build import (
    BatchProfile,
    build_script,
    install_commands,
    profile_shapes,
    trtexec_command,
)
from stages.export.triton import TritonModelConfig, render_config, write_model_repository

log = logging.getLogger("stages.export")


class ParityError(CheckFailed):
    """An fp32 graph differs from PyTorch by more than the tolerance (figures in parity.json)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def baked_transform(G: torch.nn.Module) -> list[list[float]] | None:
    """The StyleGAN3 user transform the graphs bake in (3x3, row-major), or None for a network without one."""
    transform = getattr(getattr(getattr(G, "synthesis", None), "input", None), "transform", None)
    return transform.detach().cpu().double().tolist() if isinstance(transform, torch.Tensor) else None


def export_all(config: ExportConfig, G: torch.nn.Module | None = None) -> dict[str, Any]:
    """Run the whole stage; `G` overrides loading `config.network` (tests, notebooks)."""
    if config.openvino:  # refuse before minutes of export, not after
        from stages.export.openvino_export import require_openvino

        require_openvino()
    G = load_generator(config.network) if G is None else G.eval().requires_grad_(False)
    out = Path(config.outdir)
    out.mkdir(parents=True, exist_ok=True)
    cutoff = config.truncation_cutoff

    log.info("exporting generator (%d px, c_dim=%d) to ONNX opset %d", G.img_resolution, G.c_dim, config.opset)
    graphs: dict[str, onnx.ModelProto] = {
        "generator": ox.export_generator(G, truncation_cutoff=cutoff, opset=config.opset),
        "synthesis": ox.export_synthesis(G, opset=config.opset),
    }
    simplify_info: dict[str, Any] = {}
    if config.simplify:
        for name in list(graphs):
            graphs[name], simplify_info[name] = ox.simplify(graphs[name])
    graphs["generator_uint8"] = ox.add_uint8_output(graphs["generator"])
    if config.fp16:
        for name in ("generator", "synthesis"):
            graphs[f"{name}_fp16"] = ox.convert_fp16(graphs[name])
        graphs["generator_uint8_fp16"] = ox.add_uint8_output(graphs["generator_fp16"])

    files: dict[str, Path] = {}
    for name, model in graphs.items():
        files[name] = ox.save_model(model, out / f"{name}.onnx")

    parity_graphs: dict[str, Any] = {n: str(p) for n, p in files.items()}
    gates: dict[str, Gate] = {}
    ir_files: dict[str, Path] = {}
    if config.openvino:
        ir_files, sessions, gates = openvino_ir(config, files, out)
        parity_graphs.update(sessions)

    # Parity runs on the graphs as written (after slimming / conversion), from the saved files.
    report = check_parity(G, parity_graphs, batches=config.parity_batches, psi_values=config.parity_psi,
                          truncation_cutoff=cutoff, tolerance=config.parity_tol, gates=gates)
    write_json_atomic(out / "parity.json", report)
    if not report["passed"]:
        bad = [n for n, v in report["variants"].items() if not v["passed"]]
        raise ParityError(f"parity failed for {', '.join(bad)}; see {out / 'parity.json'}")

    io = {name: ox.describe_io(model) for name, model in graphs.items()}
    profile = BatchProfile(config.batch_min, config.batch_opt, config.batch_max)
    commands = []
    for name in ("generator", "synthesis"):
        shapes = profile_shapes(io[name]["inputs"], profile)
        commands.append(trtexec_command(f"{name}.onnx", f"{name}.plan", shapes, fp16=config.engine_fp16,
                                        workspace_mb=config.workspace_mb, timing_cache="timing.cache",
                                        trtexec="$TRTEXEC"))
    # The engine built on the target GPU becomes a second Triton model; its config is staged outside the
    # repository, because Triton refuses to start on a model folder without a model file in it.
    trt_model = f"{config.triton_name}_trt"
    trt_config = TritonModelConfig(
        name=trt_model, platform="tensorrt_plan", max_batch_size=config.batch_max, inputs=io["generator"]["inputs"],
        outputs=io["generator"]["outputs"], preferred_batch_sizes=sorted({config.batch_opt, config.batch_max}),
        max_queue_delay_us=config.triton_max_queue_delay_us, instance_kind="KIND_GPU",
    )
    staged = f"triton/{trt_model}.config.pbtxt"
    write_text_atomic(out / staged, render_config(trt_config))
    install = install_commands("generator.plan", "model_repository", trt_model, staged)
    write_text_atomic(out / "build_engine.sh", build_script(commands, install), mode=0o755)
    write_text_atomic(out / "triton_client.py", Path(triton_client.__file__).read_text())

    engine_info: dict[str, Any] | None = None
    if config.engine:
        engine_info = build_and_check_engine(G, config, out, io["generator"]["inputs"], profile)

    # Serving: the uint8 graph (images leave the server ready to encode) or, with an engine, the plan.
    if engine_info is not None:
        serve_file, platform, serve_io, kind = out / "generator.plan", "tensorrt_plan", io["generator"], "KIND_GPU"
    else:
        use16 = config.fp16 and config.triton_instance_kind == "KIND_GPU"
        serve_name = "generator_uint8_fp16" if use16 else "generator_uint8"
        serve_file, platform, serve_io = files[serve_name], "onnxruntime_onnx", io[serve_name]
        kind = config.triton_instance_kind
    triton_cfg = TritonModelConfig(
        name=config.triton_name, platform=platform, max_batch_size=config.batch_max,
        inputs=serve_io["inputs"], outputs=serve_io["outputs"],
        preferred_batch_sizes=sorted({config.batch_opt, config.batch_max}),
        max_queue_delay_us=config.triton_max_queue_delay_us, instance_kind=kind,
    )
    triton_paths = write_model_repository(out / "model_repository", triton_cfg, serve_file)

    summary: dict[str, Any] = {
        "network": str(config.network),
        "generator": {k: int(getattr(G, k)) for k in ("z_dim", "c_dim", "w_dim", "num_ws", "img_resolution",
                                                        "img_channels")},
        "opset": config.opset,
        "truncation_psi": "input [B, 1] float32; 1 = no truncation; mixed values per batch allowed",
        "noise": "const (baked)",
        "transform": baked_transform(G),  # StyleGAN3: synthesis.input.transform at export time, baked
        "graphs": {
            name: {"path": str(files[name]), "sha256": _sha256(files[name]), "bytes": files[name].stat().st_size,
                   "nodes": len(graphs[name].graph.node), "opset": ox.opset_of(graphs[name]), **io[name]}
            for name in graphs
        },
        "simplify": simplify_info,
        "openvino": describe_openvino(config, ir_files, report),
        "parity": {"passed": report["passed"], **parity_metrics(report)},
        "tensorrt": {"script": str(out / "build_engine.sh"), "commands": commands,
                     "profile": dataclasses.asdict(profile), "engine": engine_info},
        "triton": {"repository": str(out / "model_repository"), "config": str(triton_paths["config"]),
                   "model": str(triton_paths["model"]), "platform": platform},
        "config": dataclasses.asdict(config),
    }
    summary["triton"]["engine_model"] = {"name": trt_model, "config": str(out / staged),
                                         "installed_by": str(out / "build_engine.sh")}
    write_readme(out, summary, trt_model)
    log_to_mlflow(config, files, summary)
    if config.register:
        summary["registered"] = register(config, G, files, summary)
    write_json_atomic(out / "export_summary.json", summary)
    return summary


def openvino_ir(config: ExportConfig, files: dict[str, Path],
                out: Path) -> tuple[dict[str, Path], dict[str, Any], dict[str, Gate]]:
    """generator[_uint8].xml/.bin from the ONNX files as written; the compiled sessions and gates for parity.

    fp32 meets the ONNX graphs' gates (max abs error `parity_tol`, uint8 within one level); bf16 (same IR,
    INFERENCE_PRECISION_HINT bf16) meets `openvino_bf16_psnr` dB on both, the worst batch counting.
    """
    from stages.export import openvino_export as ovx

    ir_files = {}
    for name in ovx.IR_GRAPHS:
        log.info("converting %s.onnx to OpenVINO IR", name)
        ir_files[name] = ovx.convert_to_ir(files[name], out / f"{name}.xml")
    sessions = ovx.parity_sessions(ir_files, config.openvino_precisions)
    gates = {name: Gate(min_psnr_db=config.openvino_bf16_psnr) for name in sessions if name.endswith("_bf16")}
    return ir_files, sessions, gates


def describe_openvino(config: ExportConfig, ir_files: dict[str, Path], report: dict[str, Any]) -> dict[str, Any]:
    """export_summary.json's "openvino": the IR files with their IO and hashes, and what each precision ran as."""
    if not ir_files:
        return {"enabled": False}
    from stages.export import openvino_export as ovx

    ran = {name: v["runtime"] for name, v in report["variants"].items() if "runtime" in v}
    return {
        "enabled": True,
        "version": ovx.openvino_version(),
        "precisions": list(config.openvino_precisions),
        "bf16_min_psnr_db": config.openvino_bf16_psnr,
        "ir": {name: {**ovx.describe_ir(xml), "sha256": {"xml": _sha256(xml), "bin": _sha256(ovx.ir_paths(xml)[1])}}
               for name, xml in ir_files.items()},
        "parity_variants": ran,  # variant -> runtime, precision asked for and the one OpenVINO ran in
    }


def build_and_check_engine(G: torch.nn.Module, config: ExportConfig, out: Path, inputs: list[dict[str, Any]],
                           profile: BatchProfile) -> dict[str, Any]:
    """Build generator.plan here, check it against PyTorch and time it at batch 1/8/32 (GPU only)."""
    from stages.export.tensorrt_build import TensorRTRunner, build_engine, time_engine, verify_engine

    plan = build_engine(out / "generator.onnx", out / "generator.plan", profile_shapes(inputs, profile),
                        fp16=config.engine_fp16, workspace_mb=config.workspace_mb,
                        timing_cache=out / "timing.cache")
    runner = TensorRTRunner(plan)
    feeds = make_inputs(G, min(8, config.batch_max), config.parity_psi, seed=123)
    check = verify_engine(runner, lambda f: reference_images(G, f, config.truncation_cutoff), feeds)
    batches = [b for b in (1, 8, 32) if config.batch_min <= b <= config.batch_max]
    timing = time_engine(runner, lambda b: make_inputs(G, b, config.parity_psi), batches)
    return {"path": str(plan), "fp16": config.engine_fp16, "verify": check, "timing": timing}


def log_to_mlflow(config: ExportConfig, files: dict[str, Path], summary: dict[str, Any]) -> None:
    from stages.common.config import flatten
    from stages.common.tracking import make_tracker

    tracker, note = make_tracker(config.mlflow)
    if note:
        log.warning("%s", note)
    out = Path(config.outdir)
    tracker.start("export", params=flatten(config), tags={"stage": "export"})
    tracker.log_metrics({k: v for k, v in summary["parity"].items() if k != "passed"}
                        | {"parity.passed": float(summary["parity"]["passed"])})
    tracker.log_artifacts([files["generator"], out / "parity.json", out / "build_engine.sh"], "export")
    tracker.end("FINISHED")


def quality_of(config: ExportConfig) -> tuple[str, float | None, bool]:
    """(metric, value from the metrics file or None, lower is better) for the champion rule."""
    import json

    from stages.metrics.registry import lower_is_better

    value = None
    try:
        value = json.loads(Path(config.metrics_file).read_text()).get(config.quality_metric)
    except (OSError, ValueError):
        log.warning("%s unreadable: the new version cannot replace a champion that has a quality number",
                    config.metrics_file)
    return config.quality_metric, float(value) if isinstance(value, int | float) else None, \
        lower_is_better(config.quality_metric)


def register(config: ExportConfig, G: torch.nn.Module, files: dict[str, Path], summary: dict[str, Any],
             links: dict[str, str] | None = None) -> dict[str, Any]:
    import mlflow

    from stages.common.config import flatten
    from stages.common.tracking import experiment_name, tracking_uri, use_experiment
    from stages.export.registry import register_generator

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.active_run() is None:
        use_experiment(experiment_name())
    out = Path(config.outdir)
    return register_generator(
        files["generator_uint8"], config.registered_model, c_dim=int(G.c_dim), quality=quality_of(config),
        links=links, metrics={k: v for k, v in summary["parity"].items() if k != "passed"},
        params=flatten(config, prefix="export."),
        artifacts=[out / "parity.json", out / "build_engine.sh", out / "model_repository" / config.triton_name
                   / "config.pbtxt"],
    )
