"""Failure drills: each fault ends in a clear message, nothing is lost, and the documented recovery
converges. Real Pulumi CLI/engine, real Docker, real PostgreSQL (README, "Failure drills").

Stacks are shared between drills where that does not weaken them (CI time): one container stack
goes through the container faults, the data-safety checks and the load; one throwaway stack with no
resources takes the faults that must stop before anything is declared.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pulumi import automation as auto

from devsupport.local_postgres import LocalPostgres, ServerAddress, free_port
from devsupport.versions import pulumi_bin_dir
from infra.migrate import CONNECT_TIMEOUT, load_migrations
from tests.e2e.conftest import assert_not_in_state
from tests.e2e.drill_runner import RESULT
from tests.e2e.processes import cmdline, describe, reap, session_members
from tests.e2e.test_full_stack import PROJECT as MAIN_PROJECT
from tests.e2e.test_full_stack import program as main_program
from tests.e2e.test_migrations_engine import dsn, migrations_program, recorded, tables
from tests.helpers import docker_output

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# Drill migrations are numbered far above sql/ (a new file there must not collide with them).
SLOW = "901_drill_slow.sql"


# ---------------------------------------------------------------------------------------------- helpers


def add_slow_migration(sql_dir: Path, seconds: float) -> None:
    """901: slow, and deliberately not re-runnable: applied twice, it leaves two rows. 902 follows it."""
    (sql_dir / SLOW).write_text(
        "-- 901_drill_slow: a failure drill's migration (slow; counts how often it was applied).\n"
        "CREATE TABLE drill_applications (applied_at timestamptz NOT NULL DEFAULT clock_timestamp());\n"
        "INSERT INTO drill_applications DEFAULT VALUES;\n"
        f"SELECT pg_sleep({seconds});\n"
    )
    (sql_dir / "901_drill_slow.down.sql").write_text("DROP TABLE drill_applications;\n")
    (sql_dir / "902_drill_after.sql").write_text("CREATE TABLE drill_after (id int PRIMARY KEY);\n")
    (sql_dir / "902_drill_after.down.sql").write_text("DROP TABLE drill_after;\n")


def applications(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM drill_applications").fetchone()
    return int(row[0]) if row else 0


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def backends(admin_dsn: str, like: str) -> list[int]:
    """pids of the sessions (other than ours) whose current query contains `like`."""
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE %s",
            (f"%{like}%",),
        ).fetchall()
    return [r[0] for r in rows]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Runner:
    """`pulumi up` of an existing stack in a session of its own (tests/e2e/drill_runner.py), reaped whole."""

    def __init__(self, stack: auto.Stack, backend: Path, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.drill_runner"], cwd=REPO, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"backend": str(backend), "stack": stack.name,
                                          "project": stack.workspace.project_settings().name,
                                          "work_dir": stack.workspace.work_dir, **spec}))
        self.proc.stdin.close()
        self.output = ""
        self.reaped: list[str] = []

    def pulumi_cli_pid(self) -> int:
        found = [p for p in descendants(self.proc.pid) if (c := cmdline(p)) and c[0].endswith("pulumi") and "up" in c]
        assert len(found) == 1, f"expected one `pulumi up` under the runner, found {found}"
        return found[0]

    def finish(self, timeout: float = 300) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            self.proc.wait(timeout=timeout)
            self.output = self.proc.stdout.read()
        finally:
            self.kill_group()
        assert self.left_running() == [], "the runner's processes survived being reaped"
        results = [line for line in self.output.splitlines() if line.startswith(RESULT)]
        assert results, f"the runner ended without a result:\n{self.output[-3000:]}"
        return dict(json.loads(results[-1][len(RESULT):]))

    def kill_group(self) -> list[str]:
        """Whatever the runner started and left behind: after a SIGKILL of the CLI, its language host
        and plugins (each in a process group of its own, all in the runner's session). Returns them."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        left = session_members(self.proc.pid)
        self.reaped += describe(left)
        reap(left)
        return self.reaped

    def left_running(self) -> list[str]:
        return describe(session_members(self.proc.pid))


def pending_operations(stack: auto.Stack) -> list[dict[str, Any]]:
    return list(stack.export_stack().deployment.get("pending_operations") or [])


def resource_types(stack: auto.Stack) -> list[str]:
    """What the stack holds besides its root `pulumi:pulumi:Stack`."""
    return [r["type"] for r in stack.export_stack().deployment.get("resources") or []
            if r["type"] != "pulumi:pulumi:Stack"]


def assert_tracking_matches_schema(connection: dict[str, Any], sql_dir: Path) -> None:
    """Every file recorded exactly once, and what each one creates exists."""
    files = load_migrations(sql_dir)
    assert set(recorded(connection)) == {f.version for f in files}
    with psycopg.connect(dsn(connection)) as conn:
        counts = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version").fetchall()
    assert {c for _, c in counts} == {1}
    assert tables(connection) >= {"organizations", "users", "customers", "customer_interactions",
                                  "behavior_patterns", "refresh_tokens", "drill_applications", "drill_after"}
    assert applications(dsn(connection)) == 1, "901 was applied more than once"


# ---------------------------------------------------------------------------------------------- faults of `up`


def test_sigkill_mid_migrations_then_documented_recovery_converges(owner_role_db, new_stack, sql_copy, pg_server):
    add_slow_migration(sql_copy, seconds=6)
    stack = new_stack(migrations_program(sql_copy, owner_role_db))
    runner = Runner(stack, new_stack.backend, {"program": "migrations", "directory": str(sql_copy),
                                                "connection": owner_role_db})
    try:
        wait_for("901 to be running", lambda: backends(pg_server.dsn(owner_role_db["dbname"]), "pg_sleep"), 120)
        os.kill(runner.pulumi_cli_pid(), signal.SIGKILL)
        result = runner.finish(timeout=120)
    finally:
        runner.kill_group()
    assert not result["ok"]
    # The killed CLI's plugins outlived it (in the runner's session); reaped, none is left.
    assert any("pulumi-resource-" in p or "pulumi.dynamic" in p for p in runner.reaped), runner.reaped
    assert runner.left_running() == []
    # The provider that ran 901 lost its engine; its session ends one way or the other.
    wait_for("the killed run's sessions to end",
             lambda: not backends(pg_server.dsn(owner_role_db["dbname"]), "pg_sleep"), 60)

    # The killed CLI left its stack lock and a pending create of 901 behind: every command refuses.
    assert [op["resource"]["urn"].split("::")[-1] for op in pending_operations(stack)] == ["901_drill_slow"]
    assert_not_in_state(new_stack.backend, str(owner_role_db["password"]))
    with pytest.raises(auto.errors.CommandError) as locked:
        stack.up(color="never")
    assert "the stack is currently locked" in str(locked.value) and "pulumi cancel" in str(locked.value)
    with psycopg.connect(dsn(owner_role_db)) as conn:
        before = dict(conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall())

    # The documented recovery (README, "Failure drills").
    stack.cancel()  # `pulumi cancel`: with a file backend, removes the dead run's lock
    stack.refresh(color="never", clear_pending_creates=True)  # `pulumi refresh --clear-pending-creates`
    assert pending_operations(stack) == []
    log: list[str] = []
    stack.up(color="never", on_output=log.append)

    assert_tracking_matches_schema(owner_role_db, sql_copy)
    with psycopg.connect(dsn(owner_role_db)) as conn:
        after = dict(conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall())
    assert {v: after[v] for v in before} == before, "a migration applied before the kill was applied again"
    assert "pending operations" not in "".join(log)
    stack.preview(expect_no_changes=True, color="never")


def test_two_stacks_up_at_once_on_one_database_serialise_their_migrations(
        owner_role_db, new_stack, sql_copy, pg_server):
    add_slow_migration(sql_copy, seconds=3)
    spec = {"program": "migrations", "directory": str(sql_copy), "connection": owner_role_db}
    stacks = [new_stack(migrations_program(sql_copy, owner_role_db)) for _ in range(2)]
    runners = [Runner(stack, new_stack.backend, spec) for stack in stacks]
    try:
        results = [runner.finish(timeout=300) for runner in runners]
    finally:
        for runner in runners:
            runner.kill_group()
    assert all(r["ok"] for r in results), [r.get("error", "")[-2000:] for r in results]
    assert_tracking_matches_schema(owner_role_db, sql_copy)
    # Each file ran once: in whichever run got the lock first; the other waited and adopted it.
    adopted = []
    for stack in stacks:
        outputs = {r["outputs"]["version"]: r["outputs"]["adopted"]
                   for r in stack.export_stack().deployment["resources"] if r["type"].endswith(":Migration")}
        assert set(outputs) == set(recorded(owner_role_db))
        adopted.append(outputs)
    for version in recorded(owner_role_db):
        assert sorted(a[version] for a in adopted) == [False, True], (version, adopted)
    # The run that waited said so, naming who held the lock.
    waited = [r.output for r in runners if "waiting for the migration lock, held by pid" in r.output]
    assert waited, "neither run reported waiting for the migration lock"
    assert "application_name 'customer-insights-migrations'" in waited[0], waited[0][-3000:]


def test_migration_failing_half_way_without_transaction_keeps_what_ran_and_up_continues(
        owner_role_db, new_stack, sql_copy):
    # (The transactional case: test_migrations_engine.py::test_failing_migration_stops_the_chain_...)
    broken = sql_copy / "901_drill_no_transaction.sql"
    shipped = {f.version for f in load_migrations(sql_copy)}
    good = (
        "-- migrate:no-transaction\n"
        "-- 901: an index built without blocking writes, then a column.\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_drill_idx ON customers (created_at);\n"
        "\n"
        "ALTER TABLE customers ADD COLUMN IF NOT EXISTS drill_note text;\n"
    )
    broken.write_text(good.replace("drill_note text", "drill_note no_such_type"))
    (sql_copy / "901_drill_no_transaction.down.sql").write_text(
        "-- migrate:no-transaction\nALTER TABLE customers DROP COLUMN IF EXISTS drill_note;\n"
        "DROP INDEX CONCURRENTLY IF EXISTS customers_drill_idx;\n")
    stack = new_stack(migrations_program(sql_copy, owner_role_db))

    with pytest.raises(auto.errors.CommandError) as failure:
        stack.up(color="never")
    message = str(failure.value)
    assert "901_drill_no_transaction.sql, line 5" in message
    assert "ALTER TABLE customers ADD COLUMN IF NOT EXISTS drill_note no_such_type" in message
    assert 'type "no_such_type" does not exist' in message
    assert "1 statement(s) before it already ran and stay applied (starting at line(s) 3)" in message
    assert set(recorded(owner_role_db)) == shipped  # earlier files kept
    with psycopg.connect(dsn(owner_role_db)) as conn:
        assert conn.execute("SELECT to_regclass('customers_drill_idx') IS NOT NULL").fetchone() == (True,)

    broken.write_text(good)
    result = stack.up(color="never")
    assert result.summary.resource_changes.get("create") == 1
    assert set(recorded(owner_role_db)) == shipped | {"901"}
    with psycopg.connect(dsn(owner_role_db)) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'customers' "
                            "AND column_name = 'drill_note'").fetchone() == (1,)


