"""Serve the pipeline (or a sweep) flow on a cron schedule; needs a Prefect server to schedule against.

    prefect server start                               # elsewhere, once
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve --cron "0 3 * * *"

Without PREFECT_API_URL there is no scheduler (Prefect's in-process server cannot schedule), so this says
so in one line instead of serving nothing. SIGTERM/Ctrl-C stop it cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings

# No telemetry from a project machine (the CLI may run outside `make`, which sets these too).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--cron", default="0 3 * * *", help="cron schedule (server time zone)")
    parser.add_argument("--name", default="nightly", help="deployment name")
    parser.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("python -m flows.serve: error: no Prefect server to schedule against: start one (`prefect server "
              "start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api; to run the pipeline once, use "
              "`python -m flows.pipeline`", file=sys.stderr)
        return 1
    from flows.pipeline import pipeline

    # Prefect's shutdown on SIGTERM leaves one coroutine unawaited; its warning is noise to the user.
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    # serve() registers the deployment with the server and polls for scheduled runs until stopped.
    with contextlib.suppress(KeyboardInterrupt):
        pipeline.serve(name=args.name, cron=args.cron, parameters={"project_dir": args.project_dir})
    return 0


if __name__ == "__main__":
    sys.exit(main())
