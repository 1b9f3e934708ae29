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
    ["-m", "infra.migrations_cli", "status"],
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


# Nothing listens on port 1 of loopback: the connection is refused at once.
NOWHERE = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2"


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("name", "args", "says"), [
    ("cleanup_history.py", ["--database-url", NOWHERE], "cannot read the history"),
    ("preview_comment.py", ["/nonexistent/preview.json"], "pass the file `pulumi preview --json` wrote"),
    ("preview_pictures.py", ["er", "--database-url", NOWHERE, "--out", "/tmp/never-written.dot"],
     "Check --database-url"),
    ("preview_pictures.py", ["graph", "/nonexistent/g.dot"], "pass the file `pulumi stack graph FILE` wrote"),
    ("stack.py", ["output", "any", "--backend-url", "file:///proc/no-state-here"], "Pass a writable --backend-url"),
])
def test_a_script_failing_on_its_input_prints_the_fix_without_a_traceback(name: str, args: list[str],
                                                                         says: str) -> None:
    done = script(name, *args)
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
