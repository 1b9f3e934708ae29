"""infra.migrate.Migrator against a real PostgreSQL (a fresh database per test, no mocks)."""

from __future__ import annotations

import itertools
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from infra.migrate import (
    DEFAULT_LOCK_NAME,
    AppliedMigration,
    ChecksumMismatchError,
    LockTimeoutError,
    MigrationFailedError,
    MigrationFile,
    MigrationFileError,
    MigrationsError,
    Migrator,
    OutOfOrderMigrationError,
    RenamedMigrationError,
    check_order,
    checksum_of,
    highest_of,
    load_migrations,
    lock_key,
)
from infra.migration_identity import LOCK_NAME as CLI_LOCK_NAME
from tests.helpers import write_files

pytestmark = pytest.mark.integration

REPO_SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
LOCK_KEY = lock_key(DEFAULT_LOCK_NAME)  # the lock of a Migrator built without a lock_name


# ---------------------------------------------------------------------------------------------- helpers


def query(dsn: str, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]  # test-local literal SQL
        return cur.fetchall() if cur.description else []


def table_exists(dsn: str, name: str) -> bool:
    return query(dsn, "SELECT to_regclass(%s) IS NOT NULL", (name,))[0][0]


def tracked_versions(dsn: str) -> list[str]:
    if not table_exists(dsn, "public.schema_migrations"):
        return []
    return [r[0] for r in query(dsn, "SELECT version FROM public.schema_migrations ORDER BY version")]


def lock_is_free(dsn: str, key: int = LOCK_KEY) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        assert row is not None
        if row[0]:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return bool(row[0])


def preview_order_check(migrator: Migrator, m: MigrationFile) -> None:
    """What a preview checks for `m`'s order (as the Migration provider does): read-only, no lock."""
    applied = migrator.applied()
    if not migrator.allow_out_of_order and m.version not in applied:
        check_order(m, highest_of(applied.values()))


class Log(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


FOUR = {
    "001_create_first.sql": "CREATE TABLE first (id int PRIMARY KEY);\n",
    "002_create_second.sql": "CREATE TABLE second (id int PRIMARY KEY);\nINSERT INTO second VALUES (2);\n",
    "003_create_third.sql": """\
-- 003: the third table; its last statement has a syntax error on line 9.
CREATE TABLE third (id int PRIMARY KEY);

INSERT INTO third VALUES (3);

CREATE TABLE third_b (
    id   int,
    name text,
    oops text,,
    more int
);
""",
    "004_create_fourth.sql": "CREATE TABLE fourth (id int PRIMARY KEY);\n",
}


# ---------------------------------------------------------------------------------------------- reading


def test_applied_is_empty_while_the_tracking_table_does_not_exist(fresh_db: str, tmp_path: Path) -> None:
    (m,) = load_migrations(write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);"}))
    migrator = Migrator(fresh_db)
    assert migrator.applied() == {}
    assert migrator.check(m) is None
    assert not table_exists(fresh_db, "public.schema_migrations")  # reading never creates it


def test_tracking_table_shape(fresh_db: str, tmp_path: Path) -> None:
    (m,) = load_migrations(write_files(tmp_path, {"001_a.sql": "SELECT 1;"}))
    Migrator(fresh_db).apply(m)
    columns = query(
        fresh_db,
        "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'schema_migrations' ORDER BY ordinal_position",
    )
    assert columns == [
        ("version", "text", "NO", None),
        ("name", "text", "NO", None),
        ("checksum", "text", "NO", None),
        ("applied_at", "timestamp with time zone", "NO", "now()"),
        ("duration_ms", "integer", "NO", None),
        ("applied_by", "text", "NO", "CURRENT_USER"),
    ]
    pkey = query(
        fresh_db,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY (i.indkey) "
        "WHERE i.indrelid = 'public.schema_migrations'::regclass AND i.indisprimary",
    )
    assert pkey == [("version",)]


# ---------------------------------------------------------------------------------------------- applying


def test_apply_in_order_records_each_migration(fresh_db: str, tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "001_create_organizations.sql": "CREATE TABLE organizations (id int PRIMARY KEY, name text);\n",
            "002_slow_insert.sql": "INSERT INTO organizations VALUES (1, 'acme');\nSELECT pg_sleep(0.25);\n",
            "003_who_ran_it.sql": (
                "CREATE TABLE who AS SELECT current_setting('application_name') AS app, "
                "current_user::text AS usr, 100 % 7 AS modulo;\n"
            ),
        },
    )
    migrations = load_migrations(tmp_path)
    log = Log()
    migrator = Migrator(fresh_db, log=log)
    before = datetime.now(UTC)
    results = [migrator.apply(m) for m in migrations]
    assert [adopted for _, adopted in results] == [False, False, False]

    applied = migrator.applied()
    assert list(applied) == ["001", "002", "003"]
    for m, (record, _) in zip(migrations, results, strict=True):
        assert applied[m.version] == record
        assert record.version == m.version and record.name == m.name
        assert record.checksum == m.checksum == checksum_of(m.up_sql)
        assert record.applied_by == "postgres"
        assert record.applied_at.tzinfo is not None
        assert before - timedelta(seconds=5) <= record.applied_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert applied["002"].duration_ms >= 250
    assert applied["001"].duration_ms < applied["002"].duration_ms
    assert query(fresh_db, "SELECT app, usr, modulo FROM who") == [
        ("migrations", "postgres", 2)
    ]
    assert query(fresh_db, "SELECT id, name FROM organizations") == [(1, "acme")]

    assert log[0] == "001_create_organizations.sql: applying (transactional)"
    assert log[1].startswith("001_create_organizations.sql: applied in ") and log[1].endswith(" ms")
    assert log[3] == f"002_slow_insert.sql: applied in {applied['002'].duration_ms} ms"
    assert len(log) == 6


