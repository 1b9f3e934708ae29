"""infra.migrate.rehearsal and infra.migrate.scratch against a real PostgreSQL: a target database with
the repository's sql/ applied and rows in it, scratch databases on the same server (and one test on a
local container of the repository's image)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from devsupport.local_postgres import LocalPostgres
from infra.migrate import MigrationFailedError, MigrationFile, Migrator, load_migrations
from infra.migrate.rehearsal import Rehearsal, RehearsalError, rehearse
from infra.migrate.scratch import (
    ScratchError,
    existing_server,
    local_container,
    scratch_database,
    sweep_containers,
    sweep_leftovers,
)
from infra.migrate.session import StatementLimits

pytestmark = pytest.mark.integration

REPO_SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
IMAGE = "customer-insights/postgres-cron:15"
CUSTOMERS = 3000
DUPLICATE_EMAIL_GROUPS = 7
NULL_SEGMENTS = 40
ORPHAN_CANDIDATES = 25  # customer_interactions rows whose organization differs from their customer's


class Log(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)


@dataclass(frozen=True)
class Target:
    dsn: str  # superuser, the target database
    name: str
    owner: str
    owner_password: str
    owner_dsn: str


def query(dsn: str, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]  # test-local literal SQL
        return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def target(local_postgres: LocalPostgres) -> Iterator[Target]:
    """A database owned by its own LOGIN role, the repository's migrations applied as that role, rows in
    customers (some duplicate emails, some NULL segments) and customer_interactions."""
    suffix = uuid.uuid4().hex[:8]
    name, owner, password = f"rh_target_{suffix}", f"rh_owner_{suffix}", "owner-" + os.urandom(8).hex()
    admin = local_postgres.address.dsn()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(owner), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
    dsn = local_postgres.address.dsn(name)
    owner_dsn = local_postgres.address.dsn(name, user=owner, password=password)
    Migrator(owner_dsn).apply_all(load_migrations(REPO_SQL_DIR))
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO organizations (name) VALUES ('acme'), ('b')")
        conn.execute(
            """
            INSERT INTO customers (organization_id, external_id, email, segment, first_seen_at, last_seen_at,
                                   interaction_count)
            SELECT (SELECT id FROM organizations WHERE name = 'acme'), 'ext-' || g,
                   CASE WHEN g <= %(dups)s * 2 THEN 'dup' || (g %% %(dups)s) || '@example.com'
                        ELSE 'c' || g || '@example.com' END,
                   CASE WHEN g %% (%(n)s / %(nulls)s) = 0 THEN NULL ELSE 'seg' || (g %% 5) END,
                   now() - interval '1 day', now(), g
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": CUSTOMERS, "dups": DUPLICATE_EMAIL_GROUPS, "nulls": NULL_SEGMENTS},
        )
        conn.execute(
            """
            INSERT INTO customer_interactions (customer_id, organization_id, "timestamp", channel, event_type)
            SELECT c.id,
                   CASE WHEN row_number() OVER (ORDER BY c.external_id) <= %s
                        THEN (SELECT id FROM organizations WHERE name = 'b') ELSE c.organization_id END,
                   now() - interval '1 hour', 'web', 'visit'
            FROM customers c
            """,
            (ORPHAN_CANDIDATES,),
        )
    try:
        yield Target(dsn, name, owner, password, owner_dsn)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(owner)))


def pending(tmp_path: Path, files: dict[str, str]) -> list[MigrationFile]:
    directory = tmp_path / "pending"
    directory.mkdir(parents=True, exist_ok=True)
    for filename, text in files.items():
        (directory / filename).write_text(text, encoding="utf-8")
    return load_migrations(directory)


def run(
    local_postgres: LocalPostgres, target: Target, migrations: list[MigrationFile], *,
    read_timeout_ms: int = 10000, log: Log | None = None,
) -> Rehearsal:
    log = log if log is not None else Log()
    server = existing_server(local_postgres.address.dsn())
    with scratch_database(server, schema_from=target.dsn, owner=target.owner, log=log) as scratch:
        return rehearse(
            migrations, scratch=scratch, run_as=target.owner, target=target.dsn, limits=StatementLimits(),
            read_timeout_ms=read_timeout_ms, log=log,
        )


