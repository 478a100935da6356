"""The team's DVC remote, for real: push from one clone, pull into a fresh one, nothing recomputed; a missing
or corrupted remote object is one line naming it, and the workspace keeps what it had.

Run by `make test-services` (SG2_SERVICES_TEST=1). The remote is the one infra/services/run_stack.py starts
without Docker (a shared-filesystem remote in its state dir, configured by `run_stack.py dvc-remote`); the
clones are real git clones of a bare "origin", as teammates' checkouts are. Pushes and pulls go through
`python -m flows.remote`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

if os.environ.get("SG2_SERVICES_TEST") != "1":
    pytest.skip("real-services test: run `make test-services` (SG2_SERVICES_TEST=1)", allow_module_level=True)
pytest.importorskip("dvc")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "services"))
from run_stack import Stack  # noqa: E402

from tests.test_flow import TINY  # noqa: E402

pytestmark = pytest.mark.services
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
DVC = str(Path(sys.executable).with_name("dvc"))
TIMINGS: dict[str, float] = {}
NOTES: dict[str, str] = {}
STAGES = ["demo_data", "prepare", "validate", "train"]  # what a teammate shares: data and a trained run


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("SG2_PARAMS", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def remote(cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "flows.remote", cmd, "--project-dir", str(cwd)], cwd=ROOT, check=check)


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file: equal before and after = nothing rewritten."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def object_path(remote_dir: Path, md5: str) -> Path:
    return remote_dir / "files" / "md5" / md5[:2] / md5[2:]


def lock_md5(clone: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A bare origin, the stack's remote, and two clones configured like teammates' checkouts."""
    base = tmp_path_factory.mktemp("team")
    src = base / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("stages", "models", "ops", "flows"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", src / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", src / ".gitignore")
    (src / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    run([*GIT, "init", "-q", "-b", "main"], src)
    run([DVC, "init", "-q"], src)
    run([*GIT, "add", "-A"], src)
    run([*GIT, "commit", "-qm", "project"], src)
    run([*GIT, "clone", "-q", "--bare", str(src), str(base / "origin.git")], base)
    state = Path(tempfile.mkdtemp(prefix="sg2-remote-"))
    stack = Stack(state, ui=False)
    stack.start_dvc_remote()
    clones = {}
    for name in ("alice", "bob"):
        run([*GIT, "clone", "-q", str(base / "origin.git"), str(base / name)], base)
        stack.configure_dvc(base / name)
        clones[name] = base / name
    yield stack, clones
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(team):
    """Alice prepares and trains, commits dvc.lock and pushes (git and DVC); Bob pulls both."""
    stack, clones = team
    alice, bob = clones["alice"], clones["bob"]
    t0 = time.time()
    run([DVC, "repro", "train"], alice)
    TIMINGS["alice: dvc repro train (prepare + train)"] = time.time() - t0
    run([*GIT, "add", "-A"], alice)
    run([*GIT, "commit", "-qm", "trained"], alice)
    run([*GIT, "push", "-q", "origin", "main"], alice)
    t0 = time.time()
    remote("push", alice)
    TIMINGS["alice: flows.remote push"] = time.time() - t0
    pushed = sum(p.stat().st_size for p in stack.dvc_remote.rglob("*") if p.is_file())
    objects = sum(1 for p in stack.dvc_remote.rglob("*") if p.is_file())
    NOTES["pushed"] = f"{pushed / 1e6:.1f} MB in {objects} objects"
    run([*GIT, "pull", "-q", "origin", "main"], bob)
    t0 = time.time()
    remote("pull", bob)
    TIMINGS["bob: flows.remote pull"] = time.time() - t0
    return stack, alice, bob


def test_a_fresh_clone_pulls_and_recomputes_nothing(shared):
    _, alice, bob = shared
    for stage in STAGES:
        assert run([DVC, "status", "--json", stage], bob).stdout.strip() in ("{}", ""), stage
    run_dir = TINY["train"]["run_dir"]
    assert tree_state(bob / run_dir).keys() == tree_state(alice / run_dir).keys()
    before, lock = tree_state(bob / run_dir), (bob / "dvc.lock").read_text()
    t0 = time.time()
    out = run([DVC, "repro", "train"], bob)
    TIMINGS["bob: dvc repro train (nothing to do)"] = time.time() - t0
    assert "Running stage" not in out.stdout, out.stdout
    assert tree_state(bob / run_dir) == before and (bob / "dvc.lock").read_text() == lock
    zip_path = TINY["prepare"]["dest"]
    assert (bob / zip_path).read_bytes() == (alice / zip_path).read_bytes()


@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_a_bad_remote_object_is_one_line_and_the_workspace_is_kept(shared, fault):
    """Alice prepares a new dataset version and pushes it; its object is then lost or damaged on the remote.
    Bob's pull names the file and the object in one line (exit 1); his workspace keeps the old version."""
    stack, alice, bob = shared
    dest = TINY["prepare"]["dest"]
    if not (alice / ".fault-version").exists():  # once per module: a second dataset version on the remote
        params = yaml.safe_load((alice / "params.yaml").read_text())
        params["prepare"]["max_images"] = 600
        (alice / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run([DVC, "repro", "--single-item", "prepare"], alice)
        run([*GIT, "add", "-A"], alice)
        run([*GIT, "commit", "-qm", "600 images"], alice)
        run([*GIT, "push", "-q", "origin", "main"], alice)
        (alice / ".fault-version").write_text("")
    remote("push", alice)  # (re)uploads what the remote lacks
    md5 = lock_md5(alice, "prepare", dest)
    obj = object_path(stack.dvc_remote, md5)
    assert obj.is_file()
    if fault == "missing":
        obj.unlink()
    else:
        obj.chmod(0o644)
        obj.write_bytes(b"not the dataset" + obj.read_bytes()[15:])
    run([*GIT, "pull", "-q", "origin", "main"], bob)
    kept = {p: (bob / p).read_bytes() for p in (dest, f"{dest}.report.json")}
    runs_before = tree_state(bob / TINY["train"]["run_dir"])
    proc = remote("pull", bob, check=False)
    lines = proc.stderr.strip().splitlines()
    NOTES[f"{fault} object"] = lines[-1] if lines else "(no message)"
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert dest in lines[0] and md5[2:] in lines[0] and fault in lines[0], lines[0]
    assert (bob / dest).read_bytes() == kept[dest], "the workspace's dataset must stay as it was"
    assert tree_state(bob / TINY["train"]["run_dir"]) == runs_before
    assert not (bob / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).exists(), "no bad object in the cache"
    # Repaired on the remote (Alice pushes again), Bob's pull goes through.
    obj.unlink(missing_ok=True)
    remote("push", alice)
    remote("pull", bob)
    assert (bob / dest).read_bytes() == (alice / dest).read_bytes()
    assert json.loads(run([DVC, "status", "--json", "prepare"], bob).stdout or "{}") == {}
    # Back to Bob's old state for the next fault case: the old dataset checked out, the new one not cached.
    run([*GIT, "checkout", "-q", "HEAD~1", "--", "params.yaml", "dvc.lock"], bob)
    run([DVC, "checkout", "--force", "prepare"], bob)
    run([*GIT, "checkout", "-q", "HEAD", "--", "params.yaml", "dvc.lock"], bob)
    (bob / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink()
