"""The team's DVC remote: share datasets and trained runs, with one-line errors and a workspace that a bad
remote never damages.

    python -m flows.remote push            # what this checkout's dvc.lock names -> the remote
    python -m flows.remote pull            # the remote -> cache, every object checked, then the workspace
    python -m flows.remote status          # what the remote lacks (nothing to do = exit 0)

`pull` is `dvc fetch`, a check, then `dvc checkout`: objects go to the local cache first, with their hashes
verified (the remote's `verify` option is turned on for the fetch, so a corrupted object is refused rather
than copied into the cache). An object that is missing or corrupt on the remote stops the pull before the
workspace is touched, in one line naming the file and its object (exit 1). After a pull, `dvc status` is
clean and `dvc repro` recomputes nothing that a teammate already computed.

The remote is DVC's default one (`dvc remote add -d ...`, or `-r NAME`): the team's S3-compatible store
(infra/compose.yaml) or, without Docker, the one `python infra/services/run_stack.py dvc-remote` configures.
See docs/team.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows.cli import flow_parser
from flows.project import dvc_command, stage_env
from stages.common.cli import run_stage
from stages.common.errors import BadInput, EnvironmentFault


class RemoteFault(EnvironmentFault):
    """The remote cannot give or take what the workspace needs (missing, corrupt, unreachable); exit 1."""


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*dvc_command(), *args], cwd=project, env=stage_env(), capture_output=True, text=True)


def _last_error(proc: subprocess.CompletedProcess) -> str:
    """DVC's error on one line: from its first `ERROR` line to the end (it lists targets on the lines after)."""
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    first = next((i for i, ln in enumerate(lines) if ln.startswith("ERROR")), max(len(lines) - 1, 0))
    return " ".join(" ".join(lines[first:]).split())[:500] or f"exit {proc.returncode}"


def locked_stages(project: Path) -> list[str]:
    """The stages dvc.lock records: those whose outputs exist somewhere (a stage that never ran has none to
    fetch or check out, and naming it would make DVC fail)."""
    import yaml

    lock = project / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    return list(stages)


def remote_of(project: Path, name: str | None) -> tuple[str, str]:
    """(name, url) of the remote to use: `name`, else DVC's default."""
    if name is None:
        proc = _dvc(project, "remote", "default")
        name = proc.stdout.strip()
        if proc.returncode != 0 or not name:
            raise BadInput(f"{project}: no default DVC remote; add one (`dvc remote add -d team URL`, see "
                           "docs/team.md) or pass -r NAME")
    proc = _dvc(project, "config", f"remote.{name}.url")
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BadInput(f"no DVC remote named {name!r} ({_last_error(proc)})")
    return name, proc.stdout.strip()


def _object_path(url: str, md5: str) -> str:
    return f"{url.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}"


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    return Path(url) if "://" not in url else None


def object_of(project: Path, workspace_path: str) -> str | None:
    """The md5 dvc.lock gives `workspace_path` (a file output, or a file inside a directory output, read from
    the directory's listing in the cache); None when it cannot be told."""
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text()) if (project / "dvc.lock").is_file() else {}
    target = workspace_path.rstrip("/")
    for stage in (lock or {}).get("stages", {}).values():
        for out in stage.get("outs") or []:
            path, md5 = str(out.get("path", "")).rstrip("/"), out.get("md5")
            if not md5:
                continue
            if path == target:
                return md5.removesuffix(".dir")
            if md5.endswith(".dir") and target.startswith(path + "/"):
                listing = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
                try:
                    entries = json.loads(listing.read_text())
                except (OSError, ValueError):
                    return None
                rel = target[len(path) + 1:]
                return next((e["md5"] for e in entries if e.get("relpath") == rel), None)
    return None


def lock_objects(project: Path) -> set[str]:
    """The md5 of every output dvc.lock records (a directory's listing object without its `.dir`)."""
    import yaml

    lock = project / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    return {str(o["md5"]).removesuffix(".dir") for st in stages.values() for o in st.get("outs") or [] if o.get("md5")}


def unusable_objects(project: Path) -> list[str]:
    """The workspace paths whose objects are not in the local cache (DVC's own state, `dvc data status`)."""
    proc = _dvc(project, "data", "status", "--json", "--granular")
    if proc.returncode != 0:
        raise RemoteFault(f"dvc data status failed: {_last_error(proc)}")
    text = proc.stdout
    data: dict[str, Any] = json.loads(text[text.find("{"):]) if "{" in text else {}
    return [p for p in data.get("not_in_cache", []) if not p.endswith("/")]


