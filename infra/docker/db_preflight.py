#!/usr/bin/env python3
"""Log in to PostgreSQL with a server's database URL before the server starts; say in one line what is wrong.

    db_preflight.py URL_ENV_VAR PASSWORD_SETTING [--wait SECONDS]

MLflow retries a rejected login for minutes and Prefect prints a 150-line traceback; this prints e.g.
`error: PostgreSQL at postgres:5432 rejected the password for user 'mlflow': check MLFLOW_DB_PASSWORD in infra/.env`
and exits 1. Uses psycopg2 or asyncpg, whichever the image has.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import unquote, urlsplit


def connect(url: str) -> None:
    parts = urlsplit(url.replace("+asyncpg", "").replace("+psycopg2", ""))
    kwargs = {"host": parts.hostname, "port": parts.port or 5432, "user": unquote(parts.username or ""),
              "password": unquote(parts.password or ""), "database": parts.path.lstrip("/") or "postgres"}
    try:
        import psycopg2
    except ImportError:
        import asyncio

        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(**kwargs, timeout=10)
            await conn.close()

        asyncio.run(go())
        return
    kwargs["dbname"] = kwargs.pop("database")
    psycopg2.connect(**kwargs, connect_timeout=10).close()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    url_var, setting = argv[0], argv[1]
    wait = float(argv[argv.index("--wait") + 1]) if "--wait" in argv else 60.0
    url = os.environ.get(url_var)
    if not url:
        print(f"error: {url_var} is not set (see infra/.env.example)", file=sys.stderr)
        return 1
    where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 5432}"
    deadline = time.time() + wait
    while True:
        try:
            connect(url)
            return 0
        except Exception as exc:
            text = " ".join(str(exc).split())
            if "password authentication failed" in text:
                user = unquote(urlsplit(url).username or "?")
                print(f"error: PostgreSQL at {where} rejected the password for user '{user}': check {setting} "
                      "in infra/.env (it must match the password the database volume was created with)",
                      file=sys.stderr)
                return 1
            if time.time() > deadline:
                print(f"error: cannot reach PostgreSQL at {where} ({url_var}): {text[:200]}", file=sys.stderr)
                return 1
            time.sleep(2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
