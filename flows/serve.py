"""Serve the pipeline flow on a cron schedule (needs a Prefect server: `prefect server start`).

    python -m flows.serve --cron "0 3 * * *"
"""

from __future__ import annotations

import argparse
import sys

from flows.pipeline import pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--cron", default="0 3 * * *", help="cron schedule (server time zone)")
    parser.add_argument("--name", default="nightly", help="deployment name")
    parser.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    args = parser.parse_args(argv)
    # serve() registers the deployment with the server and polls for scheduled runs until stopped.
    pipeline.serve(name=args.name, cron=args.cron, parameters={"project_dir": args.project_dir})
    return 0


if __name__ == "__main__":
    sys.exit(main())