def test_apply_adopts_a_recorded_migration_without_running_it(fresh_db: str, tmp_path: Path) -> None:
    # Running it twice would fail (the table exists): adoption must run nothing. This is how a
    # `pulumi up` interrupted after the COMMIT but before Pulumi saved its state recovers.
    (m,) = load_migrations(write_files(tmp_path, {"001_create_a.sql": "CREATE TABLE a (id int);\n"}))
    first, adopted = Migrator(fresh_db).apply(m)
    assert not adopted
    log = Log()
    again, adopted = Migrator(fresh_db, log=log).apply(m)
    assert adopted
    assert again == first
    assert log == ["001_create_a.sql: already recorded, adopted"]
    assert tracked_versions(fresh_db) == ["001"]
    assert Migrator(fresh_db).check(m) == first


def test_apply_all_applies_pending_in_order_and_skips_applied(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);", "010_b.sql": "CREATE TABLE b (id int);"})
    migrator = Migrator(fresh_db)
    first = migrator.apply_all(load_migrations(tmp_path))
    assert [(r.version, adopted) for r, adopted in first] == [("001", False), ("010", False)]
    write_files(tmp_path, {"011_c.sql": "CREATE TABLE c (id int);"})
    second = migrator.apply_all(load_migrations(tmp_path))
    assert [(r.version, adopted) for r, adopted in second] == [("011", False)]
    assert migrator.apply_all(load_migrations(tmp_path)) == []


def test_a_file_added_below_the_highest_applied_version_is_refused_unless_allowed(
    fresh_db: str, tmp_path: Path
) -> None:
    write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);", "010_b.sql": "CREATE TABLE b (id int);"})
    Migrator(fresh_db).apply_all(load_migrations(tmp_path))
    # A branch merged late brings 002; another brings 011, which alone would be fine.
    write_files(tmp_path, {"002_c.sql": "CREATE TABLE c (id int);", "011_d.sql": "CREATE TABLE d (id int);"})
    _, late, _, later = load_migrations(tmp_path)
    strict = Migrator(fresh_db)

    with pytest.raises(OutOfOrderMigrationError) as exc:
        strict.apply_all([late, later])  # refused before anything runs, 011 included
    err = exc.value
    assert (err.filename, err.version, err.highest_applied, err.highest_applied_name) == (
        "002_c.sql", "002", "010", "b"
    )
    assert str(err).startswith("002_c.sql (version 002) is not applied, but a later version already is: 010 (b).")
    assert "rename it to 011_c.sql" in str(err) and err.fix is None
    with pytest.raises(OutOfOrderMigrationError):  # file by file too, under the lock
        strict.apply(late)
    with pytest.raises(OutOfOrderMigrationError):  # and read-only, as a preview asks
        preview_order_check(strict, late)
    preview_order_check(strict, later)
    assert tracked_versions(fresh_db) == ["001", "010"]
    assert not table_exists(fresh_db, "c") and not table_exists(fresh_db, "d")
    assert lock_is_free(fresh_db)

    log = Log()
    lenient = Migrator(fresh_db, log=log, allow_out_of_order=True)
    preview_order_check(lenient, late)
    done = lenient.apply_all([late, later])
    assert [(r.version, adopted) for r, adopted in done] == [("002", False), ("011", False)]
    assert "002_c.sql: applied out of order (after 010), as allowed" in log
    assert table_exists(fresh_db, "c") and table_exists(fresh_db, "d")

    # Once applied it is history like any other: the strict migrator adopts it, refuses nothing.
    assert strict.apply(late)[1] is True
    preview_order_check(strict, late)
    assert strict.apply_all(load_migrations(tmp_path)) == []


