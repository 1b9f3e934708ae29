"""Drift: what `pulumi refresh` finds after changes made behind Pulumi's back, and what `up` repairs.

One stack of the real program (`__main__.py`, external mode on the session's PostgreSQL server),
four changes at once, one refresh, one up: CI time is tight. The container case is the one test of
container mode here. README, "Drift", has the table.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pulumi import automation as auto

from devsupport.local_postgres import ServerAddress, free_port
from tests.e2e.test_full_stack import stack_of
from tests.e2e.test_preview_review import cron_target  # noqa: F401  (fixture: pg_cron's database exists)

pytestmark = pytest.mark.e2e

# Re-runnable (IF NOT EXISTS): a migration whose tracking row is deleted is applied again by `up`.
PROBE = "-- 900_create_drift_probe.sql\nCREATE TABLE IF NOT EXISTS drift_probe (id bigint PRIMARY KEY);\n"


CONTAINER = "docker:index/container:Container"


def resources(stack: auto.Stack) -> dict[str, dict[str, Any]]:
    """Custom resources by name (components share names with their children)."""
    return {r["urn"].rsplit("::", 1)[1]: r for r in stack.export_stack().deployment["resources"] if r.get("custom")}


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def scalar(dsn: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def test_refresh_finds_and_up_repairs_unscheduled_job_revoked_grant_deleted_tracking_row_not_a_dropped_table(
        new_stack, local_postgres, cron_target, sql_copy: Path):  # noqa: F811
    admin: ServerAddress = local_postgres.address
    database, prefix = f"drift_{uuid.uuid4().hex[:8]}", f"d{uuid.uuid4().hex[:6]}"
    (sql_copy / "900_create_drift_probe.sql").write_text(PROBE)
    job_name = f"{database}-cleanup"
    stack = stack_of(new_stack, {
        "mode": "external", "databaseName": database, "rolePrefix": prefix, "migrationsDir": str(sql_copy),
        "externalHost": admin.host, "externalPort": admin.port, "externalAdminUser": admin.user,
        "externalAdminPassword": admin.password, "externalSslMode": "disable", "externalAdminIsSuperuser": "true",
        "cleanupJobName": job_name, "protectData": "false",
    })
    stack.up(color="never")
    app_dsn, cron_dsn = admin.dsn(database), admin.dsn(cron_target["dbname"])
    cleanup_role = f"{prefix}_token_cleanup"
    can_delete = "SELECT has_table_privilege(%s, 'refresh_tokens', 'DELETE')"
    job_count = "SELECT count(*) FROM cron.job WHERE jobname = %s"
    assert scalar(cron_dsn, job_count, (job_name,)) == 1 and scalar(app_dsn, can_delete, (cleanup_role,))

    # Behind Pulumi's back:
    scalar(cron_dsn, "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s", (job_name,))
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE DELETE ON refresh_tokens FROM {}").format(sql.Identifier(cleanup_role)))
        conn.execute("DROP TABLE drift_probe")  # created by 900, whose tracking row stays

    before = resources(stack)
    stack.refresh(color="never")
    after = resources(stack)
    assert "token-cleanup" in before and "token-cleanup" not in after  # job gone: detected
    revoked = after["token-cleanup-delete-tokens"]["outputs"]["privileges"]
    assert "DELETE" not in revoked, revoked  # the grant reads what the catalog holds: detected
    assert after["900_create_drift_probe"]["outputs"] == before["900_create_drift_probe"]["outputs"]  # NOT detected

    preview = stack.preview(color="never")
    assert preview.change_summary.get("create") == 1, preview.change_summary  # the job
    assert preview.change_summary.get("replace", 0) + preview.change_summary.get("update", 0) >= 1

    stack.up(color="never")
    assert scalar(cron_dsn, job_count, (job_name,)) == 1
    assert scalar(app_dsn, can_delete, (cleanup_role,)) is True
    assert scalar(app_dsn, "SELECT to_regclass('drift_probe')") is None  # up alone cannot know

    # A deleted tracking row (also the documented repair of the dropped table): refresh finds the
    # migration not applied, up applies it again.
    scalar(app_dsn, "DELETE FROM schema_migrations WHERE version = '900' RETURNING version")
    stack.refresh(color="never")
    assert "900_create_drift_probe" not in resources(stack)
    result = stack.up(color="never")
    assert (result.summary.resource_changes or {}).get("create") == 1, result.summary.resource_changes
    assert scalar(app_dsn, "SELECT count(*) FROM schema_migrations WHERE version = '900'") == 1
    assert scalar(app_dsn, "SELECT to_regclass('drift_probe')") == "drift_probe"
    stack.preview(color="never", expect_no_changes=True)


def test_refresh_finds_and_up_repairs_a_removed_container(provider_plugins, new_stack):
    port = free_port()
    stack = stack_of(new_stack, {"hostPort": port, "protectData": "false"})
    outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
    app_url = outputs["connection_urls"]["app"]
    with psycopg.connect(app_url) as conn:
        conn.execute("INSERT INTO organizations (name) VALUES ('survives')")
    [container] = [r for r in stack.export_stack().deployment["resources"] if r["type"] == CONTAINER]
    subprocess.run(["docker", "rm", "-f", container["outputs"]["name"]], check=True, capture_output=True)

    # Everything else on that server is unreachable now: refresh only the container.
    stack.refresh(color="never", target=[container["urn"]])
    assert not any(r["type"] == CONTAINER for r in stack.export_stack().deployment["resources"])
    deadline = time.monotonic() + 15  # docker releases the published port shortly after `rm`
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    result = stack.up(color="never")
    assert (result.summary.resource_changes or {}).get("create") == 1, result.summary.resource_changes
    with psycopg.connect(app_url) as conn:  # the data lives in the volume, not the container
        assert conn.execute("SELECT count(*) FROM organizations WHERE name = 'survives'").fetchone() == (1,)
    stack.preview(color="never", expect_no_changes=True)