def scratch_databases(local_postgres: LocalPostgres) -> list[str]:
    rows = query(local_postgres.address.dsn(), "SELECT datname FROM pg_database WHERE datname LIKE 'rehearsal%%'")
    return sorted(r[0] for r in rows)


# ---------------------------------------------------------------------------------------------- data checks


def test_not_null_column_without_default_fails_naming_the_rows(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_add_customer_notes.sql": "-- notes\nALTER TABLE customers ADD COLUMN notes text NOT NULL;\n",
        "011_later.sql": "CREATE TABLE later (id int);\n",
    })
    result = run(local_postgres, target, migrations)

    (st,) = result.migrations[0].statements
    assert st.line == 2
    assert st.error is None  # the scratch copy has no rows: only the check on the target's data sees it
    (check,) = st.checks
    assert (check.check, check.relation, check.status, check.count) == ("rows", "public.customers", "failed", CUSTOMERS)
    assert f"FAILS: {CUSTOMERS:,} rows in public.customers" in st.human()
    assert result.failing_files == 1 and result.failing_statements == 1 and not result.ok
    later = result.migrations[1]
    assert not later.rehearsed and "010_add_customer_notes.sql fails before it" in (later.reason or "")
    assert result.migration("010_add_customer_notes.sql").status == "fails"


def test_not_null_column_with_default_takes_access_exclusive_without_rewrite(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_add_customer_notes.sql": "ALTER TABLE customers ADD COLUMN notes text NOT NULL DEFAULT '';\n",
    })
    result = run(local_postgres, target, migrations)

    (st,) = result.migrations[0].statements
    assert st.error is None and st.checks == () and st.rewrites == () and st.scans == ()
    modes = {(lk.mode, lk.relation) for lk in st.locks}
    assert ("ACCESS EXCLUSIVE", "public.customers") in modes
    assert st.blocking and result.blocking_statements == 1 and result.ok
    (size,) = [s for s in st.sizes if s.relation == "public.customers"]
    assert size.rows == CUSTOMERS and size.heap_bytes and size.heap_bytes > 0
    line = st.human()
    assert line.startswith("line 1: ALTER TABLE customers ADD COLUMN notes text NOT NULL DEFAULT ''")
    assert re.search(rf"ACCESS EXCLUSIVE on public.customers \(~?{CUSTOMERS:,} rows", line), line  # ~: an estimate
    assert "no rewrite" in line and "check: none" in line and "lock_timeout 5s" in line


def test_unique_index_over_duplicates_fails_with_the_number_of_groups(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_unique_email.sql": "CREATE UNIQUE INDEX customers_email_key ON customers (email);\n",
    })
    result = run(local_postgres, target, migrations)

    (st,) = result.migrations[0].statements
    (check,) = st.checks
    assert (check.check, check.status, check.count) == ("unique", "failed", DUPLICATE_EMAIL_GROUPS)
    assert [s.reason for s in st.scans] == ["index customers_email_key built"]
    assert ("SHARE", "public.customers") in {(lk.mode, lk.relation) for lk in st.locks}
    assert "@example.com" not in result.to_json()  # counts, never values
    assert not result.ok


