"""`python -m stages.generate <command>`: render from a trained generator (`<command> --help` for its flags).

    images        seeds -> seed0000.png ... (--grid COLSxROWS: one grid.png; a conditional network without
                  --class: classes.png, one row per class; --projected-w FILE.npz: proj00.png ...;
                  StyleGAN3: --translate X,Y --rotate DEG move the image, as the official gen_images.py)
    style-mixing  the style-mixing matrix grid.png plus {row}-{col}.png
    video         interpolation through keyframe seeds, a COLSxROWS grid per frame, .mp4 or .gif
    project       find the w reproducing --target: target.png, proj.png, projected_w.npz (, proj.mp4)
    rank          score seeds (or --images FOLDER) against --prompt texts with CLIP (--clip): per prompt
                  rank/<prompt>/topNN.png and the top-k images, plus rank/scores.csv; skipped with a note
                  when no prompts or no CLIP model are configured (the pipeline's default)
    convert       TensorFlow or PyTorch StyleGAN2(-ADA) pickle -> .safetensors snapshot
    explore       a web page on 127.0.0.1 to browse the network: seeds, truncation, classes, interpolation,
                  style mixing, StyleGAN3 translate/rotate and FFT, snapshots of a run, two networks side by
                  side (--compare); see docs/explorer.md

Defaults come from the `generate:` section of params.yaml (shared keys, then the command's own
sub-section); flags override them. Exit status: 0 done, 1 environment (offline detector download, disk),
2 bad input (flags, params, a network or file that cannot be used).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import OneLineParser, add_common_flags, add_config_flags, load_config, run_stage
from stages.common.config import load_params, params_section
from stages.generate.config import (
    CommonConfig,
    ExploreConfig,
    GenerateError,
    ImagesConfig,
    ProjectConfig,
    RankConfig,
    StyleMixingConfig,
    VideoConfig,
    command_section,
)

PROG = "python -m stages.generate"

COMMANDS: dict[str, tuple[type[CommonConfig], str]] = {
    "images": (ImagesConfig, "seeds -> PNGs, grids, class grids; or render saved ws"),
    "style-mixing": (StyleMixingConfig, "style-mixing matrix"),
    "video": (VideoConfig, "latent interpolation video"),
    "project": (ProjectConfig, "project an image into W"),
    "rank": (RankConfig, "rank samples (or a folder of images) by text prompts with CLIP"),
    "explore": (ExploreConfig, "browse the network in a web page (127.0.0.1)"),
}

HELP = {
    "network": "snapshot (.safetensors), official pickle, URL, or training run folder",
    "outdir": "output folder",
    "trunc": "truncation psi (1 = none)",
    "trunc_cutoff": "truncate only the first N ws",
    "noise_mode": "per-pixel noise",
    "class_idx": "class label (conditional networks)",
    "device": "cpu | cuda | cuda:N | auto",
    "batch_size": "images per forward pass",
    "mlflow": "log the outputs as MLflow artifacts (also SG2_MLFLOW=1)",
    "seeds": "e.g. 0-35,40 (ranges inclusive)",
    "projected_w": "render ws saved by `project` (.npz, key 'w')",
    "grid": "COLSxROWS, e.g. 4x2 (images: one grid.png; video: cells per frame)",
    "all_classes": "classes.png, one row per class (default: for a conditional network without --class)",
    "translate": "StyleGAN3 only: translate the image by X,Y image sizes, e.g. 0.3,1 (official gen_images.py)",
    "rotate": "StyleGAN3 only: rotate the image by DEG degrees",
    "rows": "row seeds, e.g. 85,100,75",
    "cols": "column seeds, e.g. 55,821",
    "styles": "ws indices taken from the column seed, e.g. 0-6",
    "w_frames": "frames between keyframes",
    "kind": "interpolation",
    "loop": "seamless loop",
    "output": "out.mp4 or out.gif",
    "fps": "frames per second",
    "bitrate": "MP4 bitrate, e.g. 12M",
    "target": "image to project",
    "num_steps": "optimisation steps",
    "seed": "seed of the noise init and the w perturbation",
    "save_video": "write proj.mp4",
    "detector_dir": "folder holding vgg16.pt (offline use)",
    "detector_url": "override the VGG16 download URL",
    "prompts": "text to rank by; repeat --prompt for several (params: a list)",
    "clip": "CLIP folder, weight file, or name: ViT-B/32, openai/clip-vit-base-patch32 (cached in $SG2_CACHE_DIR)",
    "top_k": "images kept per prompt",
    "images": "rank the images of this folder instead of rendering --seeds",
    # explore
    "compare": "a second network side by side on the same seeds (snapshot, run folder, models:/NAME@ALIAS)",
    "host": "listen address (127.0.0.1; 0.0.0.0 shows the page to other machines)",
    "port": "TCP port (0 = any free port, printed at start)",
    "seed2": "interpolation: the other seed",
    "interp_frames": "interpolation loop: frames from one seed to the other",
    "interp_fps": "interpolation loop: frames per second (at most)",
    "mix_rows": "style-mixing panel: row seeds",
    "mix_cols": "style-mixing panel: column seeds",
    "mix_styles": "style-mixing panel: ws taken from the column seed, e.g. 0-6",
    "max_mix_seeds": "style-mixing panel: most row (and column) seeds",
    "batch_window_ms": "dynamic batching: requests within this window share a batch (0 = off)",
    "max_queue": "images waiting to render; more are answered 503",
    "max_connections": "open connections; more are answered 503",
    "timeout_s": "idle connection / queued request limit (seconds)",
    "max_body_bytes": "largest JSON body of POST /api/image",
    "cache_networks": "generators kept loaded (snapshot picker, --compare)",
    "fft_range_db": "FFT view: dB span of the colour map",
    "fft_beta": "FFT view: Kaiser window beta",
    "png_compress_level": "PNG deflate level 0-9 (1: fast)",
    "open_browser": "open the page in the default browser",
}
# explore's --seed is the page's first seed, and --batch-size the most images one batch of requests holds.
EXPLORE_HELP = {**HELP, "seed": "the page's first seed", "batch_size": "most images rendered in one batch"}


def add_repeatable_flag(parser: argparse.ArgumentParser, field: str, flags: Sequence[str], metavar: str) -> None:
    """Replace the comma-list flag `add_config_flags` made for a list field with a repeatable one: prompts
    contain commas, so `--prompt "a cat, smiling" --prompt "a dog"` is the only unambiguous spelling. The
    parser must have been made with conflict_handler="resolve" so the new flags take over the old one."""
    parser.add_argument(*flags, dest=field, action="append", default=None, metavar=metavar,
                        help=f"{HELP.get(field, '')} (default: none)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (cls, text) in COMMANDS.items():
        # "resolve" lets rank's repeatable --prompt replace the generated comma-list flag (and nothing else).
        p = sub.add_parser(name, help=text, description=text,
                           conflict_handler="resolve" if cls is RankConfig else "error")
        add_common_flags(p)
        add_config_flags(p, cls, EXPLORE_HELP if cls is ExploreConfig else HELP, aliases={"class_idx": ["--class"]})
        if cls is RankConfig:
            add_repeatable_flag(p, "prompts", ["--prompt", "--prompts"], "TEXT")
    # `convert` is the convert stage's command under this name too (the official tools keep it next to generate);
    # `main` hands it to `python -m stages.convert` before parsing, so this stage imports no other stage's engine.
    sub.add_parser("convert", help="TF or PyTorch network pickle -> .safetensors snapshot (python -m stages.convert)",
                   add_help=False)
    return parser


def forward_to_convert(args: Sequence[str]) -> int:
    """`python -m stages.generate convert ...` = `python -m stages.convert ...`, run as its own process; its
    output passes through this process's streams."""
    proc = subprocess.run([sys.executable, "-m", "stages.convert", *args], capture_output=True, text=True,
                          check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


def config_for(command: str, args: argparse.Namespace) -> CommonConfig:
    """params.yaml `generate:` (shared + command sub-section), then the flags that were given."""
    cls = COMMANDS[command][0]
    section = params_section(load_params(getattr(args, "params", None)), "generate")
    return load_config(cls, "generate", args, extra_section=command_section(section, command.replace("-", "_")))


def run_command(command: str, cfg: CommonConfig, progress: bool = True) -> tuple[list[Path], dict[str, float]]:
    """Load G and run one render command; returns written files and metrics."""
    if command == "rank":  # loads its own inputs: a network, or a folder of images instead
        from stages.generate.rank import run_rank

        return run_rank(cfg, progress=progress)  # type: ignore[arg-type]
    from models.precision import generator_precision
    from models.serialization.loading import load_generator
    from stages.common.device import resolve_device
    from stages.generate.images import generate_images
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
    with generator_precision(cfg.precision, G, device):
        return runners[command]()


def _attach_signed_values(argv: list[str], flags: tuple[str, ...] = ("--translate", "--rotate")) -> list[str]:
    """`--translate -0.3,1` -> `--translate=-0.3,1`: argparse would take a value starting with '-' that is not
    a plain number for another option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def worth_logging(files: list[Path], max_singles: int = 16) -> list[Path]:
    """What a person looks at in MLflow: the grids and videos, and a handful of single images (a style-mixing
    matrix writes one file per cell; its grid.png holds them all)."""
    if len(files) <= max_singles:
        return files
    grids = [f for f in files if f.name in ("grid.png", "classes.png") or f.suffix in (".mp4", ".gif", ".npz")]
    return grids or files[:max_singles]


def artifact_folder(command: str, path: Path, outdir: str) -> str:
    """MLflow artifact folder of an output: rank keeps its per-prompt folders, the others are flat."""
    if command == "rank":
        try:
            return "generate/" + path.parent.relative_to(outdir).as_posix()
        except ValueError:
            pass
    return f"generate/{command}"


def rank_is_configured(cfg: RankConfig, args: argparse.Namespace) -> bool:
    """Whether `rank` has prompts and a CLIP model. Not configured is fine in params.yaml (the pipeline skips
    ranking); a --prompt or --clip flag without its partner is a mistake the user should hear about."""
    if cfg.configured:
        return True
    if args.prompts or args.clip:
        missing = "--clip PATH_OR_NAME (params generate.rank.clip)" if not cfg.clip else \
            "--prompt TEXT (params generate.rank.prompts)"
        raise GenerateError(f"rank needs prompts and a CLIP model; missing {missing}")
    return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = _attach_signed_values([str(a) for a in (sys.argv[1:] if argv is None else argv)])
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        # argparse would read the option's value as the command ("invalid choice: '1'").
        print(f"{PROG}: error: the command comes first: {PROG} <{'|'.join([*COMMANDS, 'convert'])}> "
              f"[options]; got {argv[0]} (see --help)", file=sys.stderr)
        return 2
    if argv and argv[0] == "convert":
        return forward_to_convert(argv[1:])

    def body(args: argparse.Namespace) -> None:
        from stages.common.tracking import make_tracker

        cfg = config_for(args.command, args)
        if isinstance(cfg, ExploreConfig):  # a server, not a render: nothing written, nothing to log
            from stages.generate.explore import run_explore

            run_explore(cfg)
            return
        if isinstance(cfg, RankConfig):
            if args.images is not None and args.network is not None:
                raise GenerateError("--images and --network exclude each other (rank a folder, or render seeds)")
            if not rank_is_configured(cfg, args):
                print("note: rank: no prompts/clip configured (generate.rank.prompts, generate.rank.clip); skipped",
                      file=sys.stderr)
                return
        files, metrics = run_command(args.command, cfg)
        for f in files:
            print(f)
        tracker, note = make_tracker(cfg.mlflow)
        if note:
            print(f"note: {note}")
        # Settings as tags, not params: a run may be logged into repeatedly (MLFLOW_RUN_ID) and params are
        # write-once.
        tracker.start(f"generate {args.command}", tags={"stage": "generate", **{
            f"generate.{k}": str(v) for k, v in dataclasses.asdict(cfg).items()}})
        tracker.log_metrics({f"generate.{k}": v for k, v in metrics.items()})
        for f in worth_logging(files) if args.command != "rank" else files:
            tracker.log_artifact(f, artifact_folder(args.command, f, cfg.outdir))
        tracker.end("FINISHED")

    return run_stage(build_parser(), argv, body)