# ---------------------------------------------------------------------------------------------- external mode


@pytest.fixture(scope="module")
def drill_server() -> Iterator[LocalPostgres]:
    """A server of this module's own, pg_cron in `postgres` (as RDS and Cloud SQL have it)."""
    server = LocalPostgres().start()
    try:
        yield server
    finally:
        server.stop()


def external_stack(new_stack, admin: ServerAddress, **extra: Any) -> auto.Stack:
    config = {"mode": "external", "externalHost": admin.host, "externalPort": admin.port,
              "externalAdminUser": admin.user, "externalSslMode": "disable",
              "databaseName": f"drill_{uuid.uuid4().hex[:8]}", "rolePrefix": f"d{uuid.uuid4().hex[:6]}", **extra}
    values = {k: auto.ConfigValue(value=str(v)) for k, v in config.items()}
    values["externalAdminPassword"] = auto.ConfigValue(value=admin.password, secret=True)
    return new_stack(main_program, values, project=MAIN_PROJECT)


def preview_fails(stack: auto.Stack, *fragments: str) -> str:
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview(color="never")
    message = str(failure.value)
    for fragment in fragments:
        assert fragment in message, message[-3000:]
    assert "Traceback" not in message
    assert resource_types(stack) == []
    return message


def test_external_server_faults_stop_before_anything_with_the_fix(new_stack, drill_server):
    """Wrong password, nothing listening, a host that never answers, an admin without CREATEROLE.

    (A server without pg_cron: test_full_stack.py::test_external_server_without_pg_cron_...)
    """
    admin = drill_server.address
    stack = external_stack(new_stack, admin)
    database = stack.get_config("databaseName").value
    weak_admin, weak_password = f"drill_admin_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex

    stack.set_config("externalAdminPassword", auto.ConfigValue(value="not-the-password", secret=True))
    message = preview_fails(stack, "rejected the admin password",
                            "pulumi config set --secret externalAdminPassword", "Nothing was created")
    assert "not-the-password" not in message

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    stack.set_config("externalPort", auto.ConfigValue(value=str(closed_port)))
    stack.set_config("externalAdminPassword", auto.ConfigValue(value=admin.password, secret=True))
    preview_fails(stack, "connection refused", "externalHost/externalPort")

    # A listening socket that never accepts: TCP connects, then nothing ever answers.
    blackhole_host = f"127.{os.getpid() % 200 + 20}.{uuid.uuid4().int % 250}.7"
    with socket.socket() as blackhole:
        blackhole.bind((blackhole_host, 0))
        blackhole.listen(16)
        stack.set_config("externalHost", auto.ConfigValue(value=blackhole_host))
        stack.set_config("externalPort", auto.ConfigValue(value=str(blackhole.getsockname()[1])))
        started = time.monotonic()
        preview_fails(stack, f"no answer within {CONNECT_TIMEOUT} s", "firewall")
        waited = time.monotonic() - started
    assert CONNECT_TIMEOUT <= waited < CONNECT_TIMEOUT + 30, f"preview took {waited:.0f} s"

    with psycopg.connect(admin.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
            sql.Identifier(weak_admin), sql.Literal(weak_password)))
    try:
        stack.set_config("externalHost", auto.ConfigValue(value=admin.host))
        stack.set_config("externalPort", auto.ConfigValue(value=str(admin.port)))
        stack.set_config("externalAdminUser", auto.ConfigValue(value=weak_admin))
        stack.set_config("externalAdminPassword", auto.ConfigValue(value=weak_password, secret=True))
        preview_fails(stack, f"The admin user '{weak_admin}'", "lacks CREATEROLE",
                      f"ALTER ROLE {weak_admin} CREATEROLE")
        with pytest.raises(auto.errors.CommandError):
            stack.up(color="never")
        assert resource_types(stack) == []
    finally:
        with psycopg.connect(admin.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(weak_admin)))
    with psycopg.connect(admin.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (database,)).fetchone() == (0,)


