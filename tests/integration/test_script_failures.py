"""The project's scripts and CLI end an expected failure (wrong URL, refused login, unreachable server,
missing privilege) with a message and exit code 2, never a Python traceback, and never echo a password."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from devsupport.local_postgres import LocalPostgres

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql://someone:pw-not-shown@127.0.0.1:1/db"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [
    ["scripts/cleanup_history.py", "--database-url", UNREACHABLE],
    ["scripts/cleanup_history.py", "--database-url", "not a url"],
    ["scripts/preview_pictures.py", "er", "--database-url", UNREACHABLE],
    ["scripts/preview_pictures.py", "graph", "/nonexistent/graph.dot"],
    ["scripts/preview_comment.py", "/nonexistent/preview.json"],
    ["-m", "infra.migrate", "status"],
], ids=lambda a: " ".join(a[:2]))
def test_expected_failures_end_in_a_message(args: list[str]) -> None:
    done = run(*args, env={"DATABASE_URL": UNREACHABLE})
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.stderr.strip() and "pw-not-shown" not in done.stderr + done.stdout


def test_cleanup_history_without_the_privilege_says_which_url_to_use() -> None:
    server = LocalPostgres(cron_database="postgres").start()  # pg_cron in the database the URL reaches
    try:
        role, password = "nobody", "pw-" + uuid.uuid4().hex
        with psycopg.connect(server.address.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_cron")
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                            sql.Literal(password)))
        done = run("scripts/cleanup_history.py", "--database-url",
                   f"postgresql://{role}:{password}@127.0.0.1:{server.port}/postgres", "--job", "nope")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "may not read the job's run history" in done.stderr and "--cron-database" in done.stderr
        assert password not in done.stderr
    finally:
        server.stop()