def test_constraints_on_the_data_set_not_null_check_and_foreign_key(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_constraints.sql": """\
ALTER TABLE customers ALTER COLUMN segment SET NOT NULL;
ALTER TABLE customers ADD CONSTRAINT customers_small_count CHECK (interaction_count < 100);
ALTER TABLE customers ADD CONSTRAINT customers_org_id_key UNIQUE (organization_id, id);
ALTER TABLE customer_interactions ADD CONSTRAINT ci_customer_org_fkey
    FOREIGN KEY (organization_id, customer_id) REFERENCES customers (organization_id, id) NOT VALID;
ALTER TABLE customer_interactions VALIDATE CONSTRAINT ci_customer_org_fkey;
""",
    })
    result = run(local_postgres, target, migrations)

    statements = result.migrations[0].statements
    assert [st.error for st in statements][:2] == [None, None]
    by_line = {st.line: st for st in statements}
    assert [(c.check, c.subject, c.status, c.count) for c in by_line[1].checks] == [
        ("not_null", "segment", "failed", NULL_SEGMENTS)
    ]
    assert by_line[1].scans[0].reason == "SET NOT NULL on segment"
    assert [(c.check, c.status, c.count) for c in by_line[2].checks] == [("check", "failed", CUSTOMERS - 99)]
    assert [(c.check, c.status, c.count) for c in by_line[3].checks] == [("unique", "passed", 0)]
    assert by_line[4].checks == ()  # NOT VALID: nothing is checked when it is added
    assert [(c.check, c.status, c.count) for c in by_line[6].checks] == [("foreign_key", "failed", ORPHAN_CANDIDATES)]
    assert by_line[6].scans[0].reason == "FOREIGN KEY ci_customer_org_fkey validated"
    assert ("SHARE UPDATE EXCLUSIVE", "public.customer_interactions") in {
        (lk.mode, lk.relation) for lk in by_line[6].locks
    }
    assert result.failing_statements == 3


def test_a_check_after_rows_were_written_is_unknown(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_backfill_then_not_null.sql": """\
UPDATE customers SET segment = 'none' WHERE segment IS NULL;
ALTER TABLE customers ALTER COLUMN segment SET NOT NULL;
""",
    })
    result = run(local_postgres, target, migrations)

    write, alter = result.migrations[0].statements
    assert ("ROW EXCLUSIVE", "public.customers") in {(lk.mode, lk.relation) for lk in write.locks}
    (check,) = alter.checks
    assert check.status == "unknown" and "010_backfill_then_not_null.sql line 1" in (check.reason or "")
    assert result.unknown_checks == 1 and result.ok


def test_a_check_that_times_out_is_unknown_not_passed(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_expensive_check.sql": (
            "ALTER TABLE customers ADD CONSTRAINT customers_expensive\n"
            "    CHECK (length(repeat(md5(external_id), 20000)) > 0);\n"
        ),
    })
    result = run(local_postgres, target, migrations, read_timeout_ms=100)

    (st,) = result.migrations[0].statements
    (check,) = st.checks
    assert check.status == "unknown" and check.count is None
    assert "timed out (100 ms statement_timeout)" in (check.reason or "")
    assert result.unknown_checks == 1 and result.failing_files == 0


def test_a_new_not_null_column_fails_even_when_counting_the_rows_times_out(local_postgres, target, tmp_path) -> None:
    big = f"rh_big_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(target.owner_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} AS SELECT g AS id FROM generate_series(1, 3000000) AS g").format(
            sql.Identifier(big)))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(big)))
    try:
        migrations = pending(tmp_path, {"010_big.sql": f"ALTER TABLE {big} ADD COLUMN notes text NOT NULL;\n"})
        result = run(local_postgres, target, migrations, read_timeout_ms=20)

        (check,) = result.migrations[0].statements[0].checks
        assert check.status == "failed" and check.count is not None and check.count > 2_000_000
        assert "counting gave up" in (check.reason or "") and "timed out" in (check.reason or "")
        assert check.describe().startswith(f"FAILS: ~{check.count:,} rows in public.{big}")
        assert not result.ok
    finally:
        with psycopg.connect(target.owner_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(big)))


# ---------------------------------------------------------------------------------------------- rewrites, locks


def test_varchar_to_text_rewrites_nothing(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_channel_text.sql": "ALTER TABLE customer_interactions ALTER COLUMN channel TYPE text;\n",
    })
    result = run(local_postgres, target, migrations)

    (st,) = result.migrations[0].statements
    assert st.error is None and st.rewrites == () and st.checks == ()
    assert ("ACCESS EXCLUSIVE", "public.customer_interactions") in {(lk.mode, lk.relation) for lk in st.locks}
    # No rewrite, but PostgreSQL checks the column's CHECK constraint again, reading the whole table.
    assert [s.reason for s in st.scans] == ["CHECK customer_interactions_channel_check checked again (re-created)"]
    assert "no rewrite" in st.human() and "scans public.customer_interactions" in st.human()
    assert "scan" in st.estimate_basis


def test_varchar_to_text_without_a_check_on_the_column_is_catalog_only(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_event_type_text.sql": "ALTER TABLE customer_interactions ALTER COLUMN event_type TYPE text;\n",
    })
    result = run(local_postgres, target, migrations)

    (st,) = result.migrations[0].statements
    assert st.error is None and st.rewrites == () and st.scans == () and st.checks == ()
    assert st.estimate_basis.startswith("catalog only")


def test_a_rewriting_type_change_reports_the_rewrite_and_an_estimate(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_count_bigint.sql": "ALTER TABLE customers ALTER COLUMN interaction_count TYPE bigint;\n",
    })
    result = run(local_postgres, target, migrations)

    (st,) = result.migrations[0].statements
    tables = [r for r in st.rewrites if r.kind == "table"]
    assert [(r.relation, r.truncate, r.on_target) for r in tables] == [("public.customers", False, True)]
    assert st.blocking
    assert st.estimate_ms is not None and st.estimate_ms > 0
    assert "rewrite" in st.estimate_basis and "MB/s" in st.estimate_basis
    assert result.calibration is not None and result.calibration.rewrite_mb_s > 0
    assert "REWRITES public.customers" in st.human()


def test_a_lock_held_since_an_earlier_statement_is_shown_once_as_blocking(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_two.sql": (
            "ALTER TABLE customers ADD COLUMN notes text NOT NULL DEFAULT '';\n"
            "CREATE UNIQUE INDEX customers_external_id_key ON customers (external_id);\n"
        ),
    })
    result = run(local_postgres, target, migrations)

    first, second = result.migrations[0].statements
    assert [(lk.mode, lk.held_since) for lk in first.locks if lk.relation == "public.customers"] == [
        ("ACCESS EXCLUSIVE", None)
    ]
    assert [(lk.mode, lk.held_since) for lk in second.locks if lk.relation == "public.customers"] == [
        ("SHARE", None), ("ACCESS EXCLUSIVE", 1)  # the index build's own lock, and the stronger one it holds
    ]
    assert re.search(r"ACCESS EXCLUSIVE on public.customers \(~?3,000 rows", second.human()), second.human()
    assert "(held since line 1)" in second.human()
    assert [(c.check, c.status) for c in second.checks] == [("unique", "passed")]
    assert first.blocking and not second.blocking and result.blocking_statements == 1


def test_truncate_is_reported_as_such(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {"010_truncate.sql": "TRUNCATE refresh_token_cleanup_runs;\n"})
    result = run(local_postgres, target, migrations)

    (st,) = result.migrations[0].statements
    assert [(r.relation, r.truncate) for r in st.rewrites if r.kind == "table"] == [
        ("public.refresh_token_cleanup_runs", True)
    ]
    assert "TRUNCATE of public.refresh_token_cleanup_runs" in st.human()


def test_create_index_concurrently_in_a_no_transaction_file(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_index_segment_email.sql": (
            "-- migrate:no-transaction\n"
            "SET lock_timeout = '2s';\n"
            "CREATE INDEX CONCURRENTLY customers_segment_email_idx ON customers (segment, email);\n"
        ),
    })
    result = run(local_postgres, target, migrations)

    setting, build = result.migrations[0].statements
    assert setting.locks == () and setting.lock_timeout == "2s"
    assert build.error is None and build.autocommit
    assert {(lk.mode, lk.relation) for lk in build.locks} == {("SHARE UPDATE EXCLUSIVE", "public.customers")}
    assert not build.blocking
    assert [(s.reason, s.kind) for s in build.scans] == [("index customers_segment_email_idx built", "index")]
    assert build.lock_timeout == "2s" and build.estimate_ms is not None
    assert result.ok


def test_later_files_see_earlier_ones_and_new_tables_count_as_new(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_create_tags.sql": "CREATE TABLE tags (id int PRIMARY KEY, name text);\nCREATE INDEX ON tags (name);\n",
        "011_tags_not_null.sql": "ALTER TABLE tags ALTER COLUMN name SET NOT NULL;\n",
    })
    result = run(local_postgres, target, migrations)

    first, second = result.migrations
    assert all(st.locks == () for st in first.statements)  # created by the file itself
    (st,) = second.statements
    assert [(lk.mode, lk.relation, lk.on_target) for lk in st.locks] == [("ACCESS EXCLUSIVE", "public.tags", False)]
    assert not st.blocking and st.checks == () and st.sizes == ()
    assert result.ok and result.blocking_statements == 0


# ---------------------------------------------------------------------------------------------- failures


def test_syntax_error_and_missing_table_fail_with_file_and_line(local_postgres, target, tmp_path) -> None:
    syntax = pending(tmp_path / "a", {
        "010_broken.sql": "-- header\nCREATE TABLE t1 (id int);\nCREATE TABLE t2 (\n    id int,,\n    b int\n);\n",
    })
    result = run(local_postgres, target, syntax)
    error = result.migrations[0].error
    assert error is not None
    assert (error.filename, error.line, error.sqlstate) == ("010_broken.sql", 4, "42601")
    assert "syntax error" in error.message
    assert "010_broken.sql, line 4: syntax error" in error.describe()
    assert "FAILS: syntax error" in result.migrations[0].statements[-1].human()
    up_error = error.to_error()
    assert isinstance(up_error, MigrationFailedError)
    assert str(up_error).startswith("010_broken.sql, line 4: syntax error")

    missing = pending(tmp_path / "b", {
        "010_missing.sql": "-- header\n\nALTER TABLE no_such_table ADD COLUMN x int;\n",
        "011_next.sql": "SELECT 1;\n",
    })
    result = run(local_postgres, target, missing)
    error = result.migrations[0].error
    assert error is not None and (error.line, error.sqlstate) == (3, "42P01")
    assert 'relation "no_such_table" does not exist' in error.message
    assert not result.migrations[1].rehearsed
    assert result.failing_files == 1


def test_a_privilege_the_owner_lacks_fails_as_in_up(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {"010_role.sql": "CREATE ROLE rehearsal_should_not_exist;\n"})
    result = run(local_postgres, target, migrations)

    error = result.migrations[0].error
    assert error is not None and error.sqlstate == "42501"
    roles = "SELECT 1 FROM pg_roles WHERE rolname = 'rehearsal_should_not_exist'"
    assert not query(local_postgres.address.dsn(), roles)


def test_concurrently_in_a_transactional_file_fails_naming_the_marker(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_index.sql": "CREATE INDEX CONCURRENTLY customers_segment_email_idx ON customers (segment, email);\n",
    })
    result = run(local_postgres, target, migrations)

    error = result.migrations[0].error
    assert error is not None and (error.sqlstate, error.line) == ("25001", 1)
    assert "-- migrate:no-transaction" in (error.hint or "")


def test_an_owner_role_missing_on_the_scratch_copy_is_a_rehearsal_error(local_postgres, target, tmp_path) -> None:
    server = existing_server(local_postgres.address.dsn())
    with scratch_database(server, schema_from=target.dsn, owner=target.owner) as scratch, pytest.raises(
        RehearsalError, match="the rehearsal failed on the scratch database"
    ) as raised:
        rehearse(
            pending(tmp_path, {"010_a.sql": "SELECT 1;\n"}), scratch=scratch, run_as="rh_no_such_role",
            target=target.dsn, limits=StatementLimits(),
        )
    assert local_postgres.password not in str(raised.value)


# ---------------------------------------------------------------------------------------------- the target is only read


def catalog_checksum(dsn: str) -> str:
    rows = query(
        dsn,
        """
        SELECT 'class', c.oid::text, c.relname, c.relfilenode::text, c.relkind::text, c.relnatts::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
        UNION ALL SELECT 'attribute', a.attrelid::text, a.attname, a.atttypid::text, a.attnotnull::text,
                         a.atthasdef::text
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
        UNION ALL SELECT 'constraint', oid::text, conname, contype::text, convalidated::text,
                         pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL SELECT 'index', i.indexrelid::text, i.indisvalid::text, i.indisunique::text,
                         pg_get_indexdef(i.indexrelid), ''
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'public'::regnamespace
        ORDER BY 1, 2, 3
        """,
    )
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def data_checksum(dsn: str) -> str:
    rows = query(
        dsn,
        "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY version)) FROM schema_migrations t), "
        "(SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c), "
        "(SELECT md5(string_agg(i::text, ',' ORDER BY id)) FROM customer_interactions i)",
    )
    return repr(rows)


# pg_dump prepares some of its catalog reads (PREPARE name AS SELECT ...; EXECUTE name(...)).
_READ_ONLY = re.compile(
    r"^(SELECT|SET|SHOW|BEGIN|COMMIT|ROLLBACK|LOCK TABLE [^;]* IN ACCESS SHARE MODE|"
    r"PREPARE \w+(\([^)]*\))? AS\s+SELECT|EXECUTE \w+)\b",
    re.IGNORECASE,
)


def logged_statements(log: str) -> list[str]:
    """The statements of the server log's entries (an entry continues on the lines without a timestamp)."""
    entries = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log)
    found = []
    for entry in entries:
        m = re.search(r"LOG:  (?:statement|execute [^:]*): (.*)", entry, re.DOTALL)
        if m:
            found.append(m[1].strip())
    return found


