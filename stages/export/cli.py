"""`python -m stages.export`: a trained generator -> ONNX graphs, parity report, TensorRT script, Triton repository.

    python -m stages.export --network runs/00000/network-snapshot-000100.safetensors --outdir exports/
    python -m stages.export --network ffhq.pkl --fp16 --simplify --batch-opt 8 --batch-max 32 --mlflow
    python -m stages.export render --model exports/generator_uint8.onnx --seeds 0-7 --trunc 0.7 --outdir out/
    python -m stages.export serve --model exports/generator_uint8.onnx --port 8080   # seeds in, PNGs out (CPU)

Reads the `export:` section of params.yaml; flags override single fields. The work is
`stages.export.exporter.export_all`; graph contract: inputs z, [c], truncation_psi [B, 1]; outputs img
[B, C, H, W] float32 or img_uint8 [B, H, W, C]. Exit status: 0 done, 1 parity failed or environment
(TensorRT, disk), 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence

from stages.common.cli import add_common_flags, add_config_flags, load_config, run_stage, stage_parser
from stages.export.config import HELP, ExportConfig, RenderConfig, ServeConfig

PROG = "python -m stages.export"


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(PROG, __doc__)
    add_config_flags(parser, ExportConfig, HELP)
    sub = parser.add_subparsers(dest="command", metavar="[render | serve]")
    render = sub.add_parser("render", help="render seeds to PNGs through an exported graph or engine",
                            description="Render seeds to PNGs through an exported graph, TensorRT engine or snapshot.")
    add_common_flags(render)
    add_config_flags(render, RenderConfig, HELP, aliases={"class_idx": ["--class"]})
    serve = sub.add_parser("serve", help="HTTP server on CPU: seeds in, PNGs out (KServe v2 JSON too)",
                           description="Serve an exported generator over HTTP: GET /png?seed=N, POST /png, and the "
                                       "KServe v2 JSON protocol Triton speaks (exports/triton_client.py works "
                                       "against both).")
    add_common_flags(serve)
    add_config_flags(serve, ServeConfig, HELP)
    return parser


def export(args: argparse.Namespace) -> None:
    config = load_config(ExportConfig, "export", args)
    if config.dry_run:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return
    # Our progress lines at INFO; the exporter/optimizer libraries log hundreds of INFO lines per graph.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("stages.export").setLevel(logging.INFO)
    # torch's exporter names every torchvision op it skips (nms, roi_align, ...) on each export: the
    # generator uses none of them, so the lines are noise here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    from stages.export.exporter import export_all

    summary = export_all(config)
    for name, g in summary["graphs"].items():
        print(f"  {name:<22} {g['bytes'] / 1e6:8.1f} MB  {g['nodes']:5d} nodes  {g['path']}")
    for name, ir in ((summary.get("openvino") or {}).get("ir") or {}).items():
        print(f"  {name + '.xml':<22} {ir['bytes'] / 1e6:8.1f} MB  OpenVINO IR  {ir['xml']}")
    print(f"parity passed: {summary['parity']['passed']}; Triton repository: {summary['triton']['repository']}")


def render(args: argparse.Namespace) -> None:
    from stages.common.seeds import parse_seeds
    from stages.export.render import render_seeds

    cfg = load_config(RenderConfig, "render", args, params={})
    providers = ["CPUExecutionProvider"] if cfg.cpu else None
    paths = render_seeds(cfg.model, parse_seeds(cfg.seeds), cfg.outdir, psi=cfg.trunc, class_idx=cfg.class_idx,
                         batch=cfg.batch, providers=providers, precision=cfg.precision)
    print(f"wrote {len(paths)} images to {cfg.outdir}")


def serve(args: argparse.Namespace) -> None:
    from stages.export.serve import make_server

    cfg = load_config(ServeConfig, "serve", args, params={})
    server = make_server(cfg)
    host, port = server.server_address[:2]
    print(f"serving {cfg.model} as '{cfg.name}' on http://{host}:{port} (GET /png?seed=0, POST /v2/models/"
          f"{cfg.name}/infer); batching: {f'{cfg.batch_window_ms:g} ms window' if cfg.batch_window_ms else 'off'}, "
          f"max batch {cfg.max_batch}; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


COMMANDS = {"render": render, "serve": serve}


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(build_parser(), argv, lambda args: COMMANDS.get(args.command, export)(args))