def pull(project: Path, remote: str | None = None) -> dict[str, Any]:
    name, url = remote_of(project, remote)
    if not locked_stages(project):
        return {"remote": name, "url": url, "fetched": ["dvc.lock records no stage: nothing to pull"]}
    # verify: DVC hashes what it downloads and refuses an object whose content does not match its name.
    # On a directory remote, DVC deletes a damaged object it meets while verifying: which ones were there
    # before tells "corrupt" from "missing" afterwards.
    remote_dir = _local_path(url)
    present_before = {md5 for md5 in lock_objects(project)
                      if remote_dir is not None and Path(_object_path(str(remote_dir), md5)).exists()}
    local_config = project / ".dvc" / "config.local"
    had_local_config = local_config.exists()
    verify = _dvc(project, "config", "--local", f"remote.{name}.verify")
    was = verify.stdout.strip() if verify.returncode == 0 else None
    _dvc(project, "remote", "modify", "--local", name, "verify", "true")
    try:
        fetch = _dvc(project, "fetch", "-r", name, *locked_stages(project))
    finally:
        if was is None:
            _dvc(project, "remote", "modify", "--local", "--unset", name, "verify")  # as it was: not set
            if not had_local_config and local_config.read_text().strip() in ("", f"['remote \"{name}\"']"):
                local_config.unlink()
        else:
            _dvc(project, "remote", "modify", "--local", name, "verify", was)
    bad = unusable_objects(project)
    if bad:
        first = bad[0]
        md5 = object_of(project, first)
        where = _object_path(url, md5) if md5 else f"remote '{name}' ({url})"
        local = _local_path(where) if md5 else None
        if local is None:
            state = "missing or corrupt"
        elif local.exists():
            state = "corrupt (its content does not match its hash)"
        elif md5 in present_before:
            state = "corrupt (its content did not match its hash; DVC removed it from the remote)"
        else:
            state = "missing"
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RemoteFault(f"{first}: remote object {where} is {state}{more}; nothing in the workspace was changed")
    if fetch.returncode != 0:
        raise RemoteFault(f"dvc fetch from remote '{name}' ({url}) failed: {_last_error(fetch)}")
    checkout = _dvc(project, "checkout", *locked_stages(project))
    if checkout.returncode != 0:
        raise RemoteFault(f"dvc checkout failed: {_last_error(checkout)}")
    return {"remote": name, "url": url, "fetched": fetch.stdout.strip().splitlines()[-1:] or [""]}


def push(project: Path, remote: str | None = None) -> dict[str, Any]:
    name, url = remote_of(project, remote)
    if not locked_stages(project):
        return {"remote": name, "url": url, "pushed": ["dvc.lock records no stage: nothing to push"]}
    proc = _dvc(project, "push", "-r", name, *locked_stages(project))
    if proc.returncode != 0:
        raise RemoteFault(f"dvc push to remote '{name}' ({url}) failed: {_last_error(proc)}")
    return {"remote": name, "url": url, "pushed": proc.stdout.strip().splitlines()[-1:] or [""]}


def status(project: Path, remote: str | None = None) -> dict[str, Any]:
    name, url = remote_of(project, remote)
    proc = _dvc(project, "status", "--cloud", "--json", "-r", name, *locked_stages(project))
    if proc.returncode != 0:
        raise RemoteFault(f"dvc status of remote '{name}' ({url}) failed: {_last_error(proc)}")
    text = proc.stdout
    return {"remote": name, "url": url, "differs": json.loads(text[text.find("{"):]) if "{" in text else {}}


def main(argv: list[str] | None = None) -> int:
    parser = flow_parser("python -m flows.remote", __doc__)
    parser.add_argument("command", choices=["push", "pull", "status"], help="what to do")
    parser.add_argument("-r", "--remote", default=None, help="the DVC remote (default: the default remote)")

    def body(args: Any) -> int:
        project = Path(args.project_dir).resolve()
        out = {"push": push, "pull": pull, "status": status}[args.command](project, args.remote)
        print(json.dumps(out, indent=2))
        return 1 if args.command == "status" and out["differs"] else 0

    return run_stage(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