def test_order_ignores_tracking_rows_written_by_hand_with_other_versions(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);"})
    migrator = Migrator(fresh_db)
    preview_order_check(migrator, load_migrations(tmp_path)[0])  # no tracking table yet: nothing is applied
    assert not table_exists(fresh_db, "public.schema_migrations")  # and checking created none
    migrator.apply_all(load_migrations(tmp_path))
    query(fresh_db, "INSERT INTO schema_migrations (version, name, checksum, duration_ms) "
                    "VALUES ('hotfix-7', 'by_hand', 'sha256:0', 0)")
    write_files(tmp_path, {"1000_b.sql": "CREATE TABLE b (id int);"})  # above 001 by number, below it as text
    assert [r.version for r, _ in migrator.apply_all(load_migrations(tmp_path))] == ["1000"]
    write_files(tmp_path, {"999_c.sql": "CREATE TABLE c (id int);"})
    with pytest.raises(OutOfOrderMigrationError) as exc:
        migrator.apply_all(load_migrations(tmp_path))
    assert exc.value.highest_applied == "1000"


def test_failing_migration_is_all_or_nothing_and_says_where(fresh_db: str, tmp_path: Path) -> None:
    migrations = load_migrations(write_files(tmp_path, FOUR))
    log = Log()
    migrator = Migrator(fresh_db, log=log)
    with pytest.raises(MigrationFailedError) as exc:
        migrator.apply_all(migrations)
    err = exc.value

    # 1 and 2 applied and recorded; nothing of 3 (its first statement's table is absent); 4 not attempted.
    assert tracked_versions(fresh_db) == ["001", "002"]
    assert table_exists(fresh_db, "first") and table_exists(fresh_db, "second")
    assert not table_exists(fresh_db, "third")
    assert not table_exists(fresh_db, "third_b")
    assert not table_exists(fresh_db, "fourth")
    assert not any(line.startswith("004") for line in log)

    assert err.filename == "003_create_third.sql"
    assert err.line == 9  # the ",," line, not the statement's first line (6)
    assert err.statement.startswith("CREATE TABLE third_b (")
    assert err.statement.endswith(");")
    assert err.sqlstate == "42601"
    assert err.pg_message == 'syntax error at or near ","'
    assert err.transactional
    text = str(err)
    assert text.startswith(
        '003_create_third.sql, line 9: syntax error at or near ","\n  statement: CREATE TABLE third_b ('
    )
    assert "nothing of it was applied" in text
    assert lock_is_free(fresh_db)

    # Fix the file: the next run continues from 3.
    write_files(
        tmp_path, {"003_create_third.sql": FOUR["003_create_third.sql"].replace("oops text,,", "oops text,")}
    )
    results = migrator.apply_all(load_migrations(tmp_path))
    assert [(r.version, adopted) for r, adopted in results] == [("003", False), ("004", False)]
    assert tracked_versions(fresh_db) == ["001", "002", "003", "004"]
    assert query(fresh_db, "SELECT id FROM third") == [(3,)]


def test_error_line_for_errors_found_after_parsing(fresh_db: str, tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "001_a.sql": "CREATE TABLE a (id int);\n",
            # an unknown column (position reported) on line 5, then a runtime error (no position).
            "002_unknown_column.sql": "-- header\n\nSELECT\n    id,\n    missing_column\nFROM a;\n",
            "003_division.sql": "SELECT 1;\n\nINSERT INTO a\nVALUES (1 / 0);\n",
        },
    )
    a, unknown, division = load_migrations(tmp_path)
    migrator = Migrator(fresh_db)
    migrator.apply(a)
    with pytest.raises(MigrationFailedError) as exc:
        migrator.apply(unknown)
    assert (exc.value.line, exc.value.sqlstate) == (5, "42703")
    assert 'column "missing_column" does not exist' in str(exc.value)
    with pytest.raises(MigrationFailedError) as exc:
        migrator.apply(division)
    assert (exc.value.line, exc.value.sqlstate, exc.value.pg_message) == (3, "22012", "division by zero")
    assert exc.value.statement == "INSERT INTO a\nVALUES (1 / 0);"
    assert tracked_versions(fresh_db) == ["001"]


