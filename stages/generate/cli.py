"""generate: render from a trained generator.  `python -m stages.generate <command> --help`

    images        seeds -> seed0000.png ... (--grid RxC: one grid.png; --all-classes: classes.png;
                  --projected-w FILE.npz: proj00.png ...)
    style-mixing  the style-mixing matrix grid.png plus {row}-{col}.png
    video         interpolation through keyframe seeds, a ROWSxCOLS grid per frame, .mp4 or .gif
    project       find the w reproducing --target: target.png, proj.png, projected_w.npz (, proj.mp4)
    convert       TensorFlow or PyTorch StyleGAN2(-ADA) pickle -> .safetensors snapshot

Defaults come from the `generate:` section of params.yaml (shared keys, then the command's own
sub-section), flags override them. Bad arguments are reported in one line with exit code 2; inputs
that cannot be read (missing network, corrupt pickle, missing detector) in one line with exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from stages.common.config import ConfigError, add_params_argument, build_config, load_params
from stages.generate.config import (
    CommonConfig,
    GenerateError,
    ImagesConfig,
    ProjectConfig,
    StyleMixingConfig,
    VideoConfig,
    command_section,
)

PROG = "python -m stages.generate"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _common_flags(p: argparse.ArgumentParser, network: bool = True) -> None:
    add_params_argument(p)
    if network:
        p.add_argument("--network", help="snapshot (.safetensors), official pickle, or URL")
    p.add_argument("--outdir", help="output folder")
    p.add_argument("--trunc", type=float, help="truncation psi (1 = none)")
    p.add_argument("--trunc-cutoff", type=int, help="truncate only the first N ws")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], help="per-pixel noise")
    p.add_argument("--class", dest="class_idx", type=int, metavar="K", help="class label (conditional networks)")
    p.add_argument("--device", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--batch-size", type=int, help="images per forward pass")
    p.add_argument("--mlflow", action="store_true", default=None,
                   help="log outputs as MLflow artifacts (on by itself when MLFLOW_RUN_ID is set)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n", 1)[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("images", help="seeds -> PNGs, grids, class grids; or render saved ws")
    _common_flags(p)
    p.add_argument("--seeds", help="e.g. 0-35,40 (ranges inclusive)")
    p.add_argument("--projected-w", metavar="FILE.npz", help="render ws saved by `project` (key 'w')")
    p.add_argument("--grid", metavar="RxC", help="tile the images into one ROWSxCOLS grid.png")
    p.add_argument("--all-classes", action="store_true", default=None, help="classes.png: one row per class")

    p = sub.add_parser("style-mixing", help="style-mixing matrix")
    _common_flags(p)
    p.add_argument("--rows", help="row seeds, e.g. 85,100,75")
    p.add_argument("--cols", help="column seeds, e.g. 55,821")
    p.add_argument("--styles", help="ws indices taken from the column seed, e.g. 0-6")

    p = sub.add_parser("video", help="latent interpolation video")
    _common_flags(p)
    p.add_argument("--seeds", help="keyframe seeds, cell by cell; a multiple of ROWS*COLS")
    p.add_argument("--grid", metavar="RxC", help="ROWSxCOLS interpolations per frame")
    p.add_argument("--w-frames", type=int, help="frames between keyframes")
    p.add_argument("--kind", choices=["cubic", "linear"], help="interpolation")
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None, help="seamless loop")
    p.add_argument("--output", help="out.mp4 or out.gif")
    p.add_argument("--fps", type=int)
    p.add_argument("--bitrate", help="MP4 bitrate, e.g. 12M")

    p = sub.add_parser("project", help="project an image into W")
    _common_flags(p)
    p.add_argument("--target", help="image to project")
    p.add_argument("--num-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--save-video", action=argparse.BooleanOptionalAction, default=None, help="write proj.mp4")
    p.add_argument("--detector-dir", help="folder holding vgg16.pt (offline use)")
    p.add_argument("--detector-url", help="override the VGG16 download URL")

    p = sub.add_parser("convert", help="TF or PyTorch network pickle -> .safetensors snapshot")
    p.add_argument("--source", required=True, help="pickle path or URL (TensorFlow or PyTorch StyleGAN2(-ADA))")
    p.add_argument("--dest", required=True, help="output .safetensors")
    p.add_argument("--cache-dir", help="download cache for URLs")
    p.add_argument("--mlflow", action="store_true", default=None, help="log the snapshot as an MLflow artifact")
    return parser


_CONFIGS: dict[str, type[CommonConfig]] = {
    "images": ImagesConfig, "style-mixing": StyleMixingConfig, "video": VideoConfig, "project": ProjectConfig,
}


def config_for(command: str, args: argparse.Namespace) -> CommonConfig:
    """params.yaml `generate:` (shared + command sub-section), then the flags that were given."""
    cls = _CONFIGS[command]
    section = load_params(getattr(args, "params", None)).get("generate")
    if section is not None and not isinstance(section, dict):
        raise ConfigError("generate: must be a mapping in params.yaml")
    fields = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    return build_config(cls, command_section(section, command.replace("-", "_")), overrides)


def run_command(command: str, cfg: CommonConfig, progress: bool = True) -> tuple[list[Path], dict[str, float]]:
    """Load G and run one render command; returns written files and metrics."""
    from stages.generate.images import generate_images, load_generator, resolve_device
    from stages.generate.projector import run_projection
    from stages.generate.style_mixing import style_mixing
    from stages.generate.video import render_video

    device = resolve_device(cfg.device)
    G = load_generator(cfg.require_network(), device)
    runners: dict[str, Callable[[], Any]] = {
        "images": lambda: (generate_images(G, cfg), {}),
        "style-mixing": lambda: (style_mixing(G, cfg), {}),
        "video": lambda: (render_video(G, cfg, progress=progress), {}),
        "project": lambda: run_projection(G, cfg, progress=progress),
    }
    return runners[command]()


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures about the inputs (not bugs): reported in one line, exit 1."""
    from models import SnapshotError, UnsafePickleError, UnsupportedPickleError

    errors: list[type[BaseException]] = [OSError, SnapshotError, UnsafePickleError, UnsupportedPickleError,
                                         pickle.UnpicklingError]
    try:  # the detector loader's own error type, when it has one
        from stages.evaluate import detectors

        errors += [e for e in vars(detectors).values()
                   if isinstance(e, type) and issubclass(e, Exception) and e.__module__ == detectors.__name__]
    except ImportError:
        pass
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    # An OSError subclass built with several constructor args renders as "[Errno None] ..." even after
    # passing a message to OSError.__init__; its single-message args are the readable text then.
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed in one line)
        return int(exc.code or 0)
    prog = f"{PROG} {args.command}"
    try:
        if args.command == "convert":
            from stages.generate.convert import convert_network

            files, metrics, settings = convert_network(args.source, args.dest, cache_dir=args.cache_dir), {}, {}
            use_mlflow = bool(args.mlflow)
        else:
            cfg = config_for(args.command, args)
            files, metrics = run_command(args.command, cfg)
            settings, use_mlflow = dataclasses.asdict(cfg), cfg.mlflow
        for f in files:
            print(f)
        from stages.generate.tracking import log_outputs, mlflow_requested

        if mlflow_requested(use_mlflow):
            run_id = log_outputs(files, f"generate/{args.command}", params=settings, metrics=metrics)
            print(f"logged {len(files)} file(s) to MLflow run {run_id}")
    except (GenerateError, ConfigError) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except _expected_errors() as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