# ---------------------------------------------------------------------------------------------- container mode


def container_stack(new_stack, **config: Any) -> auto.Stack:
    return new_stack(main_program, {k: auto.ConfigValue(value=str(v)) for k, v in config.items()},
                     project=MAIN_PROJECT)


def in_server(container: str, database: str, query: str) -> str:
    """A query as the container's superuser over its local socket (the image trusts local connections)."""
    done = subprocess.run(["docker", "exec", container, "psql", "-U", "postgres", "-d", database, "-Atc", query],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def wait_healthy(container: str) -> None:
    wait_for(f"{container} to be healthy", lambda: docker_output(
        "inspect", "--format", "{{.State.Health.Status}}", container, check=False).strip() == "healthy", 120, 0.5)


def up_in_background(stack: auto.Stack) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = stack.up(color="never")
        except auto.errors.CommandError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def interrupt_slow_migration(stack: auto.Stack, container: str, database: str, action: list[str]) -> str:
    """`up` in the background; `docker <action>` while the slow migration runs; the up's error."""
    thread, outcome = up_in_background(stack)
    wait_for("the slow migration to run", lambda: in_server(
        container, database, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' "
        "AND pid <> pg_backend_pid()") == "1", 300, 0.5)
    docker_output(*action)
    thread.join(300)
    assert "error" in outcome, "up survived the server going away"
    return str(outcome["error"])


def rows(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0])
                for t in ("organizations", "users", "refresh_tokens")}