def test_notices_are_logged(fresh_db: str, tmp_path: Path) -> None:
    (m,) = load_migrations(
        write_files(tmp_path, {"001_n.sql": "DO $$ BEGIN RAISE NOTICE 'hello; from %', 'do'; END $$;"})
    )
    log = Log()
    Migrator(fresh_db, log=log).apply(m)
    assert "001_n.sql: NOTICE: hello; from do" in log


def test_checksum_mismatch(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);\n"})
    (original,) = load_migrations(tmp_path)
    migrator = Migrator(fresh_db)
    migrator.apply(original)

    write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);\nCREATE TABLE sneaky (id int);\n"})
    write_files(tmp_path, {"002_b.sql": "CREATE TABLE b (id int);\n"})
    edited, pending = load_migrations(tmp_path)
    with pytest.raises(ChecksumMismatchError) as exc:
        migrator.check(edited)
    err = exc.value
    assert (err.filename, err.version, err.recorded, err.current) == (
        "001_a.sql",
        "001",
        original.checksum,
        edited.checksum,
    )
    text = str(err)
    for needle in (
        "001_a.sql",
        original.checksum,
        edited.checksum,
        "restore the file",
        "accept the current checksum (a repair",
    ):
        assert needle in text

    with pytest.raises(ChecksumMismatchError):
        migrator.apply(edited)
    with pytest.raises(ChecksumMismatchError):  # checked before anything runs: 002 stays pending
        migrator.apply_all([edited, pending])
    with pytest.raises(ChecksumMismatchError):
        migrator.revert(edited)
    assert not table_exists(fresh_db, "sneaky")
    assert not table_exists(fresh_db, "b")
    assert tracked_versions(fresh_db) == ["001"]
    assert migrator.check(original) is not None


def test_repair_records_the_current_checksum_without_running_anything(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);\n"})
    (original,) = load_migrations(tmp_path)
    migrator = Migrator(fresh_db)
    applied, _ = migrator.apply(original)
    write_files(tmp_path, {"001_a.sql": "-- a comment added later\nCREATE TABLE a (id int);\n"})
    (edited,) = load_migrations(tmp_path)
    log = Log()
    repaired = Migrator(fresh_db, log=log).repair(edited)
    assert repaired.checksum == edited.checksum
    assert (repaired.version, repaired.applied_at, repaired.duration_ms) == (
        applied.version,
        applied.applied_at,
        applied.duration_ms,
    )
    assert log == [f"001_a.sql: repaired: recorded checksum {original.checksum} -> {edited.checksum}"]
    assert migrator.check(edited) == repaired
    assert migrator.apply(edited) == (repaired, True)  # adopted: the CREATE TABLE would fail if re-run
    with pytest.raises(ChecksumMismatchError):
        migrator.check(original)

    write_files(tmp_path, {"002_b.sql": "SELECT 1;"})
    with pytest.raises(MigrationsError, match="not applied"):
        migrator.repair(load_migrations(tmp_path)[1])


def test_a_script_that_sets_role_is_still_recorded_by_the_connecting_user(
    fresh_db: str, tmp_path: Path
) -> None:
    role = "t_owner_" + uuid.uuid4().hex[:8]
    query(fresh_db, f'CREATE ROLE "{role}" NOLOGIN')
    try:
        query(fresh_db, f'GRANT CREATE ON SCHEMA public TO "{role}"')
        files = {"001_owned.sql": f'SET ROLE "{role}";\nCREATE TABLE owned (id int);\n'}
        (m,) = load_migrations(write_files(tmp_path, files))
        record, _ = Migrator(fresh_db).apply(m)
        assert record.applied_by == "postgres"
        assert query(fresh_db, "SELECT tableowner FROM pg_tables WHERE tablename = 'owned'") == [(role,)]
    finally:
        query(fresh_db, f'DROP OWNED BY "{role}"')
        query(fresh_db, f'DROP ROLE "{role}"')


# ---------------------------------------------------------------------------------------------- reverting


