"""The token-cleanup job through the real Pulumi engine: pg_cron really runs it.

The server of the session (tests/conftest.py) preloads pg_cron with cron.database_name =
'cron_tests'; this module makes that database the application database, as the container mode
does (cron.database_name = the application database).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pulumi
import pytest
from psycopg import sql

from devsupport.grants import grant_statement
from devsupport.local_postgres import ServerAddress
from infra import token_cleanup
from infra.connection import Connection
from infra.dynamic.cron_job import CronJob
from infra.migrate import Migrator, load_migrations
from scripts import cleanup_history
from tests.e2e.conftest import assert_not_in_state

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRON_DATABASE = "cron_tests"


@pytest.fixture
def app_database(pg_server: ServerAddress) -> Iterator[dict[str, Any]]:
    """cron_tests with the real schema, pg_cron, and a cleanup role holding only its grants."""
    cleanup_role, password = f"cleanup_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(CRON_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(CRON_DATABASE)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(cleanup_role), sql.Literal(password)))
    admin_dsn = pg_server.dsn(CRON_DATABASE)
    Migrator(admin_dsn).apply_all(load_migrations(REPO / "sql"))
    role = sql.Identifier(cleanup_role)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        # What the program grants the cleanup role (pulumi-postgresql Grant resources) and nothing more.
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(CRON_DATABASE), role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
        for grant in token_cleanup.GRANTS:
            conn.execute(grant_statement(grant, cleanup_role))
    yield {"admin_dsn": admin_dsn, "run_as": cleanup_role, "admin": pg_server}
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(CRON_DATABASE)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))


def job_program(app: dict[str, Any], schedule: str, job_name: str):
    admin: ServerAddress = app["admin"]

    def program() -> None:
        job = CronJob(
            "token-cleanup",
            connection=Connection(host=admin.host, port=admin.port, database=CRON_DATABASE, user=admin.user,
                                  password=admin.password, sslmode="disable"),
            job_name=job_name,
            schedule=schedule,
            command=token_cleanup.command(1000),
            database=CRON_DATABASE,
            run_as=app["run_as"],
            active=True,
        )
        pulumi.export("job_id", job.job_id)
    return program


def seed_tokens(admin_dsn: str, expired: int, live: int) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        org = conn.execute("INSERT INTO organizations (name) VALUES ('acme') RETURNING id").fetchone()[0]
        user = conn.execute(
            "INSERT INTO users (email, password_hash, first_name, last_name, role, organization_id)"
            " VALUES ('a@example.com', %s, 'A', 'B', 'viewer', %s) RETURNING id",
            ("$2b$10$" + "a" * 53, org),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO refresh_tokens (user_id, token, created_at, expires_at)"
            " SELECT %s, 'expired-' || g, now() - interval '8 days', now() - interval '1 day'"
            " FROM generate_series(1, %s) g", (user, expired))
        conn.execute(
            "INSERT INTO refresh_tokens (user_id, token, created_at, expires_at)"
            " SELECT %s, 'live-' || g, now(), now() + interval '7 days' FROM generate_series(1, %s) g",
            (user, live))


def test_scheduled_cleanup_runs_updates_in_place_and_is_unscheduled(app_database, new_stack):
    job_name = f"cleanup-{uuid.uuid4().hex[:6]}"
    seed_tokens(app_database["admin_dsn"], expired=2500, live=40)
    stack = new_stack(job_program(app_database, "* * * * *", job_name))
    up = stack.up(color="never")
    job_id = int(up.outputs["job_id"].value)

    # pg_cron's smallest interval is a minute: wait for one real run to finish.
    deadline = time.monotonic() + 150
    with psycopg.connect(app_database["admin_dsn"], autocommit=True) as conn:
        while True:
            run = conn.execute(
                "SELECT status, username, return_message FROM cron.job_run_details"
                " WHERE jobid = %s AND status IN ('succeeded', 'failed') ORDER BY runid DESC LIMIT 1",
                (job_id,),
            ).fetchone()
            if run or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert run is not None, "pg_cron did not run the job within 150 s"
        assert run[0] == "succeeded", run
        assert run[1] == app_database["run_as"]
        remaining = dict(conn.execute(
            "SELECT split_part(token, '-', 1), count(*) FROM refresh_tokens GROUP BY 1").fetchall())
        assert remaining == {"live": 40}
        history = conn.execute("SELECT rows_deleted FROM refresh_token_cleanup_runs").fetchall()
        assert sum(r[0] for r in history) == 2500
    # What operators run to see the job's history.
    runs = cleanup_history.history(app_database["admin_dsn"], job_name)
    assert runs and runs[-1].status == "succeeded" and runs[-1].rows_deleted == 2500

    # A new schedule is an in-place update of the same pg_cron job.
    preview = stack.preview(color="never", program=job_program(app_database, "*/5 * * * *", job_name))
    assert preview.change_summary.get("update") == 1 and "replace" not in preview.change_summary
    stack.up(color="never", program=job_program(app_database, "*/5 * * * *", job_name))
    with psycopg.connect(app_database["admin_dsn"]) as conn:
        assert conn.execute("SELECT jobid, schedule FROM cron.job WHERE jobname = %s",
                            (job_name,)).fetchall() == [(job_id, "*/5 * * * *")]
    stack.preview(expect_no_changes=True, color="never", program=job_program(app_database, "*/5 * * * *", job_name))
    assert_not_in_state(new_stack.backend, app_database["admin"].password)

    stack.destroy(color="never", program=job_program(app_database, "*/5 * * * *", job_name))
    with psycopg.connect(app_database["admin_dsn"]) as conn:
        assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = %s", (job_name,)).fetchone() == (0,)
