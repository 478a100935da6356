"""export: a trained generator -> ONNX graphs, parity report, TensorRT engine script, Triton repository.

    python -m stages.export --network runs/00000/network-snapshot-000100.safetensors --outdir exports/
    python -m stages.export --network ffhq.pkl --fp16 --simplify --batch-opt 8 --batch-max 32 --mlflow
    python -m stages.export render --model exports/generator_uint8.onnx --seeds 0-7 --trunc 0.7 --outdir out/

Reads the `export:` section of params.yaml; flags override single fields. The work is
`stages.export.export_all`; see that package for the graph contract (inputs z, [c], truncation_psi
[B, 1]; outputs img [B, C, H, W] float32 or img_uint8 [B, H, W, C]).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from stages.common.config import ConfigError, add_params_argument, config_from_args
from stages.export.config import ExportConfig

_FIELDS = [f.name for f in dataclasses.fields(ExportConfig)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stages.export",
        description="Export G_ema to ONNX (+fp16, uint8 serving head, synthesis-only), check parity with "
                    "onnxruntime, write a trtexec script and a Triton model repository. "
                    "Subcommand: `render` (see `python -m stages.export render --help`).",
    )
    add_params_argument(p)
    p.add_argument("--network", help="snapshot, official pickle or URL (G_ema is exported)")
    p.add_argument("--outdir", help="output directory (default exports)")
    p.add_argument("--opset", type=int, help="ONNX opset, >= 17 (default 18)")
    p.add_argument("--truncation-cutoff", dest="truncation_cutoff", type=int, help="psi applies to the first N ws")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None, help="also write *_fp16.onnx")
    p.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=None, help="onnxslim the graphs")
    p.add_argument("--engine", action=argparse.BooleanOptionalAction, default=None,
                   help="build a TensorRT engine here (needs tensorrt and a CUDA GPU)")
    p.add_argument("--engine-fp16", dest="engine_fp16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--batch-min", dest="batch_min", type=int)
    p.add_argument("--batch-opt", dest="batch_opt", type=int)
    p.add_argument("--batch-max", dest="batch_max", type=int, help="also Triton's max_batch_size")
    p.add_argument("--workspace-mb", dest="workspace_mb", type=int, help="TensorRT workspace pool (MiB)")
    p.add_argument("--parity-tol", dest="parity_tol", type=float, help="fp32 max abs error gate")
    p.add_argument("--triton-name", dest="triton_name")
    p.add_argument("--triton-instance-kind", dest="triton_instance_kind", choices=["KIND_GPU", "KIND_CPU"])
    p.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=None,
                   help="register the serving graph in MLflow with an alias")
    p.add_argument("--registered-model", dest="registered_model")
    p.add_argument("--alias")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    return p


def build_render_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.export render",
                                description="Render seeds to PNGs through an exported graph or TensorRT engine.")
    p.add_argument("--model", required=True, help=".onnx graph (onnxruntime) or .plan engine (TensorRT)")
    p.add_argument("--seeds", required=True, help="e.g. 0-7,10")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1)")
    p.add_argument("--class", dest="class_idx", type=int, default=None, help="class index (conditional networks)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--outdir", required=True)
    p.add_argument("--cpu", action="store_true", help="onnxruntime CPU provider even when CUDA is available")
    return p


def render_main(argv: Sequence[str]) -> int:
    from stages.export.render import render_seeds
    from stages.export.tensorrt_build import TensorRTUnavailable
    from stages.generate.seeds import parse_seeds

    args = build_render_parser().parse_args(argv)
    try:
        providers = ["CPUExecutionProvider"] if args.cpu else None
        paths = render_seeds(args.model, parse_seeds(args.seeds), args.outdir, psi=args.trunc,
                             class_idx=args.class_idx, batch=args.batch, providers=providers)
    except (OSError, ValueError, TensorRTUnavailable) as exc:
        print(f"export render: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} images to {args.outdir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "render":
        return render_main(argv[1:])
    args = build_parser().parse_args(argv)
    # Our progress lines at INFO; the exporter/optimizer libraries log hundreds of INFO lines per graph.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("stages.export").setLevel(logging.INFO)
    try:
        config = config_from_args(ExportConfig, "export", args, _FIELDS)
    except ConfigError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return 0

    from models import SnapshotError, UnsafePickleError, UnsupportedPickleError
    from stages.export.exporter import ParityError, export_all
    from stages.export.onnx_export import ExportError
    from stages.export.tensorrt_build import TensorRTUnavailable

    try:
        summary = export_all(config)
    except (OSError, ValueError, SnapshotError, UnsafePickleError, UnsupportedPickleError, ExportError,
            ParityError, TensorRTUnavailable) as exc:
        # Expected failures are about inputs or the machine: one line, not a traceback.
        print(f"export: error: {exc}", file=sys.stderr)
        return 1
    for name, g in summary["graphs"].items():
        print(f"  {name:<22} {g['bytes'] / 1e6:8.1f} MB  {g['nodes']:5d} nodes  {g['path']}")
    print(f"parity passed: {summary['parity']['passed']}; Triton repository: {summary['triton']['repository']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
