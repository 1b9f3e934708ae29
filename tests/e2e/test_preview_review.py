"""What `pulumi preview` tells a reviewer, through the real engine against real PostgreSQL:

- the dynamic resources' own type names, adopted by stacks recorded under the generic type;
- the review of each pending migration (what it does, squawk's warnings), and of nothing else;
- an edited applied migration refused with its message alone;
- `scripts/preview_comment.py` on a real `pulumi preview --json` of a stack that adds a migration.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pulumi
import pytest
from psycopg import sql
from pulumi import automation as auto

from devsupport.local_postgres import ServerAddress
from infra.components.migrations import Migrations, MigrationsArgs
from infra.config import migration_fixes
from infra.dynamic import cron_job as cron_job_module
from infra.dynamic import migration as migration_module
from infra.dynamic.base import GENERIC_DYNAMIC_TYPE
from infra.dynamic.cron_job import CronJob
from infra.dynamic.migration import Migration
from infra.migrate import load_migrations
from scripts import preview_comment
from scripts.stack import workspace_env
from tests.e2e.conftest import PASSPHRASE, StackFactory, program_connection

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MIGRATION_TYPE = "pulumi-python:dynamic/db:Migration"
CRON_JOB_TYPE = "pulumi-python:dynamic/db:CronJob"

# A pending migration with one of everything the review must name or warn about.
RISKY_MIGRATION = """\
-- 900_reshape_customers.sql: a migration a reviewer must not wave through
SET LOCAL lock_timeout = '5s';
CREATE TABLE audit_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text NOT NULL);
ALTER TABLE customers ADD COLUMN notes text;
CREATE INDEX customers_notes_idx ON customers (notes);
DROP TABLE behavior_patterns;
TRUNCATE refresh_tokens;
"""


@contextlib.contextmanager
def generic_types() -> Iterator[None]:
    """Declare Migration and CronJob as the code before the rename did: generic type, no alias."""
    with contextlib.ExitStack() as stack:
        for cls in (Migration, CronJob):
            stack.enter_context(mock.patch.object(cls, "_resource_type_name", "dynamic:Resource"))
        for module in (migration_module, cron_job_module):
            stack.enter_context(mock.patch.object(module, "renamed_from_generic_type", lambda opts: opts))
        yield


@pytest.fixture
def cron_target(pg_server: ServerAddress, local_postgres) -> dict[str, Any]:
    """Admin connection to the session server's pg_cron database (created if no test made it yet)."""
    cron_db = local_postgres.cron_database
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (cron_db,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(cron_db)))
    with psycopg.connect(pg_server.dsn(cron_db), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    return {"host": pg_server.host, "port": pg_server.port, "dbname": cron_db, "user": pg_server.user,
            "password": pg_server.password, "sslmode": "disable"}


def chain_and_job(directory: Path, connection: dict[str, Any], cron: dict[str, Any], job_name: str,
                  schedule: str, *, old_types: bool = False):
    def program() -> None:
        with generic_types() if old_types else contextlib.nullcontext():
            chain = Migrations("schema", MigrationsArgs(migrations=load_migrations(directory), directory=str(directory),
                                                        connection=program_connection(connection),
                                                        fixes=migration_fixes("customer-insights-db")))
            CronJob("nightly", connection=program_connection(cron),
                    job_name=job_name, schedule=schedule, command="SELECT 1", database=connection["dbname"],
                    run_as=connection["user"], active=True, opts=pulumi.ResourceOptions(depends_on=[chain]))
    return program


def dynamic_types(stack: auto.Stack) -> dict[str, str]:
    resources = stack.export_stack().deployment["resources"]
    return {r["urn"].rsplit("::", 1)[1]: r["type"] for r in resources if r["type"].startswith("pulumi-python:")}


def applied(connection: dict[str, Any]) -> dict[str, str]:
    dsn = psycopg.conninfo.make_conninfo(**{k: connection[k] for k in ("host", "port", "dbname", "user", "password")})
    with psycopg.connect(dsn) as conn:
        return {v: str(t) for v, t in conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()}


def test_stack_recorded_with_the_generic_type_is_adopted_without_replacing_anything(
        owner_role_db, cron_target, new_stack: StackFactory):
    job_name = f"rename-{uuid.uuid4().hex[:8]}"
    old = chain_and_job(REPO / "sql", owner_role_db, cron_target, job_name, "0 3 * * *", old_types=True)
    new = chain_and_job(REPO / "sql", owner_role_db, cron_target, job_name, "0 3 * * *")
    stack = new_stack(old)
    stack.up(color="never")
    assert set(dynamic_types(stack).values()) == {GENERIC_DYNAMIC_TYPE}
    before = applied(owner_role_db)
    job_id = stack.export_stack().deployment["resources"][-1]["id"]

    preview = stack.preview(color="never", program=new)
    assert set(preview.change_summary) == {"same"}, preview.change_summary
    result = stack.up(color="never", program=new)
    assert set(result.summary.resource_changes or {}) == {"same"}, result.summary.resource_changes

    types = dynamic_types(stack)
    assert types.pop("nightly") == CRON_JOB_TYPE
    assert set(types.values()) == {MIGRATION_TYPE} and len(types) == len(before)
    assert applied(owner_role_db) == before  # nothing re-ran
    assert stack.export_stack().deployment["resources"][-1]["id"] == job_id
    stack.preview(color="never", program=new, expect_no_changes=True)


def diagnostics_by_resource(events: list[auto.EngineEvent]) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for event in events:
        diag = event.diagnostic_event
        if diag is not None and diag.urn:
            found.setdefault(diag.urn.rsplit("::", 1)[1], []).append((diag.severity, diag.message.strip()))
    return found


def test_preview_reviews_the_pending_migration_only_and_refuses_an_edit_with_its_message_alone(
        owner_role_db, cron_target, new_stack: StackFactory, sql_copy: Path):
    job_name = f"review-{uuid.uuid4().hex[:8]}"
    stack = new_stack(chain_and_job(sql_copy, owner_role_db, cron_target, job_name, "0 3 * * *"))
    stack.up(color="never")
    (sql_copy / "900_reshape_customers.sql").write_text(RISKY_MIGRATION)

    events: list[auto.EngineEvent] = []
    preview = stack.preview(color="never", on_event=events.append)
    assert preview.change_summary.get("create") == 1
    reviews = diagnostics_by_resource(events)
    assert set(reviews) == {"900_reshape_customers"}, reviews  # applied migrations get no review
    infos = [m for severity, m in reviews["900_reshape_customers"] if severity == "info"]
    warnings = [m for severity, m in reviews["900_reshape_customers"] if severity == "warning"]
    assert infos[0] == ("will run: CREATE TABLE audit_log; ALTER TABLE customers ADD COLUMN notes; "
                        "CREATE INDEX customers_notes_idx ON customers; DROP TABLE behavior_patterns; "
                        "TRUNCATE refresh_tokens")
    expected = {
        ("blocking", "CREATE INDEX customers_notes_idx ON customers", "squawk require-concurrent-index-creation"),
        ("destructive", "DROP TABLE behavior_patterns", "squawk ban-drop-table"),
        ("destructive", "TRUNCATE refresh_tokens", "[truncate]"),
    }
    for kind, action, source in expected:
        assert any(w.startswith(f"{kind}: {action} (line ") and source in w for w in warnings), (kind, warnings)
    assert len(warnings) == len(expected), warnings

    edited = sql_copy / "003_create_customers.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    for operation in (stack.preview, stack.up):
        with pytest.raises(auto.errors.CommandError) as failure:
            operation(color="never")
        message = str(failure.value)
        assert "003_create_customers.sql (version 003) was changed after it was applied" in message
        assert 'add "003" to the stack config `customer-insights-db:acceptChecksums`' in message, message
        assert "Traceback" not in message and 'File "' not in message, message


PROGRAM = """\
import pulumi
from infra.components.migrations import Migrations, MigrationsArgs
from infra.connection import Connection
from infra.dynamic.cron_job import CronJob
from infra.migrate import load_migrations

cfg = pulumi.Config()
def connection(prefix):
    return Connection(host=cfg.require(prefix + "Host"), port=cfg.require_int(prefix + "Port"),
                      database=cfg.require(prefix + "Db"), user=cfg.require(prefix + "User"),
                      password=cfg.require_secret(prefix + "Password"), sslmode="disable")
owner = connection("owner")
directory = cfg.require("migrationsDir")
chain = Migrations("schema", MigrationsArgs(migrations=load_migrations(directory), directory=directory,
                                            connection=owner))
CronJob("nightly", connection=connection("cron"), job_name=cfg.require("jobName"), schedule=cfg.require("schedule"),
        command="SELECT 1", database=owner.database, run_as=owner.user, active=True,
        opts=pulumi.ResourceOptions(depends_on=[chain]))
"""


def test_pr_comment_from_a_real_preview_json_that_adds_a_migration(
        owner_role_db, cron_target, new_stack: StackFactory, sql_copy: Path, tmp_path: Path):
    """The CLI's own `pulumi preview --json` of a project (language host, not an inline program)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: preview-comment-e2e\nruntime: python\n")
    (project / "__main__.py").write_text(PROGRAM)
    env = {**os.environ, **workspace_env(f"file://{new_stack.backend}"), "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE}
    stack = auto.create_stack(f"t{uuid.uuid4().hex[:10]}", work_dir=str(project), opts=auto.LocalWorkspaceOptions(
        env_vars=env, pulumi_command=new_stack.cli))
    config = {"migrationsDir": str(sql_copy), "jobName": f"comment-{uuid.uuid4().hex[:8]}", "schedule": "0 3 * * *"}
    for prefix, conn in (("owner", owner_role_db), ("cron", cron_target)):
        config |= {prefix + "Host": conn["host"], prefix + "Port": str(conn["port"]), prefix + "Db": conn["dbname"],
                   prefix + "User": conn["user"]}
    stack.set_all_config({k: auto.ConfigValue(v) for k, v in config.items()})
    for prefix, conn in (("owner", owner_role_db), ("cron", cron_target)):
        stack.set_config(prefix + "Password", auto.ConfigValue(str(conn["password"]), secret=True))
    try:
        stack.up(color="never")
        (sql_copy / "900_reshape_customers.sql").write_text(RISKY_MIGRATION)
        stack.set_config("schedule", auto.ConfigValue("*/30 * * * *"))

        run = subprocess.run(["pulumi", "preview", "--json", "--non-interactive", "--stack", stack.name],
                             cwd=project, env=env, capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
        comment = preview_comment.render(json.loads(run.stdout), stack.name)
        (tmp_path / "comment.md").write_text(comment)
        (tmp_path / "preview.json").write_text(run.stdout)
        print(comment)

        lines = comment.splitlines()
        assert lines[2] == ("**⚠️ Review needed: 1 migration will run, 1 other resource change; "
                            "2 destructive statements, 1 blocking statement.**"), comment
        assert ("- **`900_reshape_customers`** will run: CREATE TABLE audit_log; ALTER TABLE customers ADD COLUMN "
                "notes; CREATE INDEX customers_notes_idx ON customers; DROP TABLE behavior_patterns; "
                "TRUNCATE refresh_tokens") in lines
        assert any(line.startswith("  - 🛑 destructive: DROP TABLE behavior_patterns (line 6)") for line in lines)
        assert any(line.startswith("  - 🔒 blocking: CREATE INDEX customers_notes_idx") for line in lines)
        assert "| update | `pulumi-python:dynamic/db:CronJob` | `nightly` | schedule |" in lines
        assert sum("`00" in line for line in lines) == 0  # applied migrations are not listed
        for conn in (owner_role_db, cron_target):
            assert str(conn["password"]) not in run.stdout and str(conn["password"]) not in comment

        # The command-line entry point prints the same.
        cli = subprocess.run([sys.executable, str(REPO / "scripts" / "preview_comment.py"), "-", "--stack", stack.name],
                             input=run.stdout, capture_output=True, text=True, check=True)
        assert cli.stdout == comment
    finally:
        stack.destroy(color="never")
        stack.workspace.remove_stack(stack.name)