def seed(url: str) -> str:
    """An organisation and a user (the tokens' owner); returns the user's id."""
    with psycopg.connect(url) as conn:
        org = conn.execute("INSERT INTO organizations (name) VALUES ('drill') RETURNING id").fetchone()[0]
        user = conn.execute(
            "INSERT INTO users (email, password_hash, first_name, last_name, role, organization_id) "
            "VALUES (%s, %s, 'Drill', 'User', 'analyst', %s) RETURNING id",
            (f"drill-{uuid.uuid4().hex[:8]}@example.com", "$2b$10$" + "a" * 53, org)).fetchone()[0]
    return str(user)


def derived_image(base: str, tag: str, change: str) -> str:
    """`base` with one config change (`docker commit --change`): a different image id, nothing built."""
    created = docker_output("create", base).strip()
    try:
        docker_output("commit", "--change", change, created, tag)
    finally:
        docker_output("rm", "-v", created)  # -v: the anonymous volume of the image's VOLUME
    return tag


def test_container_faults_data_safety_and_cleanup_under_load(new_stack, sql_copy):
    add_slow_migration(sql_copy, seconds=5)
    base_image = "customer-insights/postgres-cron:15"
    stack = container_stack(new_stack, hostPort=free_port(), migrationsDir=sql_copy, cleanupSchedule="* * * * *")
    container, database = f"postgres-{stack.name}", "customer_insights"
    tag = uuid.uuid4().hex[:8]
    minor, major = f"customer-insights/postgres-cron:15-drill-{tag}", f"customer-insights/postgres-cron:16-drill-{tag}"
    try:
        # -- the container restarted in the middle of `up`: the running migration fails, naming its file;
        #    the server comes back by itself (restart policy); `pulumi up` again converges.
        error = interrupt_slow_migration(stack, container, database, ["restart", "-t", "1", container])
        assert SLOW in error, error[-3000:]
        wait_healthy(container)
        outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
        owner, app = outputs["connection_urls"]["owner"], outputs["connection_urls"]["app"]
        assert applications(owner) == 1

        # -- the container stopped: in the middle of `up` the running migration fails; the next `up`
        #    (and preview) stops before anything, saying how to start it; then `up` converges.
        (sql_copy / "903_drill_slow_again.sql").write_text("SELECT pg_sleep(5);\n")
        (sql_copy / "903_drill_slow_again.down.sql").write_text("SELECT 1;\n")
        error = interrupt_slow_migration(stack, container, database, ["stop", "-t", "1", container])
        assert "903_drill_slow_again.sql" in error, error[-3000:]
        preview_fails_keeping(stack, f"{container} exists but is exited", f"docker start {container}")
        docker_output("start", container)
        wait_healthy(container)
        stack.up(color="never")
        assert "903" in {r[0] for r in psycopg.connect(owner).execute("SELECT version FROM schema_migrations")}

        # -- data safety on a stack other than dev (protectData defaults to true)
        user = seed(app)
        before = rows(owner)
        state_before = sorted(resource_types(stack))
        with pytest.raises(auto.errors.CommandError) as refused:
            stack.destroy(color="never")
        assert "DataProtection::protectData" in str(refused.value) and "cannot be deleted" in str(refused.value)
        assert sorted(resource_types(stack)) == state_before and rows(owner) == before
        urns = {r["type"]: r["urn"] for r in stack.export_stack().deployment["resources"]}
        for target in ("docker:index/volume:Volume", "postgresql:index/database:Database"):
            with pytest.raises(auto.errors.CommandError) as refused:
                stack.up(color="never", replace=[urns[target]])
            assert "unable to replace resource" in str(refused.value) and "protect" in str(refused.value)
        assert sorted(resource_types(stack)) == state_before and rows(owner) == before

        # -- another PostgreSQL major: refused before anything changes, naming the upgrade path
        container_id = docker_output("inspect", "--format", "{{.Id}}", container).strip()
        stack.set_config("image", auto.ConfigValue(value=derived_image(base_image, major, "ENV PG_MAJOR=16")))
        preview_fails_keeping(stack, "runs PostgreSQL 16", "pg_dumpall", "pg_upgrade", "Nothing was changed")
        with pytest.raises(auto.errors.CommandError):
            stack.up(color="never")
        assert docker_output("inspect", "--format", "{{.Id}}", container).strip() == container_id

        # -- another minor of 15: the container is replaced, every row is kept
        stack.set_config("image", auto.ConfigValue(value=derived_image(base_image, minor, "ENV PG_VERSION=15.99")))
        changed = stack.up(color="never").summary.resource_changes or {}
        assert changed.get("replace", 0) >= 1, changed
        assert docker_output("inspect", "--format", "{{.Id}}", container).strip() != container_id
        assert rows(owner) == before
        stack.preview(expect_no_changes=True, color="never")

        # -- the cleanup job every minute while the application writes ~200 tokens/s
        cleanup_under_load(app, owner, user, container, database, outputs["cleanup_job"]["job_id"])
    finally:
        stack.set_config("protectData", auto.ConfigValue(value="false"))
        with contextlib.suppress(auto.errors.CommandError):
            stack.up(color="never")
    # protectData false: destroy tears everything down (the fixture checks nothing is left).
    stack.destroy(color="never")
    assert docker_output("volume", "ls", "-q", "--filter", f"name=postgres-{stack.name}-data").strip() == ""
    for image in (minor, major):
        docker_output("rmi", image, check=False)


