"""The migration chain through the real Pulumi engine against a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pulumi
import pytest
from pulumi import automation as auto

from infra.components.migrations import Migrations, MigrationsArgs
from infra.config import migration_fixes
from infra.migrate import Migrator, load_migrations
from tests.e2e.conftest import PROJECT, assert_not_in_state, program_connection

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def migrations_program(directory: Path, connection: dict[str, Any], *, accept: frozenset[str] = frozenset(),
                       keep_data: bool = False):
    def program() -> None:
        chain = Migrations("schema", MigrationsArgs(migrations=load_migrations(directory), directory=str(directory),
                                                    connection=program_connection(connection),
                                                    accept_checksums=accept, keep_data_on_destroy=keep_data,
                                                    fixes=migration_fixes(pulumi.get_project())))
        pulumi.export("versions", chain.versions)
    return program


def dsn(connection: dict[str, Any]) -> str:
    return psycopg.conninfo.make_conninfo(**{k: connection[k] for k in ("host", "port", "dbname", "user", "password")})


def recorded(connection: dict[str, Any]) -> dict[str, str]:
    with psycopg.connect(dsn(connection)) as conn:
        exists = conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return {}
        return dict(conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall())


def tables(connection: dict[str, Any]) -> set[str]:
    with psycopg.connect(dsn(connection)) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        ).fetchall()
    return {r[0] for r in rows}


SPEC_TABLES = {"organizations", "users", "customers", "customer_interactions", "behavior_patterns",
               "refresh_tokens"}


def test_up_is_idempotent_and_destroy_reverts_everything(owner_role_db, new_stack):
    files = load_migrations(REPO / "sql")
    stack = new_stack(migrations_program(REPO / "sql", owner_role_db))

    result = stack.up(color="never")
    assert result.summary.resource_changes == {"create": len(files) + 2}  # + stack + component
    assert set(recorded(owner_role_db)) == {f.version for f in files}
    assert tables(owner_role_db) >= SPEC_TABLES
    with psycopg.connect(dsn(owner_role_db)) as conn:
        applied_by = {r[0] for r in conn.execute("SELECT applied_by FROM schema_migrations").fetchall()}
    assert applied_by == {owner_role_db["user"]}

    again = stack.up(color="never")
    assert again.summary.resource_changes == {"same": len(files) + 2}
    stack.preview(expect_no_changes=True, color="never")

    # The password is a secret: never in plaintext in the state (export_stack() decrypts).
    assert_not_in_state(new_stack.backend, str(owner_role_db["password"]))

    log: list[str] = []
    stack.destroy(color="never", on_output=log.append)
    assert recorded(owner_role_db) == {}
    assert tables(owner_role_db) == set()
    # Down scripts ran newest first: the engine deletes dependents before what they depend on.
    deleted = [line for line in log if " deleted" in line]
    delete_order = [f.version for line in deleted for f in files if f.filename.removesuffix(".sql") in line]
    assert delete_order == [f.version for f in reversed(files)], deleted


def test_preview_lists_exactly_the_pending_migration(owner_role_db, new_stack, sql_copy):
    stack = new_stack(migrations_program(sql_copy, owner_role_db))
    stack.up(color="never")

    new_file = sql_copy / "900_add_customer_notes.sql"
    new_file.write_text("ALTER TABLE customers ADD COLUMN notes text;\n")
    (sql_copy / "900_add_customer_notes.down.sql").write_text("ALTER TABLE customers DROP COLUMN notes;\n")
    lines: list[str] = []
    preview = stack.preview(color="never", on_output=lines.append)
    assert preview.change_summary.get("create") == 1
    assert set(preview.change_summary) == {"create", "same"}
    assert any("900_add_customer_notes" in line and "create" in line for line in lines), lines

    stack.up(color="never")
    assert "900" in recorded(owner_role_db)


def test_edited_applied_file_fails_preview_and_up_until_accepted(owner_role_db, new_stack, sql_copy):
    stack = new_stack(migrations_program(sql_copy, owner_role_db))
    stack.up(color="never")
    before = recorded(owner_role_db)

    edited = sql_copy / "003_create_customers.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    current = load_migrations(sql_copy)[2].checksum

    for operation in (stack.preview, stack.up):
        with pytest.raises(auto.errors.CommandError) as failure:
            operation(color="never")
        message = str(failure.value)
        assert "003_create_customers.sql (version 003) was changed after it was applied" in message
        assert before["003"] in message and current in message
        # The library's facts, the fix in the program's own config key.
        assert f'add "003" to the stack config `{PROJECT}:acceptChecksums` and run `pulumi up`' in message
    assert recorded(owner_role_db) == before

    # The documented repair: accept the new checksum without running anything.
    accepting = migrations_program(sql_copy, owner_role_db, accept=frozenset({"003"}))
    result = stack.up(color="never", program=accepting)
    assert result.summary.resource_changes.get("update") == 1
    assert recorded(owner_role_db)["003"] == current
    stack.preview(expect_no_changes=True, color="never", program=accepting)


def test_failing_migration_stops_the_chain_and_up_continues_after_the_fix(owner_role_db, new_stack, sql_copy):
    broken = sql_copy / "005_create_behavior_patterns.sql"
    good_text = broken.read_text()
    broken.write_text(good_text.replace("CREATE TABLE", "CREATE TABEL", 1))
    stack = new_stack(migrations_program(sql_copy, owner_role_db))

    with pytest.raises(auto.errors.CommandError) as failure:
        stack.up(color="never")
    message = str(failure.value)
    assert "005_create_behavior_patterns.sql" in message
    assert "line " in message and "syntax error" in message
    assert set(recorded(owner_role_db)) == {"001", "002", "003", "004"}
    assert "behavior_patterns" not in tables(owner_role_db)

    broken.write_text(good_text)
    result = stack.up(color="never")
    assert result.summary.resource_changes.get("create") == len(load_migrations(sql_copy)) - 4
    assert set(recorded(owner_role_db)) == {f.version for f in load_migrations(sql_copy)}


def test_interrupted_up_adopts_committed_migrations(owner_role_db, new_stack):
    files = load_migrations(REPO / "sql")
    # As if `pulumi up` died after 001-003 committed but before the engine recorded them.
    migrator = Migrator(dsn(owner_role_db))
    for migration in files[:3]:
        migrator.apply(migration)
    with psycopg.connect(dsn(owner_role_db)) as conn:
        applied_at_before = dict(conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall())

    stack = new_stack(migrations_program(REPO / "sql", owner_role_db))
    stack.up(color="never")
    with psycopg.connect(dsn(owner_role_db)) as conn:
        applied_at_after = dict(conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall())
    assert {v: applied_at_after[v] for v in applied_at_before} == applied_at_before
    resources = stack.export_stack().deployment["resources"]
    adopted = {r["outputs"]["version"]: r["outputs"]["adopted"]
               for r in resources if r["type"] == "pulumi-python:dynamic/db:Migration"}
    assert adopted == {f.version: f.version <= "003" for f in files}


def test_keep_data_on_destroy_leaves_the_schema(owner_role_db, new_stack):
    stack = new_stack(migrations_program(REPO / "sql", owner_role_db, keep_data=True))
    stack.up(color="never")
    stack.destroy(color="never")
    assert tables(owner_role_db) >= SPEC_TABLES
    assert len(recorded(owner_role_db)) == len(load_migrations(REPO / "sql"))
