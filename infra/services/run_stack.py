"""The team services on this machine, without Docker: PostgreSQL, MLflow server, Prefect server (127.0.0.1 only),
and a DVC remote.

    python infra/services/run_stack.py up [--state-dir DIR] [--no-ui]   # start, print the env to use, return
    python infra/services/run_stack.py env  [--state-dir DIR]           # print the exports again
    python infra/services/run_stack.py dvc-remote [--project-dir .]     # this checkout's DVC remote -> the stack's
    python infra/services/run_stack.py down [--state-dir DIR]           # stop what `up` started, by process id

The DVC remote is a directory of the state dir (`dvc-remote/`), the shared-filesystem remote DVC supports
natively: on a team machine, put the state dir on the shared disk (NFS, ...) and every checkout that runs
`dvc-remote` pushes and pulls there. (The Docker stack, infra/compose.yaml, gives an S3-compatible store
instead.) `dvc-remote` writes `.dvc/config.local` (this machine only, never committed): the remote `team`
as the default, with `verify` on so a corrupted object is refused on pull.

PostgreSQL comes from the system's packages (`apt-get install -y postgresql`; binaries in
/usr/lib/postgresql/<ver>/bin). As root, the server runs as the `postgres` system user. Everything
listens on 127.0.0.1 on free ports; state (data dir, logs, artifacts, pids, ports) lives in the state dir
(default $SG2_STACK_DIR or /tmp/sg2-stack; `down` keeps it, `down --purge` removes it).

Credentials, the same variables as infra/.env.example: MLFLOW_DB_USER / MLFLOW_DB_PASSWORD and
PREFECT_DB_USER / PREFECT_DB_PASSWORD (random when unset and the state dir is new; the state file,
mode 0600, keeps them). A password that PostgreSQL rejects stops `up` with one line naming the variable.

Used by tests/services/test_services.py (`make test-services`) through the `Stack` class.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = Path(os.environ.get("SG2_STACK_DIR", "/tmp/sg2-stack"))
QUIET_ENV = {  # no telemetry, no update checks: nothing leaves 127.0.0.1
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}
AUTH_FAILED = re.compile(r"password authentication failed for user \"?([\w.-]+)\"?", re.I)


class StackError(RuntimeError):
    """A one-line, user-facing reason why the stack could not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pg_bindir() -> Path:
    """The newest /usr/lib/postgresql/<ver>/bin (or $SG2_PG_BINDIR), installing the package when absent."""
    if os.environ.get("SG2_PG_BINDIR"):
        return Path(os.environ["SG2_PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing PostgreSQL from the system's packages (apt-get install -y postgresql) ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise StackError("PostgreSQL server binaries not found: `apt-get install -y postgresql` or set SG2_PG_BINDIR")
    return Path(found[-1]).parent


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # always http://127.0.0.1
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Stack:
    """PostgreSQL + MLflow server + Prefect server as child processes; every pid and port in `state.json`."""

    def __init__(self, state_dir: Path | str = DEFAULT_STATE_DIR, ui: bool = True, trace_connect: bool | None = None):
        self.dir = Path(state_dir).resolve()
        self.ui = ui
        if trace_connect is None:
            trace_connect = os.environ.get("SG2_SERVICES_STRACE") == "1"
        self.trace_connect = bool(trace_connect and shutil.which("strace"))
        self.state: dict[str, Any] = self._load()

    # ----------------------------------------------------------------------------------------- state
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {"procs": {}}

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.state_file)

    def _credential(self, service: str) -> tuple[str, str]:
        """(user, password) of a service's database: the env file's variables, else the saved ones, else random."""
        saved = self.state.get("db", {}).get(service, {})
        user = os.environ.get(f"{service.upper()}_DB_USER") or saved.get("user") or service
        password = (os.environ.get(f"{service.upper()}_DB_PASSWORD") or saved.get("password")
                    or secrets.token_urlsafe(18))
        self.state.setdefault("db", {})[service] = {"user": user, "password": password}
        return user, password

    def db_url(self, service: str, driver: str = "postgresql", password: str | None = None) -> str:
        cred = self.state["db"][service]
        pw = quote(cred["password"] if password is None else password, safe="")
        return f"{driver}://{quote(cred['user'], safe='')}:{pw}@{HOST}:{self.state['pg']['port']}/{service}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.state['mlflow']['port']}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.state['prefect']['port']}/api"

    @property
    def dvc_remote(self) -> Path:
        """The DVC remote: a directory DVC reads and writes as its shared-filesystem remote."""
        return self.dir / "dvc-remote"

    def client_env(self) -> dict[str, str]:
        """What a client (flow, worker, test) needs to talk to this stack."""
        return {**QUIET_ENV, "MLFLOW_TRACKING_URI": self.mlflow_url, "PREFECT_API_URL": self.prefect_api_url,
                "PREFECT_HOME": str(self.dir / "prefect-home"), "SG2_DVC_REMOTE": str(self.dvc_remote)}

    def start_dvc_remote(self) -> None:
        """The remote's directory, writable by the group (teammates sharing the disk push to it too)."""
        self.dvc_remote.mkdir(parents=True, exist_ok=True)
        self.dvc_remote.chmod(0o2775)
        self.state["dvc_remote"] = {"url": str(self.dvc_remote)}
        self._save()

    def configure_dvc(self, project: Path | str, name: str = "team") -> str:
        """Make this stack's remote the default DVC remote of the checkout `project` (its config.local)."""
        dvc = str(Path(sys.executable).with_name("dvc")) if Path(sys.executable).with_name("dvc").exists() else "dvc"
        self.start_dvc_remote()
        for args in (["remote", "add", "--local", "--force", "--default", name, str(self.dvc_remote)],
                     ["remote", "modify", "--local", name, "verify", "true"]):
            proc = subprocess.run([dvc, *args], cwd=project, capture_output=True, text=True,
                                  env={**os.environ, **QUIET_ENV})
            if proc.returncode != 0:
                raise StackError(f"dvc {' '.join(args[:2])} in {project} failed: "
                                 f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        return name

    # ----------------------------------------------------------------------------------------- processes
    def _as_pg_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | str | None = None
              ) -> subprocess.Popen:
        """Start `cmd` in its own session (so `stop` ends it and its children by its process id), log to <name>.log."""
        log_dir = self.dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.trace_connect:  # every connect() of the process tree, to prove nothing leaves 127.0.0.1
            (self.dir / "strace").mkdir(exist_ok=True)
            cmd = ["strace", "-f", "-A", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-e", "signal=none",
                   "-o", str(self.dir / "strace" / f"{name}.log"), *cmd]
        log = (log_dir / f"{name}.log").open("ab")
        full_env = {**os.environ, **QUIET_ENV, **(env or {})}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                start_new_session=True)
        log.close()
        self.state["procs"][name] = {"pid": proc.pid, "cmd": cmd[:3], "log": str(log_dir / f"{name}.log")}
        self._save()
        return proc

    def alive(self, name: str) -> bool:
        pid = self.state["procs"].get(name, {}).get("pid")
        if not pid:
            return False
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
            if done:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM the process group this stack started for `name` (its leader is the recorded pid), then SIGKILL."""
        info = self.state["procs"].pop(name, None)
        self._save()
        if not info:
            return
        pid = info["pid"]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def _wait_http(self, name: str, url: str, timeout: float, diagnose) -> None:
        deadline = time.time() + timeout
        log_path = self.dir / "logs" / f"{name}.log"
        while time.time() < deadline:
            if http_ok(url):
                return
            try:  # MLflow retries a refused login for minutes: read its log as it goes
                diagnose(_tail(log_path, 200))
            except StackError:
                self.stop(name)
                raise
            if not self.alive(name):
                log = Path(self.state["procs"].get(name, {}).get("log", self.dir / "logs" / f"{name}.log"))
                diagnose(_tail(log, 200))
                self.stop(name)
                raise StackError(f"{name} exited before {url} answered; see {log}")
            time.sleep(0.5)
        log = self.dir / "logs" / f"{name}.log"
        diagnose(_tail(log, 200))
        self.stop(name)
        raise StackError(f"{name}: {url} not healthy after {timeout:.0f}s; see {log}")

    # ----------------------------------------------------------------------------------------- PostgreSQL
    def start_postgres(self) -> None:
        bindir = pg_bindir()
        pg_dir = self.dir / "pg"
        data = pg_dir / "data"
        fresh = not (data / "PG_VERSION").exists()
        pg_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # postgres refuses to run as root: its dirs belong to the `postgres` user
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise StackError("no `postgres` system user (created by the postgresql package)") from exc
            self.dir.chmod(0o711)
            os.chown(pg_dir, pw.pw_uid, pw.pw_gid)
        pg_dir.chmod(0o700)
        port = self.state.get("pg", {}).get("port") if not fresh else None
        port = port or free_port()
        self.state["pg"] = {"port": port, "data": str(data), "bindir": str(bindir)}
        self._save()
        if fresh:
            subprocess.run(self._as_pg_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                             "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256"]),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        opts = f"-c listen_addresses={HOST} -p {port} -k {pg_dir}"
        proc = subprocess.run(self._as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(pg_dir / "log"),
                                                "-w", "-t", "60", "-o", opts, "start"]),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"PostgreSQL did not start (pg_ctl exit {proc.returncode}); see {pg_dir / 'log'}")
        pid = int((data / "postmaster.pid").read_text().split()[0])
        self.state["pg"]["pid"] = pid
        self._save()
        if fresh:
            statements = []
            for service in ("mlflow", "prefect"):
                user, password = self._credential(service)
                u, p = user.replace('"', '""'), password.replace("'", "''")
                statements += [f'CREATE ROLE "{u}" LOGIN PASSWORD \'{p}\';',
                               f'CREATE DATABASE {service} OWNER "{u}";']
            self._save()
            self._psql("\n".join(statements))
        else:
            for service in ("mlflow", "prefect"):
                self._credential(service)
            self._save()

    def _psql(self, sql: str) -> None:
        pg = self.state["pg"]
        cmd = self._as_pg_user([str(Path(pg["bindir"]) / "psql"), "-h", str(self.dir / "pg"), "-p", str(pg["port"]),
                                "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"])
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True)  # passwords via stdin, not argv
        if proc.returncode != 0:
            raise StackError(f"psql failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")

    def stop_postgres(self) -> None:
        pg = self.state.get("pg")
        if not pg or not pg.get("pid"):
            return
        subprocess.run(self._as_pg_user([str(Path(pg["bindir"]) / "pg_ctl"), "-D", pg["data"], "-m", "fast", "-w",
                                         "stop"]), capture_output=True)
        with contextlib.suppress(ProcessLookupError):  # pg_ctl failed: end the postmaster by its pid
            os.kill(pg["pid"], 0)
            os.kill(pg["pid"], signal.SIGTERM)
        pg.pop("pid", None)
        self._save()

    def check_db(self, service: str, password: str | None = None) -> None:
        """Log in as the service's user, as its server will; a rejected password is one line naming the variable."""
        import psycopg2

        cred = self.state["db"][service]
        try:
            psycopg2.connect(host=HOST, port=self.state["pg"]["port"], dbname=service, user=cred["user"],
                             password=cred["password"] if password is None else password, connect_timeout=10).close()
        except psycopg2.OperationalError as exc:
            raise StackError(self._db_error(service, str(exc)) or f"{service} database: {str(exc).strip()}") from None

    def _db_error(self, service: str, text: str) -> str | None:
        m = AUTH_FAILED.search(text)
        if not m:
            return None
        var = f"{service.upper()}_DB_PASSWORD"
        return (f"PostgreSQL at {HOST}:{self.state['pg']['port']} rejected the password for user '{m.group(1)}': "
                f"check {var} (the env file's value must match the one the database was created with)")

    # ----------------------------------------------------------------------------------------- servers
    def start_mlflow(self, port: int | None = None, password: str | None = None, preflight: bool = True) -> None:
        if preflight:
            self.check_db("mlflow", password)
        port = port or self.state.get("mlflow", {}).get("port") or free_port()
        artifacts = self.dir / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        self.state["mlflow"] = {"port": port, "artifacts": str(artifacts)}
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
               self.db_url("mlflow", password=password), "--artifacts-destination", artifacts.as_uri(),
               "--host", HOST, "--port", str(port), "--workers", "1"]
        self.spawn("mlflow", cmd)

        def diagnose(log: str) -> None:
            msg = self._db_error("mlflow", log)
            if msg:
                raise StackError(msg)

        self._wait_http("mlflow", f"{self.mlflow_url}/health", 180, diagnose)

    def start_prefect(self, port: int | None = None, password: str | None = None, preflight: bool = True) -> None:
        if preflight:
            self.check_db("prefect", password)
        port = port or self.state.get("prefect", {}).get("port") or free_port()
        self.state["prefect"] = {"port": port}
        env = {"PREFECT_API_DATABASE_CONNECTION_URL": self.db_url("prefect", "postgresql+asyncpg", password),
               "PREFECT_HOME": str(self.dir / "prefect-home"), "PREFECT_SERVER_API_HOST": HOST,
               "PREFECT_SERVER_API_PORT": str(port), "PREFECT_API_URL": self.prefect_api_url,
               "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false"}
        cmd = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", HOST, "--port", str(port)]
        self.spawn("prefect", [*cmd, "--ui" if self.ui else "--no-ui"], env=env)

        def diagnose(log: str) -> None:
            msg = self._db_error("prefect", log)
            if msg:
                raise StackError(msg)

        self._wait_http("prefect", f"{self.prefect_api_url}/health", 180, diagnose)

    # ----------------------------------------------------------------------------------------- whole stack
    def up(self) -> Stack:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_dvc_remote()
            self.start_postgres()
            self.start_mlflow()
            self.start_prefect()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for name in list(self.state.get("procs", {}))[::-1]:
            self.stop(name)
        self.stop_postgres()

    def __enter__(self) -> Stack:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def exports(self) -> str:
        return "\n".join(f"export {k}={v}" for k, v in self.client_env().items() if v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_stack.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "env", "status", "dvc-remote"])
    parser.add_argument("--project-dir", type=Path, default=Path("."), help="dvc-remote: the checkout to configure")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--no-ui", action="store_true", help="Prefect server without its UI")
    parser.add_argument("--purge", action="store_true", help="down: also delete the state dir (database, artifacts)")
    args = parser.parse_args(argv)
    stack = Stack(args.state_dir, ui=not args.no_ui)
    try:
        if args.action == "up":
            if any(stack.alive(n) for n in stack.state.get("procs", {})):
                print(f"error: a stack is already running from {stack.dir} (run `down` first)", file=sys.stderr)
                return 1
            t0 = time.time()
            stack.up()
            print(f"# stack up in {time.time() - t0:.0f}s (state: {stack.dir}); MLflow {stack.mlflow_url}, "
                  f"Prefect {stack.prefect_api_url.removesuffix('/api')}", file=sys.stderr)
            print(stack.exports())
        elif args.action == "env":
            print(stack.exports())
        elif args.action == "dvc-remote":
            name = stack.configure_dvc(args.project_dir)
            print(f"DVC remote '{name}' (default, verify on) -> {stack.dvc_remote}  "
                  f"[{args.project_dir}/.dvc/config.local]")
        elif args.action == "status":
            for name, info in stack.state.get("procs", {}).items():
                print(f"{name}: pid {info['pid']} {'running' if stack.alive(name) else 'gone'}")
            print(f"postgres: pid {stack.state.get('pg', {}).get('pid')} port {stack.state.get('pg', {}).get('port')}")
        else:
            stack.down()
            if args.purge:
                shutil.rmtree(stack.dir, ignore_errors=True)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
