"""Checkpoints (sql/checkpoint.json) through the real Pulumi engine against a real PostgreSQL server:
a stack with one resource per file moves to the checkpoint running no SQL of those files; a fresh
database gets them applied in order; destroy reverts them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pulumi
import pytest
from psycopg import sql
from pulumi import automation as auto

from infra import config as stack_config
from infra.components.migrations import Migrations, MigrationsArgs
from infra.migrate import Checkpoint, CheckpointEntry, load_migrations, write_checkpoint
from infra.migrations_cli import main as migrate_cli
from tests.e2e.conftest import program_connection
from tests.e2e.test_migrations_engine import dsn, recorded, tables

pytestmark = pytest.mark.e2e

MIGRATION = "pulumi-python:dynamic/db:Migration"
CHECKPOINT = "pulumi-python:dynamic/db:MigrationCheckpoint"


def program_for(directory: Path, connection: dict[str, Any]):
    """What __main__.py does with the migrations directory, checkpoint included."""
    def program() -> None:
        namespace = pulumi.get_project()
        files = load_migrations(directory)
        chain = Migrations("schema", MigrationsArgs(
            migrations=files, directory=str(directory), connection=program_connection(connection),
            fixes=stack_config.migration_fixes(namespace),
            checkpoint=stack_config.checked_checkpoint(directory, files, namespace)))
        pulumi.export("versions", chain.versions)
    return program


def tracking_rows(connection: dict[str, Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn(connection)) as conn:
        return conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()


def record_ddl(superuser_dsn: str, database: str) -> str:
    """Installs an event trigger in `database` that records every DDL command anyone runs there (the
    superuser's `audit.ddl`, out of the application schema); returns a DSN to read it."""
    target = psycopg.conninfo.make_conninfo(superuser_dsn, dbname=database)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA audit")
        conn.execute("CREATE TABLE audit.ddl (tag text, object text)")
        conn.execute("""CREATE FUNCTION audit.record() RETURNS event_trigger LANGUAGE plpgsql
            SECURITY DEFINER SET search_path = pg_catalog AS $$
            BEGIN INSERT INTO audit.ddl SELECT command_tag, object_identity FROM pg_event_trigger_ddl_commands();
            END $$""")
        conn.execute("CREATE FUNCTION audit.dropped() RETURNS event_trigger LANGUAGE plpgsql "
                     "SECURITY DEFINER SET search_path = pg_catalog AS $$ BEGIN INSERT INTO audit.ddl "
                     "SELECT 'DROP', object_identity FROM pg_event_trigger_dropped_objects(); END $$")
        conn.execute("CREATE EVENT TRIGGER record_ddl ON ddl_command_end EXECUTE FUNCTION audit.record()")
        conn.execute("CREATE EVENT TRIGGER record_drop ON sql_drop EXECUTE FUNCTION audit.dropped()")
    return target


def ddl_since_start(target: str) -> list[tuple[str, str]]:
    with psycopg.connect(target) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT tag, object FROM audit.ddl").fetchall()]


def drop_recording(target: str) -> None:
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DROP EVENT TRIGGER record_ddl")
        conn.execute("DROP EVENT TRIGGER record_drop")
        conn.execute("DROP SCHEMA audit CASCADE")


def types_in_state(stack: auto.Stack) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for r in stack.export_stack().deployment["resources"]:
        if r["type"] in (MIGRATION, CHECKPOINT):
            found.setdefault(r["type"], []).append(r["urn"].rsplit("::", 1)[-1])
    return found


def test_a_stack_moves_to_a_checkpoint_without_running_any_sql(owner_role_db, new_stack, sql_copy, pg_server):
    files = load_migrations(sql_copy)
    stack = new_stack(program_for(sql_copy, owner_role_db))
    stack.up(color="never")
    with psycopg.connect(dsn(owner_role_db), autocommit=True) as conn:
        conn.execute("INSERT INTO organizations (name) VALUES ('Kept')")
    before = tracking_rows(owner_role_db)
    target = record_ddl(pg_server.dsn(), owner_role_db["dbname"])

    # The team folds 001..006 (applied here) into sql/checkpoint.json.
    assert migrate_cli(["--database-url", dsn(owner_role_db), "--dir", str(sql_copy),
                        "checkpoint", "--through", "006"]) == 0
    assert (sql_copy / "checkpoint.json").exists()

    lines: list[str] = []
    preview = stack.preview(color="never", on_output=lines.append)
    assert preview.change_summary == {"create": 1, "delete": 6, "same": len(files) - 6 + 2}, preview.change_summary
    result = stack.up(color="never", on_output=lines.append)
    assert result.summary.resource_changes == {"create": 1, "delete": 6, "same": len(files) - 6 + 2}
    out = "\n".join(lines)
    for f in files[:6]:
        assert f"{f.filename}: held by the checkpoint now, forgotten (not reverted)" in out
    assert "checkpoint through 006: 0 applied, 6 already recorded" in out

    # No SQL of those files ran, up or down: no DDL at all, the tracking table as it was, rows kept.
    assert ddl_since_start(target) == []
    assert tracking_rows(owner_role_db) == before
    with psycopg.connect(dsn(owner_role_db)) as conn:
        assert conn.execute("SELECT count(*) FROM organizations WHERE name = 'Kept'").fetchone() == (1,)
    assert types_in_state(stack) == {CHECKPOINT: ["schema-checkpoint"],
                                     MIGRATION: [f.filename.removesuffix(".sql") for f in files[6:]]}
    stack.preview(expect_no_changes=True, color="never")
    with psycopg.connect(dsn(owner_role_db), autocommit=True) as conn:  # the recording sees the owner's DDL
        conn.execute("CREATE TABLE probe (id int)")
        conn.execute("DROP TABLE probe")
    assert {tag for tag, _ in ddl_since_start(target)} == {"CREATE TABLE", "DROP"}
    drop_recording(target)

    # An edited file under the checkpoint is refused before anything is declared.
    edited = sql_copy / files[2].filename
    text = edited.read_text()
    edited.write_text(text + "\n-- an innocent-looking edit\n")
    with pytest.raises(auto.errors.CommandError) as refused:
        stack.preview(color="never")
    assert f"{files[2].filename}: edited after it was applied and folded into checkpoint.json" in str(refused.value)
    edited.write_text(text)

    # Destroy reverts everything: the files after the checkpoint, then the checkpoint's, newest first.
    stack.destroy(color="never")
    assert recorded(owner_role_db) == {}
    assert tables(owner_role_db) == set()


def test_a_fresh_database_gets_the_checkpoint_files_applied_in_order(owner_role_db, new_stack, sql_copy):
    files = load_migrations(sql_copy)
    write_checkpoint(sql_copy, Checkpoint(files[4].version, tuple(
        CheckpointEntry(f.version, f.name, f.checksum) for f in files[:5])))
    stack = new_stack(program_for(sql_copy, owner_role_db))

    lines: list[str] = []
    stack.preview(color="never", on_output=lines.append)
    out = "\n".join(lines)
    # The preview still names every pending file: the checkpoint's, and one resource per later file.
    assert "applies those of its 5 files not recorded yet, in order: " + ", ".join(f.filename for f in files[:5]) in out
    for f in files[5:]:
        assert f.filename.removesuffix(".sql") in out

    stack.up(color="never")
    assert set(recorded(owner_role_db)) == {f.version for f in files}
    with psycopg.connect(dsn(owner_role_db)) as conn:
        order = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY applied_at, version")]
    assert order == [f.version for f in files]
    assert types_in_state(stack)[CHECKPOINT] == ["schema-checkpoint"]
    stack.preview(expect_no_changes=True, color="never")
    stack.destroy(color="never")
    assert tables(owner_role_db) == set()
    with psycopg.connect(dsn(owner_role_db)) as conn:
        assert conn.execute(sql.SQL("SELECT count(*) FROM schema_migrations")).fetchone() == (0,)
