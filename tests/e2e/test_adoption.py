"""Adopting a database the schema team built with the real knex (`knex migrate:latest`), through the real
engine in external mode: nothing of the adopted files runs, the later files do, every row stays."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pulumi import automation as auto

from devsupport import knex
from devsupport.local_postgres import LocalPostgres
from infra.migrate import load_migrations
from scripts import cleanup_history
from scripts.stack import program

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROJECT = "customer-insights-db"
SPEC_TABLES = {"organizations", "users", "customers", "customer_interactions", "behavior_patterns", "refresh_tokens"}


@pytest.fixture(scope="module")
def knex_cli() -> Path:
    try:
        return knex.knex_bin()
    except knex.KnexUnavailable as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def servers() -> Iterator[tuple[LocalPostgres, LocalPostgres]]:
    """The team's server (every statement logged, pg_cron in its own database) and a throwaway scratch server."""
    target = LocalPostgres(cron_database="scheduler", extra_settings={"log_statement": "all"}).start()
    scratch = LocalPostgres().start()
    try:
        with psycopg.connect(target.address.dsn(), autocommit=True) as conn:
            conn.execute('CREATE DATABASE "scheduler"')
        yield target, scratch
    finally:
        target.stop()
        scratch.stop()


def team_database(target: LocalPostgres, tmp_path: Path, prefix: str, edits: dict[str, tuple[str, str]]) -> str:
    """What the team has: their owner role and database, migrated by knex, with rows. Returns its URL."""
    owner, database, password = f"{prefix}_owner", "insights", "team-password-" + uuid.uuid4().hex[:8]
    with psycopg.connect(target.address.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(owner), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner)))
    project = tmp_path / "knex"
    shutil.copytree(REPO / "tests" / "data" / "knex_project", project)
    for name, (old, new) in edits.items():
        path = project / "migrations" / name
        path.write_text(path.read_text().replace(old, new))
    url = f"postgresql://{owner}:{password}@127.0.0.1:{target.port}/{database}"
    assert "Batch 1 run: 7 migrations" in knex.migrate_latest(project, url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            WITH org AS (INSERT INTO organizations (name) VALUES ('Acme') RETURNING id),
                 u AS (INSERT INTO users (email, password_hash, first_name, last_name, role, organization_id)
                       SELECT 'u' || g || '@example.com', '$2b$10$' || repeat('a', 53), 'A', 'B', 'viewer', org.id
                         FROM org, generate_series(1, 20) g RETURNING id)
            INSERT INTO refresh_tokens (user_id, token, created_at, expires_at)
            SELECT id, 'expired-' || id, now() - interval '2 days', now() - interval '1 day' FROM u""")
        conn.execute("""INSERT INTO customers (organization_id, external_id, first_seen_at, last_seen_at)
                        SELECT id, 'c-' || g, now(), now() FROM organizations, generate_series(1, 100) g""")
    return url


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]  # type: ignore[index]
                for t in sorted(SPEC_TABLES)}


def created_tables(log: str) -> set[str]:
    """The tables the logged statements create."""
    found = re.findall(r'CREATE TABLE (?:IF NOT EXISTS )?(?:"?public"?\.)?"?([a-z_]+)"?', log, re.IGNORECASE)
    return set(found)


def adopting_stack(new_stack: Any, target: LocalPostgres, scratch: LocalPostgres, prefix: str,
                   tool: str = "knex") -> auto.Stack:
    admin = target.address
    config = {
        "mode": "external", "externalHost": admin.host, "externalPort": str(admin.port),
        "externalAdminUser": admin.user, "externalSslMode": "disable", "externalAdminIsSuperuser": "true",
        "databaseName": "insights", "rolePrefix": prefix, "protectData": "false", "cleanupSchedule": "* * * * *",
        "adoptFrom": tool,
    }
    values = {k: auto.ConfigValue(value=v) for k, v in config.items()}
    values["externalAdminPassword"] = auto.ConfigValue(value=admin.password, secret=True)
    values["adoptScratchUrl"] = auto.ConfigValue(value=scratch.address.url(), secret=True)
    return new_stack(program, values, project=PROJECT)


def test_a_knex_database_is_adopted_its_later_files_applied_and_its_rows_kept(
        provider_plugins, knex_cli, servers, new_stack, tmp_path):
    target, scratch = servers
    prefix = f"k{uuid.uuid4().hex[:6]}"
    team_url = team_database(target, tmp_path, prefix, {})
    rows = counts(team_url)
    with psycopg.connect(team_url) as conn:
        oids = dict(conn.execute("SELECT relname, oid::int FROM pg_class WHERE relkind = 'r' "
                                 "AND relnamespace = 'public'::regnamespace").fetchall())
    logged_before = Path(target.logfile).stat().st_size

    stack = adopting_stack(new_stack, target, scratch, prefix)
    up = stack.up(color="never")
    outputs = {k: v.value for k, v in up.outputs.items()}
    log = Path(target.logfile).read_text(errors="replace")[logged_before:]

    # No statement of the adopted files ran on the team's server: only the later files' tables were created.
    assert created_tables(log) == {"refresh_token_cleanup_runs", "schema_migrations"}, created_tables(log)
    assert "set_updated_at() RETURNS trigger" not in log and "customers_email_idx" not in log
    owner_url = outputs["connection_urls"]["owner"]
    # The imported owner's new password reached the server as a SCRAM verifier only.
    assert owner_url.split(":")[2].split("@")[0] not in log and "ALTER ROLE" in log
    with psycopg.connect(owner_url) as conn:
        tracked = conn.execute("SELECT version, duration_ms FROM schema_migrations ORDER BY version").fetchall()
        same_oids = dict(conn.execute("SELECT relname, oid::int FROM pg_class WHERE relkind = 'r' "
                                      "AND relnamespace = 'public'::regnamespace").fetchall())
        assert conn.execute("SELECT count(*) FROM knex_migrations").fetchone() == (7,)  # left in place
    assert [v for v, ms in tracked if ms == 0][:7] == ["001", "002", "003", "004", "005", "006", "007"]
    assert [v for v, _ in tracked] == ["001", "002", "003", "004", "005", "006", "007", "008", "009"]
    assert {t: same_oids[t] for t in oids} == oids  # no table was dropped and created again
    assert counts(owner_url) == rows
    assert outputs["migrations"] == [v for v, _ in tracked]

    # The stack's credentials work, the team's old password no longer does (rotated to the generated one).
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(team_url).close()
    with psycopg.connect(outputs["connection_urls"]["app"]) as conn:  # the adopted tables got the app's grants
        conn.execute("UPDATE customers SET segment = 'vip' WHERE external_id = 'c-1'")
    with psycopg.connect(outputs["connection_urls"]["readonly"]) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (rows["customers"],)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT token FROM refresh_tokens")

    # The cleanup job runs on the adopted tables: the expired tokens go, nothing else.
    deadline = time.monotonic() + 150
    with psycopg.connect(target.address.dsn("scheduler")) as conn:
        while (run := conn.execute("SELECT status FROM cron.job_run_details WHERE jobid = %s AND status IN "
                                   "('succeeded', 'failed') ORDER BY runid DESC LIMIT 1",
                                   (outputs["cleanup_job"]["job_id"],)).fetchone()) is None:
            assert time.monotonic() < deadline, "pg_cron did not run the cleanup job within 150 s"
            time.sleep(2)
    assert run == ("succeeded",)
    assert counts(owner_url) == {**rows, "refresh_tokens": 0}

    # The job's history, read with the read-only role's URL and what the stack outputs (no superuser).
    readonly, job = outputs["connection_urls"]["readonly"], outputs["cleanup_job"]
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "cleanup_history.py"), "--database-url", readonly,
                           "--job", job["name"], "--cron-database", job["history_database"]],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s+\d+\s+succeeded\s+\S+ \S+\s+\d+ ms\s+20\s+1\s+CALL$", done.stdout, re.MULTILINE), done.stdout
    runs = cleanup_history.history(readonly, job["name"], cron_database=job["history_database"])
    assert runs[-1].status == "succeeded" and runs[-1].rows_deleted == 20
    # and nothing more of pg_cron
    with psycopg.connect(readonly.rsplit("/", 1)[0] + "/scheduler") as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT count(*) FROM cron.job_run_details")
    wrong = subprocess.run([sys.executable, str(REPO / "scripts" / "cleanup_history.py"), "--database-url",
                            readonly.replace("@", "x@", 1), "--job", job["name"]],
                           capture_output=True, text=True, timeout=60, check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "password authentication failed" in wrong.stderr

    stack.preview(expect_no_changes=True, color="never")


def test_a_knex_schema_that_differs_is_refused_before_anything_changes(
        provider_plugins, knex_cli, servers, new_stack, tmp_path):
    target, scratch = servers
    prefix = f"k{uuid.uuid4().hex[:6]}"
    team_url = team_database(target, tmp_path, prefix, {
        "003_create_customers.js": ("    t.index(['segment'], 'customers_segment_idx');\n", ""),
        "007_create_refresh_tokens.js": ("t.text('token')", "t.string('token', 255)"),
    })
    rows = counts(team_url)
    stack = adopting_stack(new_stack, target, scratch, prefix)
    with pytest.raises(auto.errors.CommandError) as refused:
        stack.preview(color="never")
    message = str(refused.value)
    assert "Adoption refused: the live schema differs from what the matched files make (2 difference(s))" in message
    assert "index customers_segment_idx: missing on the live database" in message
    assert ("column refresh_tokens.token: the files make: text NOT NULL; the live database has: "
            "character varying(255) NOT NULL") in message
    assert "adoptAccept" in message and "Nothing was changed" in message and "Traceback" not in message
    assert target.password not in message
    with pytest.raises(auto.errors.CommandError):
        stack.up(color="never")
    assert {r["type"] for r in stack.export_stack().deployment.get("resources") or []} <= {"pulumi:pulumi:Stack"}
    with psycopg.connect(team_url) as conn:  # the team's password still works: nothing was touched
        assert conn.execute("SELECT to_regclass('public.schema_migrations')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s", (prefix + "%",)).fetchone() == (1,)
    assert counts(team_url) == rows


def sql_built_database(target: LocalPostgres, prefix: str, tool: str, drift: str | None = None) -> str:
    """The spec's schema applied by another tool (the same SQL, as the team's owner) with its history table."""
    team_url = team_database_empty(target, prefix)
    spec = [m for m in load_migrations(REPO / "sql") if int(m.version) <= 7]
    with psycopg.connect(team_url) as conn:
        for m in spec:
            with conn.transaction():
                conn.execute(m.up_sql)
        if tool == "flyway":
            conn.execute("""
                CREATE TABLE flyway_schema_history (
                    installed_rank integer PRIMARY KEY, version varchar(50), description varchar(200) NOT NULL,
                    type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum integer,
                    installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(),
                    execution_time integer NOT NULL, success boolean NOT NULL)""")
            for rank, m in enumerate(spec, start=1):
                conn.execute("INSERT INTO flyway_schema_history VALUES (%s, %s, %s, 'SQL', %s, 1, 'flyway', now(), 5, "
                             "true)", (rank, str(int(m.version)), m.name, f"V{int(m.version)}__{m.name}.sql"))
        else:
            conn.execute("CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY)")
            for m in spec:
                conn.execute("INSERT INTO schema_migrations VALUES (%s)", (m.version,))
        conn.execute("INSERT INTO organizations (name) SELECT 'org ' || g FROM generate_series(1, 30) g")
        if drift:
            conn.execute(drift)
        conn.commit()
    return team_url


def team_database_empty(target: LocalPostgres, prefix: str) -> str:
    owner, password = f"{prefix}_owner", "team-password-" + uuid.uuid4().hex[:8]
    with psycopg.connect(target.address.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(owner), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE insights OWNER {}").format(sql.Identifier(owner)))
    return f"postgresql://{owner}:{password}@127.0.0.1:{target.port}/insights"


@pytest.mark.parametrize("tool", ["flyway", "dbmate"])
def test_flyway_and_dbmate_histories_are_adopted(tool, provider_plugins, servers, new_stack):
    target, scratch = servers
    prefix = f"h{uuid.uuid4().hex[:6]}"
    sql_built_database(target, prefix, tool)
    logged_before = Path(target.logfile).stat().st_size
    stack = adopting_stack(new_stack, target, scratch, prefix, tool=tool)
    outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
    log = Path(target.logfile).read_text(errors="replace")[logged_before:]
    assert created_tables(log) == {"refresh_token_cleanup_runs", "schema_migrations"}, created_tables(log)
    with psycopg.connect(outputs["connection_urls"]["owner"]) as conn:
        assert conn.execute("SELECT count(*) FROM organizations").fetchone() == (30,)
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")] == outputs["migrations"]
        history = "flyway_schema_history" if tool == "flyway" else "schema_migrations_dbmate"
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(history))).fetchone() == (7,)
    assert outputs["migrations"] == ["001", "002", "003", "004", "005", "006", "007", "008", "009"]
    stack.preview(expect_no_changes=True, color="never")


def test_a_dbmate_schema_that_differs_is_refused_and_its_history_left_as_it_was(provider_plugins, servers, new_stack):
    target, scratch = servers
    prefix = f"h{uuid.uuid4().hex[:6]}"
    team_url = sql_built_database(target, prefix, "dbmate", drift="ALTER TABLE users ALTER COLUMN last_name TYPE text")
    stack = adopting_stack(new_stack, target, scratch, prefix, tool="dbmate")
    with pytest.raises(auto.errors.CommandError) as refused:
        stack.preview(color="never")
    assert ("column users.last_name: the files make: character varying(100) NOT NULL; the live database has: "
            "text NOT NULL") in str(refused.value)
    with psycopg.connect(team_url) as conn:  # dbmate's table is still dbmate's, where it was
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (7,)
        assert conn.execute("SELECT to_regclass('public.schema_migrations_dbmate')").fetchone() == (None,)