def preview_fails_keeping(stack: auto.Stack, *fragments: str) -> None:
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview(color="never")
    for fragment in fragments:
        assert fragment in str(failure.value), str(failure.value)[-3000:]


LOAD_SECONDS = 125  # two runs of a once-a-minute job, whatever the phase
RATE = 200  # tokens per second
TICK = 0.05


def cleanup_under_load(app: str, owner: str, user: str, container: str, database: str, job_id: int) -> None:
    live: list[str] = []
    errors: list[str] = []
    inserted = 0
    started_wall = in_server(container, database, "SELECT now()")
    started = time.monotonic()
    with psycopg.connect(app, autocommit=True) as conn:
        tick = 0
        while time.monotonic() - started < LOAD_SECONDS:
            tick += 1
            try:
                # One live token (a day) and the rest expiring within 1-50 s, in one transaction per tick.
                ids = conn.execute(
                    "INSERT INTO refresh_tokens (user_id, token, expires_at) "
                    "SELECT %s, md5(random()::text), CASE WHEN g = 1 THEN now() + interval '1 day' "
                    "ELSE now() + make_interval(secs => 1 + random() * 49) END FROM generate_series(1, %s) g "
                    "RETURNING id, expires_at > now() + interval '1 hour'",
                    (user, int(RATE * TICK))).fetchall()
                live += [str(i) for i, is_live in ids if is_live]
                inserted += len(ids)
            except psycopg.Error as exc:
                errors.append(str(exc))
            time.sleep(max(0.0, started + tick * TICK - time.monotonic()))
    elapsed = time.monotonic() - started
    assert errors == [], errors[:3]
    assert inserted >= 0.9 * RATE * LOAD_SECONDS, f"{inserted} tokens in {elapsed:.0f} s"

    # As the superuser (cron.job_run_details shows a role its own runs only); an int and a server timestamp.
    runs = in_server(container, database,
                     "SELECT status || ':' || coalesce(return_message, '') FROM cron.job_run_details "  # noqa: S608
                     f"WHERE jobid = {int(job_id)} AND start_time >= '{started_wall}' ORDER BY start_time"
                     ).splitlines()
    assert len(runs) >= 2 and all(r.startswith("succeeded:") for r in runs), runs
    with psycopg.connect(owner) as conn:
        last_cutoff, since_last = conn.execute(
            "SELECT max(cutoff), now() - max(cutoff) FROM refresh_token_cleanup_runs").fetchone()
        assert since_last.total_seconds() < 60 + 15, since_last
        # Everything expired before the last run's cutoff is gone; nothing expired a period ago survives.
        assert conn.execute("SELECT count(*) FROM refresh_tokens WHERE expires_at < %s",
                            (last_cutoff,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM refresh_tokens WHERE expires_at < now() - interval '75 seconds'"
                            ).fetchone() == (0,)
        deleted = conn.execute("SELECT sum(rows_deleted) FROM refresh_token_cleanup_runs").fetchone()[0]
        assert deleted and deleted > 0
        present = {str(r[0]) for r in conn.execute("SELECT id FROM refresh_tokens WHERE id = ANY(%s::uuid[])",
                                                    (live,)).fetchall()}
    assert present == set(live), f"{len(set(live) - present)} live tokens deleted"


def test_container_host_faults_stop_before_anything(new_stack, tmp_path):
    """Docker engine not running, image missing, host port taken: preview and up stop, nothing is created."""
    stack = container_stack(new_stack, hostPort=free_port())
    # The engine: a socket nobody serves (the shared dockerd is never stopped).
    stack.set_config("docker:host", auto.ConfigValue(value=f"unix://{tmp_path}/no-dockerd.sock"))
    preview_fails(stack, "Cannot use the Docker engine at unix://", "docker info", "Nothing was changed")
    with pytest.raises(auto.errors.CommandError):
        stack.up(color="never")
    assert resource_types(stack) == []
    stack.remove_config("docker:host")

    stack.set_config("image", auto.ConfigValue(value=f"customer-insights/no-such-image:{uuid.uuid4().hex[:8]}"))
    preview_fails(stack, "is not in the Docker engine", "bootstrap/postgres-image/build.sh", "docker image ls")
    stack.remove_config("image")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        stack.set_config("hostPort", auto.ConfigValue(value=str(port)))
        preview_fails(stack, f"hostPort {port} on 127.0.0.1 is already in use", "pulumi config set hostPort")
        with pytest.raises(auto.errors.CommandError):
            stack.up(color="never")
    assert resource_types(stack) == []
    assert docker_output("ps", "-aq", "--filter", f"name=postgres-{stack.name}").strip() == ""


def test_dev_stack_tears_down_completely(new_stack, drill_server, pulumi_cli):
    """protectData's default: false on the stack named dev only. Destroy drops a database holding rows
    only where the stack says so."""
    admin = drill_server.address
    config = {"mode": "external", "externalHost": admin.host, "externalPort": str(admin.port),
              "externalAdminUser": admin.user, "externalSslMode": "disable", "externalAdminIsSuperuser": "true",
              "databaseName": f"dev_{uuid.uuid4().hex[:8]}", "rolePrefix": f"v{uuid.uuid4().hex[:6]}"}
    template = new_stack(main_program, {}, project=MAIN_PROJECT)  # a workspace in this test's backend
    dev = auto.create_stack("dev", project_name=MAIN_PROJECT, program=main_program,
                            opts=auto.LocalWorkspaceOptions(env_vars=template.workspace.env_vars,
                                                            pulumi_command=pulumi_cli,
                                                            project_settings=template.workspace.project_settings()))
    new_stack.stacks.append(dev)
    dev.set_all_config({**{k: auto.ConfigValue(value=v) for k, v in config.items()},
                        "externalAdminPassword": auto.ConfigValue(value=admin.password, secret=True)})
    outputs = {k: v.value for k, v in dev.up(color="never").outputs.items()}
    seed(outputs["connection_urls"]["app"])
    assert not any(r.get("protect") for r in dev.export_stack().deployment["resources"])
    destroyed = dev.destroy(color="never")
    assert set(destroyed.summary.resource_changes or {}) == {"delete"}
    with psycopg.connect(admin.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (config["databaseName"],)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s",
                            (config["rolePrefix"] + "%",)).fetchone() == (0,)


# ---------------------------------------------------------------------------------------------- the server lost


def pulumi_cli_run(stack: auto.Stack, args: list[str]) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it in the project, on `stack` (the recoveries the messages name)."""
    return subprocess.run([str(pulumi_bin_dir() / "pulumi"), *args, "--stack", stack.name, "--non-interactive"],
                          cwd=stack.workspace.work_dir, env={**os.environ, **stack.workspace.env_vars},
                          capture_output=True, text=True, timeout=300, check=False)


def named_recovery(message: str) -> list[str]:
    """The `pulumi state delete ...` command the message names, as arguments after `pulumi`."""
    found = re.search(r"`pulumi (state delete '[^']+' --target-dependents[^`]*)`", message)
    assert found, message[-3000:]
    return shlex.split(found.group(1))


def lose_the_server(container: str) -> None:
    """What the user did: `docker rm -f postgres-<stack>` and `docker volume rm postgres-<stack>-data`."""
    docker_output("rm", "-f", container)
    docker_output("volume", "rm", f"{container}-data")


def up_stops_on_the_lost_volume(stack: auto.Stack, container: str, *fragments: str) -> str:
    """preview, up and refresh's preview fail naming the loss; nothing is created, the state is unchanged."""
    before = sorted(resource_types(stack))
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview(color="never")
    message = str(failure.value)
    for fragment in (f"The data volume {container}-data of this stack is gone", "Nothing was changed", *fragments):
        assert fragment in message, message[-3000:]
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.up(color="never")
    assert f"The data volume {container}-data of this stack is gone" in str(failure.value)
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview_refresh(color="never")  # what `pulumi refresh` shows before it would change anything
    assert f"The data volume {container}-data of this stack is gone" in str(failure.value)
    assert docker_output("ps", "-aq", "--filter", f"name=^{container}$").strip() == ""
    assert docker_output("volume", "ls", "-q", "--filter", f"name=^{container}-data$").strip() == ""
    assert sorted(resource_types(stack)) == before
    return message


def test_data_volume_removed_between_runs_stops_up_and_the_named_recovery_converges(new_stack):
    stack = container_stack(new_stack, hostPort=free_port())  # protectData: true (not the dev stack)
    container = f"postgres-{stack.name}"
    app = stack.up(color="never").outputs["connection_urls"].value["app"]
    seed(app)

    # -- protected: says the data is gone, points to the backup; recreating empty takes an explicit --force
    lose_the_server(container)
    message = up_stops_on_the_lost_volume(stack, container, "protects its data (protectData)",
                                          "Restore it from your backup", "--force")
    refused = pulumi_cli_run(stack, [arg for arg in named_recovery(message) if arg != "--force"])
    assert refused.returncode != 0 and "protected" in refused.stderr + refused.stdout, refused
    recovered = pulumi_cli_run(stack, named_recovery(message))
    assert recovered.returncode == 0, recovered.stderr
    outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
    owner, app = outputs["connection_urls"]["owner"], outputs["connection_urls"]["app"]
    assert rows(owner) == {"organizations": 0, "users": 0, "refresh_tokens": 0}  # empty, as the user chose
    assert set(outputs["migrations"]) <= {r[0] for r in psycopg.connect(owner).execute(
        "SELECT version FROM schema_migrations")}
    stack.preview(expect_no_changes=True, color="never")

    # -- unprotected: the same loss; the message's recovery (no --force) converges
    stack.set_config("protectData", auto.ConfigValue(value="false"))
    stack.up(color="never")
    seed(app)
    lose_the_server(container)
    message = up_stops_on_the_lost_volume(stack, container, "To start again with an empty server")
    assert "--force" not in message
    recovered = pulumi_cli_run(stack, named_recovery(message))
    assert recovered.returncode == 0, recovered.stderr
    outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
    assert rows(outputs["connection_urls"]["owner"]) == {"organizations": 0, "users": 0, "refresh_tokens": 0}
    seed(outputs["connection_urls"]["app"])
    stack.preview(expect_no_changes=True, color="never")

    # -- keepDataOnDestroy: destroy forgets the volume, which keeps the rows (no protection needed)
    stack.set_config("keepDataOnDestroy", auto.ConfigValue(value="true"))
    stack.up(color="never")
    stack.destroy(color="never")
    volume = f"{container}-data"
    try:
        assert docker_output("volume", "ls", "-q", "--filter", f"name=^{volume}$").strip() == volume
        assert docker_output("ps", "-aq", "--filter", f"name=^{container}$").strip() == ""
    finally:
        docker_output("volume", "rm", volume, check=False)


def test_keep_data_on_destroy_keeps_the_database_and_its_rows(new_stack, drill_server):
    """keepDataOnDestroy without protectData: destroy succeeds, the database keeps its schema and rows."""
    admin = drill_server.address
    stack = external_stack(new_stack, admin, protectData="false", keepDataOnDestroy="true")
    database, prefix = stack.get_config("databaseName").value, stack.get_config("rolePrefix").value
    outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
    seed(outputs["connection_urls"]["app"])
    before = rows(outputs["connection_urls"]["owner"])
    try:
        stack.destroy(color="never")
        assert resource_types(stack) == []
        with psycopg.connect(admin.dsn(database)) as conn:
            assert rows(admin.dsn(database)) == before and before["users"] == 1
            kept = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
            assert kept and kept[0] == len(outputs["migrations"])
        with psycopg.connect(admin.dsn()) as conn:
            remaining = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                                                    (prefix + "%",))}
        # The kept tables' owner, the roles their privileges name (PostgreSQL drops neither), and the
        # stack's claim on them (a new stack with these names is told whose they were).
        assert remaining == {f"{prefix}_{r}" for r in ("owner", "app", "readonly", "token_cleanup", "owner_claim")}, \
            remaining
    finally:
        with psycopg.connect(admin.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for role in ("owner", "app", "readonly", "token_cleanup", "owner_claim"):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(f"{prefix}_{role}")))