def test_revert_runs_the_down_script_and_forgets_the_migration(fresh_db: str, tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "001_a.sql": "CREATE TABLE a (id int);\n",
            "002_b.sql": "CREATE TABLE b (id int);\nINSERT INTO a VALUES (1);\n",
            "002_b.down.sql": "DELETE FROM a;\nDROP TABLE b;\n",
        },
    )
    a, b = load_migrations(tmp_path)
    migrator = Migrator(fresh_db)
    migrator.apply_all([a, b])
    log = Log()
    assert Migrator(fresh_db, log=log).revert(b) is True
    assert not table_exists(fresh_db, "b")
    assert query(fresh_db, "SELECT count(*) FROM a") == [(0,)]
    assert tracked_versions(fresh_db) == ["001"]
    assert log[0] == "002_b.down.sql: reverting 002_b.sql (transactional)"
    assert log[1].startswith("002_b.down.sql: reverted in ")
    assert migrator.revert(b) is False  # not applied any more
    assert migrator.apply(b)[1] is False  # and it can be applied again

    with pytest.raises(MigrationsError, match=r"no down script 001_a\.down\.sql"):
        migrator.revert(a)
    assert tracked_versions(fresh_db) == ["001", "002"]


def test_failing_down_script_changes_nothing(fresh_db: str, tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "001_a.sql": "CREATE TABLE a (id int);\n",
            "001_a.down.sql": "DROP TABLE a;\n\nSELECT no_such_function();\n",
        },
    )
    (a,) = load_migrations(tmp_path)
    migrator = Migrator(fresh_db)
    migrator.apply(a)
    with pytest.raises(MigrationFailedError) as exc:
        migrator.revert(a)
    assert (exc.value.filename, exc.value.line, exc.value.sqlstate) == ("001_a.down.sql", 3, "42883")
    # Worded as a revert: the migration stays applied (not "nothing of it was applied").
    assert "nothing of it ran (its transaction was rolled back): 001_a.sql is still applied" in str(exc.value)
    assert "apply again" not in str(exc.value)
    assert pickle.loads(pickle.dumps(exc.value)).args == exc.value.args
    assert table_exists(fresh_db, "a")
    assert tracked_versions(fresh_db) == ["001"]


def test_a_renamed_or_renumbered_file_is_never_adopted(fresh_db: str, tmp_path: Path) -> None:
    first = write_files(tmp_path / "first", {"001_a.sql": "CREATE TABLE a (id int);\n",
                                       "002_b.sql": "CREATE TABLE b (id int);\n"})
    migrator = Migrator(fresh_db)
    migrator.apply_all(load_migrations(first))
    renamed = write_files(tmp_path / "renamed", {"001_a_renamed.sql": "CREATE TABLE a (id int);\n"})
    with pytest.raises(RenamedMigrationError) as exc:
        migrator.apply(load_migrations(renamed)[0])
    assert "001_a_renamed.sql has version 001, which is applied as 001_a.sql" in str(exc.value)
    assert "Rename it back to 001_a.sql" in str(exc.value) and exc.value.holds_version is None
    swapped = write_files(tmp_path / "swapped", {"001_b.sql": "CREATE TABLE b (id int);\n"})
    with pytest.raises(RenamedMigrationError) as exc:
        migrator.apply(load_migrations(swapped)[0])
    assert "this file holds what was applied as version 002 (002_b.sql)" in str(exc.value)
    assert "renumbered" in str(exc.value)
    assert [r[0] for r in query(fresh_db, "SELECT name FROM schema_migrations ORDER BY version")] == ["a", "b"]


def test_rename_records_the_new_name_without_running_anything(fresh_db: str, tmp_path: Path) -> None:
    (a,) = load_migrations(write_files(tmp_path / "old", {"001_a.sql": "CREATE TABLE a (id int);\n"}))
    migrator = Migrator(fresh_db)
    record, _ = migrator.apply(a)
    (renamed,) = load_migrations(write_files(tmp_path / "new", {"001_a_renamed.sql": "CREATE TABLE a (id int);\n"}))
    after = migrator.rename(renamed)
    assert (after.name, after.checksum, after.applied_at) == ("a_renamed", record.checksum, record.applied_at)
    edited_dir = write_files(tmp_path / "edited", {"001_a_renamed.sql": "CREATE TABLE a (id bigint);\n"})
    (edited,) = load_migrations(edited_dir)
    with pytest.raises(ChecksumMismatchError):
        migrator.rename(edited)


# ------------------------------------------------------------------------------------------ no-transaction


