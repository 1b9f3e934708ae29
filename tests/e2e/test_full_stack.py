"""The whole program (`__main__.py`) through the real engine, in container and external mode, with
the docker, postgresql and random plugins the bootstrap builds (a missing plugin fails the test)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pulumi import automation as auto

from devsupport.local_postgres import LocalPostgres, ServerAddress, free_port
from scripts.preview_pictures import graph_dot
from scripts.stack import program
from tests.e2e.conftest import assert_not_in_state, clean_up_stack, docker_leftovers

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROJECT = "customer-insights-db"


def stack_of(new_stack, config: dict[str, Any]) -> auto.Stack:
    # Test stacks are thrown away: unprotected unless a test says otherwise (the default protects them).
    config = {"protectData": "false", **config}
    return new_stack(program, {k: auto.ConfigValue(value=str(v), secret=k == "externalAdminPassword")
                               for k, v in config.items()}, project=PROJECT)


def role_can(url: str, statement: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute(statement)
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def prove_privileges(urls: dict[str, str]) -> None:
    for url in urls.values():
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles"
                                " WHERE rolname = current_user").fetchone() == (False,)
    with psycopg.connect(urls["app"]) as conn:
        conn.execute("INSERT INTO organizations (name) VALUES ('acme')")
    assert not role_can(urls["readonly"], "INSERT INTO organizations (name) VALUES ('nope')")
    assert role_can(urls["readonly"], "SELECT count(*) FROM organizations")
    assert not role_can(urls["cleanup"], "SELECT * FROM users")
    assert not role_can(urls["app"], "CREATE TABLE app_ddl (id int)")


def full_cycle(stack: auto.Stack, backend: Path) -> dict[str, Any]:
    up = stack.up(color="never")
    outputs = {k: v.value for k, v in up.outputs.items()}
    # Every output that carries a password is secret as a whole, not only value by value.
    assert up.outputs["env"].secret and up.outputs["connection_urls"].secret
    assert not any(up.outputs[name].secret for name in ("host", "port", "database", "roles", "migrations"))
    assert set(outputs["env"]) == {"POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER",
                                   "POSTGRES_PASSWORD", "DATABASE_URL"}
    prove_privileges(outputs["connection_urls"])
    again = stack.up(color="never")
    assert set(again.summary.resource_changes or {}) == {"same"}
    stack.preview(expect_no_changes=True, color="never")
    assert_not_in_state(backend, outputs["env"]["POSTGRES_PASSWORD"],
                        *[url.split(":")[2].split("@")[0] for url in outputs["connection_urls"].values()])
    return outputs


def stack_graph(stack: auto.Stack, target: Path) -> str:
    """`pulumi stack graph` of a live stack, run by the CLI in the stack's workspace."""
    env = {**os.environ, **stack.workspace.env_vars}
    subprocess.run(["pulumi", "stack", "graph", "--stack", stack.name, str(target)], cwd=stack.workspace.work_dir,
                   env=env, check=True, capture_output=True, text=True)
    return target.read_text()


def test_container_mode_up_preview_destroy(provider_plugins, new_stack, tmp_path):
    stack = stack_of(new_stack, {"hostPort": free_port(), "cleanupSchedule": "* * * * *"})
    full_cycle(stack, new_stack.backend)
    assert docker_leftovers(stack.name)["container"], "the container was not found by its label or name"
    # The committed picture of the resource graph is this stack's (docs/resource-graph.dot).
    current = graph_dot(stack_graph(stack, tmp_path / "graph.dot"))
    (tmp_path / "resource-graph.dot").write_text(current)
    assert "customer-insights:db:DatabaseAndRoles::app-db" in current
    assert current == (REPO / "docs" / "resource-graph.dot").read_text(), (
        "docs/resource-graph.dot is out of date: `bash scripts/up.sh && source bootstrap/env.sh && "
        "pulumi stack graph /tmp/graph.dot && python scripts/preview_pictures.py graph /tmp/graph.dot --png`"
    )
    stack.destroy(color="never")
    assert docker_leftovers(stack.name) == {"container": [], "volume": [], "network": []}