def test_two_stacks_at_once_on_one_external_database_one_claims_it_the_other_says_whose_it_is(
        new_stack, drill_server):
    """Two full-program stacks, the same server, databaseName and rolePrefix (two teams' CI), `up` at once."""
    admin = drill_server.address
    names = {"databaseName": f"shared_{uuid.uuid4().hex[:8]}", "rolePrefix": f"s{uuid.uuid4().hex[:6]}"}
    stacks = [external_stack(new_stack, admin, protectData="false", **names) for _ in range(2)]
    runners = [Runner(stack, new_stack.backend, {"program": "main"}) for stack in stacks]
    try:
        results = [runner.finish(timeout=300) for runner in runners]
    finally:
        for runner in runners:
            runner.kill_group()
    assert sorted(r["ok"] for r in results) == [False, True], [r.get("error", "")[-3000:] for r in results]
    winner, loser = (stacks[0], stacks[1]) if results[0]["ok"] else (stacks[1], stacks[0])
    error = next(r["error"] for r in results if not r["ok"])
    for fragment in (f"belong to another Pulumi stack, '{MAIN_PROJECT}/{winner.name}'",
                     f"The database '{names['databaseName']}' and the roles {names['rolePrefix']}_app, ",
                     "pulumi config set databaseName", "pulumi config set rolePrefix", "one stack per database",
                     "Nothing was created"):
        assert fragment in error, error[-3000:]
    assert admin.password not in error
    # The loser created nothing on the server (components, providers and passwords live in its state only).
    on_server = [t for t in resource_types(loser) if t.startswith(("postgresql:index", "pulumi-python:dynamic"))]
    assert on_server == [], on_server

    # The winner's stack is whole: its roles log in, each migration recorded once, nothing left to do.
    outputs = winner.outputs()
    owner = outputs["connection_urls"].value["owner"]
    with psycopg.connect(owner) as conn:
        counts = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version").fetchall()
    assert {v for v, _ in counts} == set(outputs["migrations"].value) and {c for _, c in counts} == {1}
    seed(outputs["connection_urls"].value["app"])
    winner.preview(expect_no_changes=True, color="never")
    # Run again later, the other stack is refused by its preview, before anything.
    preview_fails_naming(loser, f"belong to another Pulumi stack, '{MAIN_PROJECT}/{winner.name}'",
                         "Nothing was created")


def preview_fails_naming(stack: auto.Stack, *fragments: str) -> str:
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview(color="never")
    for fragment in fragments:
        assert fragment in str(failure.value), str(failure.value)[-3000:]
    return str(failure.value)
