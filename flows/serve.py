"""Serve the pipeline flow on a cron schedule; needs a Prefect server to schedule against.

    prefect server start                               # elsewhere, once
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve --cron "0 3 * * *"

Without PREFECT_API_URL there is no scheduler (Prefect's in-process server cannot schedule), so this says
so in one line (exit 1) instead of serving nothing. SIGTERM/Ctrl-C stop it cleanly (exit 0).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any

# No telemetry from a project machine (the CLI may run outside `make`, which sets these too).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from flows.cli import flow_parser
from stages.common.cli import run_stage
from stages.common.errors import EnvironmentFault


def main(argv: list[str] | None = None) -> int:
    parser = flow_parser("python -m flows.serve", __doc__)
    parser.add_argument("--cron", default="0 3 * * *", help="cron schedule (server time zone)")
    parser.add_argument("--name", default="nightly", help="deployment name")

    def body(args: Any) -> None:
        if not os.environ.get("PREFECT_API_URL"):
            raise EnvironmentFault("no Prefect server to schedule against: start one (`prefect server start`) and "
                                   "set PREFECT_API_URL=http://127.0.0.1:4200/api; to run the pipeline once, use "
                                   "`python -m flows.pipeline`")
        from flows.pipeline import pipeline

        # Prefect's shutdown on SIGTERM leaves one coroutine unawaited; its warning is noise to the user.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        # serve() registers the deployment with the server and polls for scheduled runs until stopped.
        with contextlib.suppress(KeyboardInterrupt):
            pipeline.serve(name=args.name, cron=args.cron, parameters={"project_dir": args.project_dir})

    return run_stage(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
