"""Migrations meeting a blocker on a real PostgreSQL: lock timeout, retries with a growing wait, the
blocker named, INVALID leftovers of CREATE INDEX CONCURRENTLY dropped, the statement timeout and its
exemptions (infra.migrate.session, infra.migrate.runner)."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from infra.migrate import MigrationBlockedError, MigrationFailedError, Migrator, StatementLimits, load_migrations

pytestmark = pytest.mark.integration

# Seen in the blocker's query text only: it must never reach a log line or an error.
SECRET = "s3cr3t-value-of-the-blocker"
FAST = StatementLimits(lock_timeout_ms=200, lock_retries=2, retry_delay_ms=300)


def one(dsn: str, text: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(text).fetchone()  # type: ignore[arg-type]  # test-local literal SQL
    return row[0] if row else None


def migrations(tmp_path: Path, files: dict[str, str]) -> list[Any]:
    directory = tmp_path / "sql"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return load_migrations(directory)


class Log(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)

    def having(self, fragment: str) -> list[str]:
        return [line for line in self if fragment in line]


@pytest.fixture
def db(fresh_db: str) -> str:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, email text)")
        conn.execute("INSERT INTO customers SELECT g, 'c' || g || '@example.com' FROM generate_series(1, 200) g")
    return fresh_db


@pytest.fixture
def blocker(db: str) -> Iterator[psycopg.Connection[Any]]:
    """A session of another application, idle in a transaction that read `customers` (ACCESS SHARE:
    it blocks any ALTER TABLE customers, and every query queued behind that ALTER)."""
    conn = psycopg.connect(db, application_name="report-job")
    conn.execute("SELECT id, %s::text FROM customers LIMIT 1", (SECRET,))
    yield conn
    conn.close()


def sleeps_then(action: Callable[[int], None]) -> tuple[list[float], Callable[[float], None]]:
    """A sleep for the Migrator that records each wait and calls `action(n)` at the n-th (1-based)."""
    import time

    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        action(len(waits))
        time.sleep(seconds)

    return waits, sleep


def test_every_statement_gets_the_lock_timeout_and_a_files_own_set_wins(db, tmp_path):
    files = migrations(tmp_path, {
        "001_default.sql": "CREATE TABLE seen_default AS SELECT current_setting('lock_timeout') AS v;\n",
        "002_own.sql": "SET LOCAL lock_timeout = '1s';\n"
                       "CREATE TABLE seen_own AS SELECT current_setting('lock_timeout') AS v;\n",
        "003_none.sql": "-- migrate:no-transaction\n"
                        "CREATE TABLE seen_autocommit AS SELECT current_setting('lock_timeout') AS v;\n",
    })
    Migrator(db, limits=StatementLimits(lock_timeout_ms=2500)).apply_all(files)
    assert one(db, "SELECT v FROM seen_default") == "2500ms"
    assert one(db, "SELECT v FROM seen_own") == "1s"
    assert one(db, "SELECT v FROM seen_autocommit") == "2500ms"


def test_blocked_transactional_file_is_retried_with_growing_waits_logs_the_blocker_and_succeeds(
        db, blocker, tmp_path):
    files = migrations(tmp_path, {"001_alter.sql": "CREATE TABLE side (x int);\n"
                                                   "ALTER TABLE customers ADD COLUMN segment text;\n"})
    blocker_pid = blocker.info.backend_pid
    waits, sleep = sleeps_then(lambda n: blocker.commit() if n == 2 else None)
    log = Log()
    limits = StatementLimits(lock_timeout_ms=200, lock_retries=3, retry_delay_ms=250)

    record, adopted = Migrator(db, log=log, limits=limits, sleep=sleep).apply(files[0])

    assert not adopted and record.version == "001"
    assert waits == [0.25, 0.5]  # doubling; the blocker ended during the second wait
    assert one(db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'segment'") == 1
    lines = log.having("canceling statement due to lock timeout")
    assert [("attempt 1 of 4" in line, "attempt 2 of 4" in line) for line in lines] == [(True, False), (False, True)]
    for line in lines:
        assert "001_alter.sql, line 2" in line
        assert f"pid {blocker_pid} (application_name 'report-job'" in line, line
        assert "state 'idle in transaction'" in line and "transaction open for" in line, line
        assert "its transaction was rolled back" in line and "trying again in" in line
    assert not any(SECRET in line for line in log)


def test_blocked_past_every_retry_fails_naming_the_blocker_nothing_stays_and_the_next_apply_runs_it(
        db, blocker, tmp_path):
    files = migrations(tmp_path, {"001_alter.sql": "CREATE TABLE side (x int);\n"
                                                   "ALTER TABLE customers ADD COLUMN segment text;\n"})
    waits, sleep = sleeps_then(lambda n: None)
    log = Log()

    with pytest.raises(MigrationBlockedError) as failure:
        Migrator(db, log=log, limits=FAST, sleep=sleep).apply(files[0])

    error = failure.value
    assert waits == [0.3, 0.6] and error.attempts == 3 and error.sqlstate == "55P03"
    message = str(error)
    assert "001_alter.sql, line 2: canceling statement due to lock timeout" in message
    assert "gave up after 3 attempt(s)" in message
    assert f"pid {blocker.info.backend_pid} (application_name 'report-job'" in message
    assert "Nothing of the file stays" in message and "the migration is NOT recorded" in message
    assert "pg_terminate_backend" in message and SECRET not in message
    assert len(log.having("canceling statement due to lock timeout")) == 2  # the waits; the last is the error
    again = pickle.loads(pickle.dumps(error))  # the provider host pickles errors
    assert isinstance(again, MigrationBlockedError) and str(again) == message
    assert "and run" in str(error.with_fix("allow a longer wait: raise X and run"))
    assert one(db, "SELECT to_regclass('side') IS NULL")
    assert one(db, "SELECT count(*) FROM schema_migrations") == 0

    blocker.rollback()  # the blocker ends: the next apply runs the whole file
    Migrator(db, limits=FAST).apply(files[0])
    assert one(db, "SELECT to_regclass('side') IS NOT NULL")
    assert one(db, "SELECT count(*) FROM schema_migrations") == 1


def test_blocked_no_transaction_file_keeps_what_ran_and_resumes_at_the_blocked_statement(db, blocker, tmp_path):
    files = migrations(tmp_path, {"001_steps.sql": "-- migrate:no-transaction\n"
                                                   "CREATE TABLE side (x int);\n"
                                                   "ALTER TABLE customers ADD COLUMN segment text;\n"
                                                   "CREATE TABLE after_it (x int);\n"})
    waits, sleep = sleeps_then(lambda n: blocker.commit())
    log = Log()

    Migrator(db, log=log, limits=FAST, sleep=sleep).apply(files[0])  # `side` is not created twice

    assert waits == [0.3]
    (line,) = log.having("attempt 1 of 3")
    assert "001_steps.sql, line 3" in line
    assert "1 statement(s) before it ran and stay; the next attempt starts at this statement" in line
    assert one(db, "SELECT to_regclass('after_it') IS NOT NULL")


def test_failed_concurrent_index_build_leaves_an_invalid_index_that_is_dropped_before_the_retry(db, tmp_path):
    files = migrations(tmp_path, {"001_index.sql": "-- migrate:no-transaction\n"
                                                   "CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_email_idx "
                                                   "ON customers (email);\n"})
    writer = psycopg.connect(db, application_name="app-writer")  # an open write: the build waits for it
    writer.execute("INSERT INTO customers VALUES (1000, 'late@example.com')")
    seen: list[Any] = []

    def at_wait(n: int) -> None:
        seen.append(one(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'customers_email_idx'::regclass"))
        writer.commit()

    _, sleep = sleeps_then(at_wait)
    log = Log()
    try:
        Migrator(db, log=log, limits=FAST, sleep=sleep).apply(files[0])
    finally:
        writer.close()

    assert seen == [False]  # the failed build's leftover, INVALID, when the runner waited
    assert log.having("index public.customers_email_idx is INVALID (left by a failed CREATE INDEX CONCURRENTLY)")
    assert log.having("dropped the INVALID index public.customers_email_idx")
    # IF NOT EXISTS alone would have kept the invalid one: the index is built again, and valid.
    assert one(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'customers_email_idx'::regclass") is True
    assert one(db, "SELECT count(*) FROM pg_indexes WHERE tablename = 'customers'") == 2  # pkey + this one


def test_invalid_index_left_after_the_last_attempt_is_dropped_by_the_next_apply(db, tmp_path):
    files = migrations(tmp_path, {"001_index.sql": "-- migrate:no-transaction\n"
                                                   "CREATE INDEX CONCURRENTLY customers_email_idx "
                                                   "ON customers (email);\n"})
    writer = psycopg.connect(db, application_name="app-writer")
    writer.execute("INSERT INTO customers VALUES (1000, 'late@example.com')")
    limits = StatementLimits(lock_timeout_ms=200, lock_retries=1, retry_delay_ms=100)
    try:
        with pytest.raises(MigrationBlockedError) as failure:
            Migrator(db, limits=limits).apply(files[0])
        assert "application_name 'app-writer'" in str(failure.value)
    finally:
        writer.rollback()
        writer.close()
    assert one(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'customers_email_idx'::regclass") is False

    log = Log()
    Migrator(db, log=log, limits=limits).apply(files[0])  # without the drop: "already exists"
    assert log.having("dropped the INVALID index public.customers_email_idx")
    assert one(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'customers_email_idx'::regclass") is True


SLOW_FUNCTION = (
    "CREATE FUNCTION slow_id(int) RETURNS int IMMUTABLE LANGUAGE sql "
    "AS 'SELECT $1 FROM pg_sleep(0.01)';\n"
)


def test_statement_timeout_applies_except_to_concurrent_index_builds_and_validate_constraint(db, tmp_path):
    limits = StatementLimits(lock_timeout_ms=2000, statement_timeout_ms=300)
    files = migrations(tmp_path, {
        "001_fn.sql": SLOW_FUNCTION,
        # 200 rows x 10 ms: each of these scans takes about 2 s, far past the 300 ms limit.
        "002_validate.sql": "ALTER TABLE customers ADD CONSTRAINT customers_id_check "
                            "CHECK (slow_id(id) > 0) NOT VALID;\n"
                            "ALTER TABLE customers VALIDATE CONSTRAINT customers_id_check;\n"
                            "CREATE TABLE seen_after_validate AS SELECT current_setting('statement_timeout') AS v;\n",
        "003_index.sql": "-- migrate:no-transaction\n"
                         "CREATE INDEX CONCURRENTLY customers_slow_idx ON customers (slow_id(id));\n"
                         "CREATE TABLE seen_after_index AS SELECT current_setting('statement_timeout') AS v;\n",
    })
    Migrator(db, limits=limits).apply_all(files)
    assert one(db, "SELECT convalidated FROM pg_constraint WHERE conname = 'customers_id_check'") is True
    assert one(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'customers_slow_idx'::regclass") is True
    assert one(db, "SELECT v FROM seen_after_validate") == "300ms"  # the limit is back after the exempt one
    assert one(db, "SELECT v FROM seen_after_index") == "300ms"

    slow = migrations(tmp_path, {"004_backfill.sql": "UPDATE customers SET email = email WHERE slow_id(id) > 0;\n"})
    with pytest.raises(MigrationFailedError) as failure:
        Migrator(db, limits=limits).apply(slow[-1])
    assert failure.value.sqlstate == "57014"  # query_canceled: the statement timeout holds for the others
    assert "canceling statement due to statement timeout" in str(failure.value)


def test_no_statement_timeout_by_default_and_none_keeps_the_servers_setting(db, tmp_path):
    files = migrations(tmp_path, {"001_seen.sql": "CREATE TABLE seen AS "
                                                  "SELECT current_setting('statement_timeout') v;\n"})
    with psycopg.connect(db, autocommit=True) as conn:  # the test's own database: dropped after it
        conn.execute(sql.SQL("ALTER DATABASE {} SET statement_timeout = '42s'").format(
            sql.Identifier(one(db, "SELECT current_database()"))))
    Migrator(db).apply(files[0])
    assert one(db, "SELECT v FROM seen") == "42s"


def test_a_blocker_of_another_role_is_named_and_its_hidden_state_said_so(db, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    owner, other = f"own_{suffix}", f"app_{suffix}"
    with psycopg.connect(db, autocommit=True) as conn:
        for role in (owner, other):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER TABLE customers OWNER TO {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT SELECT ON customers TO {}").format(sql.Identifier(other)))
    as_owner = psycopg.conninfo.make_conninfo(db, user=owner, password="pw")
    files = migrations(tmp_path, {"001_alter.sql": "ALTER TABLE customers ADD COLUMN segment text;\n"})
    app = psycopg.connect(psycopg.conninfo.make_conninfo(db, user=other, password="pw"), application_name="app-1")
    try:
        app.execute("SELECT id FROM customers LIMIT 1")
        with pytest.raises(MigrationBlockedError) as failure:
            Migrator(as_owner, limits=StatementLimits(lock_timeout_ms=300, lock_retries=0)).apply(files[0])
    finally:
        app.close()
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}, {}").format(sql.Identifier(owner), sql.Identifier(other)))
            conn.execute(sql.SQL("DROP ROLE {}, {}").format(sql.Identifier(owner), sql.Identifier(other)))
    message = str(failure.value)
    assert f"application_name 'app-1', user '{other}'" in message, message
    assert "state and age not visible to the migrating role (it needs pg_read_all_stats)" in message