def test_the_target_is_never_written_and_its_sessions_only_read(local_postgres, target, tmp_path) -> None:
    migrations = pending(tmp_path, {
        "010_everything.sql": """\
ALTER TABLE customers ADD COLUMN notes text NOT NULL DEFAULT '';
ALTER TABLE customers ADD CONSTRAINT customers_small_count CHECK (interaction_count < 100000);
CREATE UNIQUE INDEX customers_external_id_key ON customers (external_id);
ALTER TABLE customer_interactions ALTER COLUMN channel TYPE text;
INSERT INTO organizations (name) VALUES ('rehearsed');
DELETE FROM customer_interactions;
""",
        "011_index.sql": (
            "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY ci_event_idx ON customer_interactions (event_type);\n"
        ),
    })
    catalog_before, data_before = catalog_checksum(target.dsn), data_checksum(target.dsn)
    admin = local_postgres.address.dsn()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(sql.Identifier(target.name)))
    try:
        offset = os.path.getsize(local_postgres.logfile)
        result = run(local_postgres, target, migrations)
        time.sleep(0.3)  # the server writes its log asynchronously
        with open(local_postgres.logfile, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            log = f.read()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET log_statement").format(sql.Identifier(target.name)))

    assert [m.status for m in result.migrations] == ["passes", "passes"]
    assert catalog_checksum(target.dsn) == catalog_before
    assert data_checksum(target.dsn) == data_before
    statements = logged_statements(log)
    assert len(statements) > 20  # pg_dump's catalog reads and the rehearsal's data reads were logged
    writes = [s for s in statements if not _READ_ONLY.match(s)]
    assert writes == [], writes
    assert any("count(*)" in s and "HAVING" in s for s in statements)  # the duplicate check ran on the target
    assert any("default_transaction_read_only" in line or "READ ONLY" in line for line in statements)


# ---------------------------------------------------------------------------------------------- scratch databases


def test_scratch_database_is_dropped_after_success_and_after_failure(local_postgres, target, tmp_path) -> None:
    before = scratch_databases(local_postgres)
    server = existing_server(local_postgres.address.dsn())
    with scratch_database(server, schema_from=target.dsn, owner=target.owner) as scratch:
        name = query(scratch, "SELECT current_database()")[0][0]
        assert name.startswith("rehearsal_")
        assert query(scratch, "SELECT count(*) FROM customers") == [(0,)]  # the schema, not the rows
        assert query(scratch, "SELECT relowner::regrole::text FROM pg_class WHERE relname = 'customers'") == [
            (target.owner,)
        ]
    assert scratch_databases(local_postgres) == before

    with pytest.raises(RuntimeError, match="boom"), scratch_database(server, schema_from=None, owner=target.owner):
        raise RuntimeError("boom")
    assert scratch_databases(local_postgres) == before

    result = run(local_postgres, target, pending(tmp_path, {"010_bad.sql": "SELEC 1;\n"}))
    assert result.failing_files == 1
    assert scratch_databases(local_postgres) == before


def test_empty_scratch_database_for_a_first_preview(local_postgres, tmp_path) -> None:
    role = f"rh_first_{uuid.uuid4().hex[:8]}"
    server = existing_server(local_postgres.address.dsn())
    log = Log()
    try:
        with scratch_database(server, schema_from=None, owner=role, roles=[f"{role}_app"], log=log) as scratch:
            owner = "SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()"
            assert query(scratch, owner) == [(role,)]
            result = rehearse(
                load_migrations(REPO_SQL_DIR), scratch=scratch, run_as=role, target=None,
                limits=StatementLimits(), log=log,
            )
        assert result.ok and not result.target_read
        assert len(result.migrations) == len(load_migrations(REPO_SQL_DIR))
        assert result.blocking_statements == 0  # every table is new
        assert "no target database yet" in (result.target_note or "")
        assert query(local_postgres.address.dsn(), "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)) == [
            (False,)
        ]
    finally:
        with psycopg.connect(local_postgres.address.dsn(), autocommit=True) as conn:
            for name in (role, f"{role}_app"):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_leftover_scratch_databases_older_than_an_hour_are_swept(local_postgres) -> None:
    old = f"rehearsal_{int(time.time()) - 7200}_deadbeef"
    recent = f"rehearsal_{int(time.time()) - 60}_cafef00d"
    admin = local_postgres.address.dsn()
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in (old, recent):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dropped = sweep_leftovers(existing_server(admin))
        assert dropped == [old]
        assert old not in scratch_databases(local_postgres) and recent in scratch_databases(local_postgres)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in (old, recent):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def test_no_password_in_logs_results_or_errors(local_postgres, target, tmp_path) -> None:
    log = Log()
    result = run(local_postgres, target, pending(tmp_path, {
        "010_a.sql": "ALTER TABLE customers ADD COLUMN notes text NOT NULL;\n",
    }), log=log)
    text = "\n".join([*log, *result.lines(), result.to_json()])
    for secret in (local_postgres.password, target.owner_password):
        assert secret not in text

    wrong = "wrong-" + os.urandom(6).hex()
    bad_target = local_postgres.address.dsn(target.name, password=wrong)
    server = existing_server(local_postgres.address.dsn())
    with pytest.raises(ScratchError) as raised, scratch_database(server, schema_from=bad_target, owner=target.owner):
        pass
    message = str(raised.value)
    assert "password authentication failed" in message
    assert wrong not in message and local_postgres.password not in message

    with scratch_database(server, schema_from=target.dsn, owner=target.owner) as scratch:
        unread = rehearse(
            pending(tmp_path / "c", {"010_b.sql": "ALTER TABLE organizations ALTER COLUMN name TYPE text;\n"}),
            scratch=scratch, run_as=target.owner, target=bad_target, limits=StatementLimits(), log=log,
        )
    assert not unread.target_read and "cannot connect to the target" in (unread.target_note or "")
    assert wrong not in unread.to_json() and all(wrong not in line for line in log)


# ---------------------------------------------------------------------------------------------- local container


def test_local_container_of_the_repository_image(local_postgres, target, tmp_path) -> None:
    image = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True, check=False)
    assert image.returncode == 0, f"{IMAGE} is missing: bash bootstrap/postgres-image/build.sh builds it"
    log = Log()
    migrations = pending(tmp_path, {
        "010_add_customer_notes.sql": "ALTER TABLE customers ADD COLUMN notes text NOT NULL;\n",
    })
    with local_container(IMAGE, log=log) as server:
        assert local_postgres.password not in repr(server)
        with scratch_database(server, schema_from=target.dsn, owner=target.owner, log=log) as scratch:
            roles = query(scratch, "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = %s", (target.owner,))
            assert roles == [(target.owner, False)]  # created NOLOGIN on the scratch server
            assert query(scratch, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'") == [(0,)]
            result = rehearse(
                migrations, scratch=scratch, run_as=target.owner, target=target.dsn, limits=StatementLimits(),
                log=log, scratch_description=server.description,
            )
        name = next(line.split()[3] for line in log if "container" in line and "started" in line)
    (check,) = result.migrations[0].statements[0].checks
    assert (check.status, check.count) == ("failed", CUSTOMERS)
    assert result.calibration is not None and "container" in result.calibration.server
    ps = subprocess.run(["docker", "ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}"],
                        capture_output=True, text=True, check=True)
    assert ps.stdout.strip() == ""
    for line in log:
        assert local_postgres.password not in line and target.owner_password not in line


def test_leftover_scratch_containers_older_than_an_hour_are_removed() -> None:
    old = f"rehearsal-{int(time.time()) - 7200}-test"
    started = subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", old, "--label", f"infra.migrate.scratch={int(time.time()) - 7200}",
         IMAGE, "sleep", "300"],
        capture_output=True, text=True, check=False,
    )
    assert started.returncode == 0, started.stderr
    try:
        assert old in sweep_containers()
        ps = subprocess.run(["docker", "ps", "-a", "--filter", f"name={old}", "--format", "{{.Names}}"],
                            capture_output=True, text=True, check=True)
        assert ps.stdout.strip() == ""
    finally:
        subprocess.run(["docker", "rm", "-f", old], capture_output=True, check=False)