def test_non_transactional_migration_creates_indexes_concurrently(fresh_db: str, tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "001_t.sql": (
                "CREATE TABLE t (x int, y int);\nINSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;\n"
            ),
            "002_t_indexes.sql": (
                "-- 002: indexes built without blocking writes\n"
                "-- migrate:no-transaction\n"
                "CREATE INDEX CONCURRENTLY t_x_idx ON t (x);\n"
                "CREATE INDEX CONCURRENTLY t_y_idx ON t (y);\n"
            ),
            "002_t_indexes.down.sql": (
                "-- migrate:no-transaction\n"
                "DROP INDEX CONCURRENTLY t_x_idx;\n"
                "DROP INDEX CONCURRENTLY t_y_idx;\n"
            ),
        },
    )
    t, indexes = load_migrations(tmp_path)
    assert not indexes.transactional and not indexes.down_transactional
    log = Log()
    migrator = Migrator(fresh_db, log=log)
    migrator.apply_all([t, indexes])
    assert "002_t_indexes.sql: applying (non-transactional)" in log
    valid = query(
        fresh_db,
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 't'::regclass ORDER BY 1",
    )
    assert valid == [("t_x_idx", True), ("t_y_idx", True)]
    assert tracked_versions(fresh_db) == ["001", "002"]
    assert migrator.revert(indexes)
    assert query(fresh_db, "SELECT count(*) FROM pg_index WHERE indrelid = 't'::regclass") == [(0,)]


def test_concurrently_in_a_transactional_file_fails_with_the_fix(fresh_db: str, tmp_path: Path) -> None:
    write_files(tmp_path, {"001_t.sql": "CREATE TABLE t (x int);\nCREATE INDEX CONCURRENTLY t_x_idx ON t (x);\n"})
    (m,) = load_migrations(tmp_path)
    with pytest.raises(MigrationFailedError) as exc:
        Migrator(fresh_db).apply(m)
    assert (exc.value.sqlstate, exc.value.line) == ("25001", 2)
    assert "-- migrate:no-transaction" in str(exc.value)
    assert not table_exists(fresh_db, "t")
    assert tracked_versions(fresh_db) == []


def test_non_transactional_failure_says_which_statements_ran(fresh_db: str, tmp_path: Path) -> None:
    script = (
        "-- migrate:no-transaction\n"
        "CREATE TABLE nt1 (id int);\n"
        "CREATE TABLE nt2 (id int);\n"
        "SELECT * FROM missing_table;\n"
        "CREATE TABLE nt3 (id int);\n"
    )
    (m,) = load_migrations(write_files(tmp_path, {"001_nt.sql": script}))
    with pytest.raises(MigrationFailedError) as exc:
        Migrator(fresh_db).apply(m)
    err = exc.value
    assert (err.line, err.sqlstate, err.transactional, err.completed_lines) == (4, "42P01", False, (2, 3))
    assert "nothing of it was applied" not in str(err)
    assert "2 statement(s) before it already ran" in str(err)
    assert "NOT recorded" in str(err)
    assert table_exists(fresh_db, "nt1") and table_exists(fresh_db, "nt2")
    assert not table_exists(fresh_db, "nt3")
    assert tracked_versions(fresh_db) == []
    assert lock_is_free(fresh_db)


def test_transaction_control_is_refused_before_connecting() -> None:
    m = MigrationFile("001", "x", "001_x.sql", "BEGIN;\nSELECT 1;\nCOMMIT;\n", None, checksum_of("x"), True)
    with pytest.raises(MigrationFileError, match="explicit BEGIN"):
        Migrator("host=192.0.2.1 port=1 connect_timeout=1").apply(m)


# ---------------------------------------------------------------------------------------------- concurrency


def concurrent_migrations(tmp_path: Path) -> list[MigrationFile]:
    """Each records its run in `runs` (primary key: running twice fails) with start and end times."""

    def body(version: str, seconds: float) -> str:
        return (  # test-local constants, not input
            f"INSERT INTO runs VALUES ('{version}', pg_backend_pid(), clock_timestamp(), NULL);\n"  # noqa: S608
            f"SELECT pg_sleep({seconds});\n"
            f"UPDATE runs SET finished = clock_timestamp() WHERE version = '{version}';\n"
        )

    return load_migrations(
        write_files(
            tmp_path,
            {
                "001_runs.sql": (
                    "CREATE TABLE runs (version text PRIMARY KEY, pid int, started timestamptz, "
                    "finished timestamptz);\n" + body("001", 0.3)
                ),
                "002_second.sql": body("002", 0.2),
                "003_no_transaction.sql": "-- migrate:no-transaction\n" + body("003", 0.2),
                "004_fourth.sql": body("004", 0.1),
            },
        )
    )


