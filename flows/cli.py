"""The flows' command lines, on the stages' convention (`stages.common.cli`): one-line usage errors (exit 2),
`--debug`, and the error boundary of `stages.common.errors` (0 done, 1 environment or a failed stage,
2 bad input, 130 interrupted).

The flows take `--project-dir` instead of the stages' `--params`: DVC reads the project's own params.yaml.
"""

from __future__ import annotations

import argparse

from stages.common.cli import OneLineParser


def flow_parser(prog: str, doc: str | None) -> OneLineParser:
    parser = OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also SG2_DEBUG=1)")
    return parser
