"""`python -m stages.spectra <command>`: mean power spectra of datasets and generators (`<command> --help`).

    stats     mean and standard deviation of the pixel values, for whitening: prints --mean=M --std=S
    calc      mean power spectrum -> .npz (the official layout: 'spectrum', 'image_size')
    heatmap   2-D heatmap of one .npz (dB relative to white noise) -> .png/.pdf/.svg
    slices    0° and 45° slices of one or more .npz of the same size -> .png/.pdf/.svg

A source is a dataset (ZIP or image folder) or a network (snapshot, official pickle, URL, training run
folder or a named pretrained network such as stylegan3-r-ffhq-1024x1024). Defaults come from
`spectra: {<command>: {...}}` in params.yaml when present; flags override them. Exit status: 0 done,
1 environment, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stages.common.cli import OneLineParser, add_common_flags, add_config_flags, load_config, run_stage
from stages.common.config import ConfigError, load_params, params_section
from stages.spectra.config import CONFIGS, HELP, PlotConfig, SpectraConfig

PROG = "python -m stages.spectra"
DESCRIPTIONS = {
    "stats": "mean and standard deviation of a source's pixel values (for --mean/--std of calc)",
    "calc": "mean power spectrum of a source -> .npz",
    "heatmap": "heatmap of one spectrum .npz -> figure",
    "slices": "0° and 45° slices of spectrum .npz files -> figure",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, cls in CONFIGS.items():
        p = sub.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name])
        add_common_flags(p)
        add_config_flags(p, cls, HELP)
        if name in ("heatmap", "slices"):
            p.add_argument("npz_files", nargs=1 if name == "heatmap" else "*", metavar="NPZ",
                           help="spectrum file(s) written by calc")
    return parser


def config_for(args: argparse.Namespace) -> SpectraConfig | PlotConfig:
    """params.yaml `spectra.<command>`, then the flags that were given (positional .npz files as --npz)."""
    cls = CONFIGS[args.command]
    section = params_section(load_params(getattr(args, "params", None)), "spectra")
    sub = section.get(args.command) or {}
    if not isinstance(sub, dict):
        raise ConfigError(f"params.yaml: spectra.{args.command} must be a mapping of options")
    if getattr(args, "npz_files", None):
        args.npz = ",".join(args.npz_files)  # positional files win over --npz / params
    return load_config(cls, "spectra", args, extra_section=sub)


def main(argv: Sequence[str] | None = None) -> int:
    from stages.spectra import commands

    runners = {"stats": commands.run_stats, "calc": commands.run_calc, "heatmap": commands.run_heatmap,
               "slices": commands.run_slices}

    def body(args: argparse.Namespace) -> None:
        result = runners[args.command](config_for(args))
        if args.command != "stats":
            print(result)

    return run_stage(build_parser(), list(sys.argv[1:] if argv is None else argv), body)