def run_in_threads(count: int, target: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


def test_concurrent_migrators_never_interleave_nor_apply_twice(fresh_db: str, tmp_path: Path) -> None:
    migrations = concurrent_migrations(tmp_path)

    def apply_each(i: int) -> list[tuple[AppliedMigration, bool]]:
        migrator = Migrator(fresh_db, lock_timeout=60, application_name=f"migrator-{i}")
        return [migrator.apply(m) for m in migrations]  # the way the Pulumi resources call it

    results, errors = run_in_threads(3, apply_each)
    assert errors == []
    assert tracked_versions(fresh_db) == ["001", "002", "003", "004"]
    runs = query(fresh_db, "SELECT version, started, finished FROM runs ORDER BY started")
    assert [r[0] for r in runs] == ["001", "002", "003", "004"]  # each ran exactly once, in order
    for (_, _, finished), (_, next_started, _) in itertools.pairwise(runs):
        assert finished is not None and finished <= next_started  # never interleaved
    for index in range(len(migrations)):  # exactly one migrator ran each one, the others adopted it
        assert sorted(result[index][1] for result in results) == [False, True, True]
    assert lock_is_free(fresh_db)


def test_concurrent_apply_all(fresh_db: str, tmp_path: Path) -> None:
    migrations = concurrent_migrations(tmp_path)
    results, errors = run_in_threads(2, lambda i: Migrator(fresh_db).apply_all(migrations))
    assert errors == []
    assert query(fresh_db, "SELECT count(*), count(DISTINCT version) FROM runs") == [(4, 4)]
    ran = [r.version for result in results for r, adopted in result if not adopted]
    assert sorted(ran) == ["001", "002", "003", "004"]


def test_lock_timeout_names_the_holder(fresh_db: str, tmp_path: Path) -> None:
    (m,) = load_migrations(write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);"}))
    with psycopg.connect(fresh_db, autocommit=True, application_name="test-lock-holder") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        holder_pid = holder.info.backend_pid
        log = Log()
        started = time.monotonic()
        with pytest.raises(LockTimeoutError) as exc:
            Migrator(fresh_db, lock_timeout=0.7, log=log).apply(m)
        waited = time.monotonic() - started
        assert 0.7 <= waited < 5
        text = str(exc.value)
        assert f"pid {holder_pid}" in text
        assert "'test-lock-holder'" in text
        assert "usename 'postgres'" in text
        assert "pg_terminate_backend" in text
        assert [(h["pid"], h["application_name"], h["usename"]) for h in exc.value.holders] == [
            (holder_pid, "test-lock-holder", "postgres")
        ]
        assert any(line.startswith("waiting for the migration lock, held by pid") for line in log)
        assert not table_exists(fresh_db, "a")
    Migrator(fresh_db, lock_timeout=0.7).apply(m)  # the holder is gone: the lock is free again
    assert table_exists(fresh_db, "a")


def test_lock_key_is_the_documented_one(fresh_db: str, tmp_path: Path) -> None:
    import hashlib

    # The CLI's lock, which the program's Migration provider takes too (tests/unit/test_migrator_names.py).
    assert CLI_LOCK_NAME == "customer-insights:schema_migrations"
    key = lock_key(CLI_LOCK_NAME)
    assert int.from_bytes(hashlib.sha256(CLI_LOCK_NAME.encode()).digest()[:8], "big", signed=True) == key
    assert key == -4344450105921422089
    # While a migration runs, pg_locks shows the documented classid/objid.
    (m,) = load_migrations(
        write_files(
            tmp_path,
            {
                "001_see_lock.sql": (
                    "CREATE TABLE seen AS SELECT classid::bigint, objid::bigint, objsubid FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid = pg_backend_pid();"
                )
            },
        )
    )
    Migrator(fresh_db, lock_name=CLI_LOCK_NAME).apply(m)
    assert query(fresh_db, "SELECT classid, objid, objsubid FROM seen") == [(3283446181, 2217032951, 1)]
    assert lock_is_free(fresh_db, key)


def test_migrators_exclude_each_other_only_under_the_same_lock_name(fresh_db: str, tmp_path: Path) -> None:
    (m,) = load_migrations(write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);"}))
    with psycopg.connect(fresh_db, autocommit=True, application_name="other-tool") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key("other-tool:migrations"),))
        with pytest.raises(LockTimeoutError) as exc:
            Migrator(fresh_db, lock_timeout=0.3, lock_name="other-tool:migrations").apply(m)
        assert f"(advisory lock {lock_key('other-tool:migrations')}, 'other-tool:migrations')" in str(exc.value)
        assert "'other-tool'" in str(exc.value)
        assert not table_exists(fresh_db, "a")
        Migrator(fresh_db, lock_timeout=0.3).apply(m)  # another lock name: not held
        assert table_exists(fresh_db, "a")
    assert lock_is_free(fresh_db)