def operator_server(cron_database: str, *, create_it: bool) -> LocalPostgres:
    """A server run as an operator would: pg_cron in a database of the operator's choosing."""
    server = LocalPostgres(cron_database=cron_database).start()
    if create_it:
        with psycopg.connect(server.address.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{cron_database}"')
    return server


def external_config(admin: ServerAddress, **extra: Any) -> dict[str, Any]:
    return {
        "mode": "external", "externalHost": admin.host, "externalPort": admin.port,
        "externalAdminUser": admin.user, "externalAdminPassword": admin.password, "externalSslMode": "disable",
        **extra,
    }


def test_external_mode_on_a_server_started_on_this_machine(provider_plugins, new_stack):
    # pg_cron's database is neither `postgres` nor the application's: the extension and the job go there.
    server = operator_server("scheduler", create_it=True)
    try:
        admin = server.address
        database = f"ext_{uuid.uuid4().hex[:8]}"
        stack = stack_of(new_stack, external_config(
            admin, databaseName=database, rolePrefix=f"x{uuid.uuid4().hex[:6]}", externalAdminIsSuperuser="true"))
        outputs = full_cycle(stack, new_stack.backend)
        with psycopg.connect(admin.dsn("scheduler")) as conn:
            job = conn.execute("SELECT database, username FROM cron.job WHERE jobid = %s",
                               (outputs["cleanup_job"]["job_id"],)).fetchone()
            assert job == (database, outputs["roles"]["cleanup"])
        stack.destroy(color="never")
        with psycopg.connect(admin.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (database,)).fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
                                (list(outputs["roles"].values()),)).fetchone() == (0,)
        with psycopg.connect(admin.dsn("scheduler")) as conn:
            # The job is gone; pg_cron itself stays: on a shared server other jobs may depend on it.
            assert conn.execute("SELECT count(*) FROM cron.job").fetchone() == (0,)
    finally:
        server.stop()


def test_fallback_cleanup_removes_what_a_failed_destroy_left(provider_plugins, new_stack, capfd):
    stack = stack_of(new_stack, {"hostPort": free_port()})
    stack.up(color="never")
    found = docker_leftovers(stack.name)
    assert found["container"] and found["volume"] and not found["network"]  # the program makes no network
    # Destroy cannot reach the server any more: every PostgreSQL resource fails to delete, and the
    # engine keeps the container and volume they depend on.
    subprocess.run(["docker", "stop", f"postgres-{stack.name}"], check=True, capture_output=True)
    with pytest.raises(auto.errors.CommandError):
        stack.destroy(color="never")
    new_stack.stacks.remove(stack)
    removed = clean_up_stack(stack)
    assert {r.split()[0] for r in removed} == {"container", "volume"}, removed
    assert docker_leftovers(stack.name) == {"container": [], "volume": [], "network": []}
    assert "removed by label/name instead" in capfd.readouterr().err


# These two need no provider plugin: the program stops before it declares any resource.

def assert_preview_and_up_fail_before_anything(stack: auto.Stack, admin: ServerAddress, *fragments: str) -> None:
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview(color="never")
    message = str(failure.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "Nothing was created" in message
    assert "Traceback" not in message and admin.password not in message
    with pytest.raises(auto.errors.CommandError):
        stack.up(color="never")
    resources = stack.export_stack().deployment.get("resources") or []
    assert {r["type"] for r in resources} <= {"pulumi:pulumi:Stack"}
    with psycopg.connect(admin.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'ci\\_%'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'customer_insights'").fetchone() == (0,)


def test_external_server_without_pg_cron_fails_preview_before_anything(new_stack):
    server = LocalPostgres(extra_settings={"shared_preload_libraries": ""}).start()
    try:
        stack = stack_of(new_stack, external_config(server.address))
        assert_preview_and_up_fail_before_anything(
            stack, server.address, "pg_cron is not enabled", "shared_preload_libraries", "RDS")
    finally:
        server.stop()


def test_external_server_whose_cron_database_is_missing_fails_preview_before_anything(new_stack):
    server = operator_server("jobs", create_it=False)
    try:
        stack = stack_of(new_stack, external_config(server.address))
        assert_preview_and_up_fail_before_anything(
            stack, server.address, "pg_cron runs in database 'jobs'", "does not exist", "CREATE DATABASE jobs")
    finally:
        server.stop()


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("hostPort", "70000", "hostPort: 70000 is out of range"),
    ("mode", "cloud", "unknown mode 'cloud'"),
    ("databaseName", "Customer-Insights", "not a plain PostgreSQL identifier"),
    ("passwordLength", "8", "passwordLength: 8 is out of range"),
    ("cleanupSchedule", "every hour", "cleanupSchedule"),
])
def test_bad_config_fails_preview_naming_key_and_fix(new_stack, key, value, expected):
    stack = stack_of(new_stack, {key: value})
    with pytest.raises(auto.errors.CommandError) as failure:
        stack.preview(color="never")
    message = str(failure.value)
    assert "Invalid stack configuration (nothing was changed)" in message
    assert f"customer-insights-db:{key}" in message and expected in message