# ---------------------------------------------------------------------------------------------- connections


def test_connections_set_application_name_and_connect_timeout(fresh_db: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(fresh_db)
    params.pop("connect_timeout", None)
    dsn = psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    conn = Migrator(dsn, application_name="custom-name")._connect()
    try:
        assert conn.info.get_parameters()["connect_timeout"] == "10"
        assert conn.execute("SHOW application_name").fetchone() == ("custom-name",)
        assert conn.autocommit
    finally:
        conn.close()
    conn = Migrator(psycopg.conninfo.make_conninfo(dsn, connect_timeout=3))._connect()
    try:
        assert conn.info.get_parameters()["connect_timeout"] == "3"  # the caller's own value is kept
    finally:
        conn.close()


def test_connection_failure_is_a_migrations_error_without_the_password(pg_server: Any) -> None:
    dsn = psycopg.conninfo.make_conninfo(pg_server.dsn("postgres"), password="wrong-secret-password")
    with pytest.raises(MigrationsError) as exc:
        Migrator(dsn).applied()
    assert "cannot connect to the database" in str(exc.value)
    assert "wrong-secret-password" not in str(exc.value)
    assert "wrong-secret-password" not in repr(Migrator(dsn))


def test_migrator_is_picklable(fresh_db: str, tmp_path: Path) -> None:
    (m,) = load_migrations(write_files(tmp_path, {"001_a.sql": "CREATE TABLE a (id int);"}))
    migrator = pickle.loads(pickle.dumps(Migrator(fresh_db, lock_timeout=5, log=print)))
    assert (migrator.conninfo, migrator.lock_timeout, migrator.log) == (fresh_db, 5, print)
    record, adopted = pickle.loads(pickle.dumps(migrator.apply(pickle.loads(pickle.dumps(m)))))
    assert (record.version, adopted) == ("001", False)


# ---------------------------------------------------------------------------------------------- the real sql/


def schema_objects(dsn: str) -> list[tuple[str, str]]:
    return query(
        dsn,
        "SELECT 'relation', c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%' "
        "AND c.relname NOT LIKE 'schema_migrations%%' "
        "UNION ALL SELECT 'function', p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "UNION ALL SELECT 'type', t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND t.typtype IN ('e', 'd', 'c') "
        "AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid) "
        "UNION ALL SELECT 'schema', nspname FROM pg_namespace WHERE nspname NOT IN "
        "('pg_catalog', 'information_schema', 'public', 'pg_toast') AND nspname NOT LIKE 'pg_temp%%' "
        "AND nspname NOT LIKE 'pg_toast_temp%%' "
        "UNION ALL SELECT 'extension', extname FROM pg_extension WHERE extname <> 'plpgsql' "
        "ORDER BY 1, 2",
    )


def test_the_repository_sql_directory_applies_and_reverts_cleanly(fresh_db: str) -> None:
    if not REPO_SQL_DIR.is_dir():
        pytest.skip(f"{REPO_SQL_DIR} does not exist (yet)")
    migrations = load_migrations(REPO_SQL_DIR)
    assert migrations, "sql/ has no migration"
    empty = schema_objects(fresh_db)
    migrator = Migrator(fresh_db)
    results = migrator.apply_all(migrations)
    assert [r.version for r, _ in results] == [m.version for m in migrations]
    assert list(migrator.applied()) == [m.version for m in migrations]
    applied_objects = schema_objects(fresh_db)
    assert applied_objects != empty

    for m in reversed(migrations):
        assert m.down_sql is not None, f"{m.filename} has no down script {m.down_filename}"
        assert migrator.revert(m) is True
    assert migrator.applied() == {}
    assert schema_objects(fresh_db) == empty, "the down scripts left objects behind"

    migrator.apply_all(migrations)  # and it applies again after a full revert
    assert schema_objects(fresh_db) == applied_objects
