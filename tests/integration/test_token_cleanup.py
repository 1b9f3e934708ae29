"""delete_expired_refresh_tokens (sql/008) against a real PostgreSQL: what it deletes, its batches and
their commits, its run history, and that it works with only the grants the cron job's role gets."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from devsupport.grants import grant_statement
from infra import token_cleanup
from infra.migrate import Migrator, load_migrations

pytestmark = pytest.mark.integration

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
CUTOFF = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # an explicit cutoff, for exact boundaries


@pytest.fixture
def conn(fresh_db: str) -> Iterator[psycopg.Connection]:
    Migrator(fresh_db).apply_all(load_migrations(SQL_DIR))  # as `pulumi up` applies them
    with psycopg.connect(fresh_db, autocommit=True) as c:
        yield c


@pytest.fixture
def user_id(conn: psycopg.Connection) -> uuid.UUID:
    row = conn.execute("""
        WITH org AS (INSERT INTO organizations (name) VALUES ('Acme') RETURNING id)
        INSERT INTO users (email, password_hash, first_name, last_name, role, organization_id)
        SELECT 'ada@example.com', '$2b$10$' || repeat('a', 53), 'Ada', 'Lovelace', 'viewer', id FROM org
        RETURNING id""").fetchone()
    assert row is not None
    return row[0]


def add_tokens(conn: psycopg.Connection, user_id: uuid.UUID, count: int, first_expiry: datetime,
               step: timedelta = timedelta(seconds=1)) -> None:
    """count tokens expiring at first_expiry, first_expiry + step, ... (each created 7 days before)."""
    conn.execute("""
        INSERT INTO refresh_tokens (user_id, token, created_at, expires_at)
        SELECT %(user)s, md5(random()::text), e - interval '7 days', e
          FROM (SELECT %(first)s + (g - 1) * %(step)s AS e FROM generate_series(1, %(n)s) g) s""",
                 {"user": user_id, "first": first_expiry, "step": step, "n": count})


def count(conn: psycopg.Connection, where: str = "true", params: Any = None) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM refresh_tokens WHERE {}").format(sql.SQL(where)),
                       params).fetchone()
    assert row is not None
    return int(row[0])


def cleanup(conn: psycopg.Connection, **args: Any) -> tuple[int, int]:
    """CALL the procedure with named arguments; returns (rows_deleted, batches)."""
    call = sql.SQL("CALL delete_expired_refresh_tokens({})").format(
        sql.SQL(", ").join(sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder()) for k in args))
    row = conn.execute(call, list(args.values())).fetchone()
    assert row is not None
    return row[0], row[1]


def runs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT * FROM refresh_token_cleanup_runs ORDER BY id").fetchall()


def capture_plans(conn: psycopg.Connection) -> list[str]:
    """auto_explain sends every plan this session runs (nested ones too, with buffers) to the list returned."""
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_analyze = on",
                    "log_buffers = on", "log_timing = off"):
        conn.execute(f"SET auto_explain.{setting}")
    conn.execute("SET client_min_messages = log")
    return plans


def test_deletes_all_expired_tokens_in_bounded_batches(conn: psycopg.Connection, user_id: uuid.UUID) -> None:
    add_tokens(conn, user_id, 12_345, datetime.now(UTC) - timedelta(days=2))
    add_tokens(conn, user_id, 500, datetime.now(UTC) + timedelta(days=1))
    live_before = conn.execute("SELECT id FROM refresh_tokens WHERE expires_at > now() ORDER BY id").fetchall()
    before = datetime.now(UTC)

    assert cleanup(conn, batch_size=1000) == (12_345, 13)

    assert count(conn, "expires_at < now()") == 0
    assert conn.execute("SELECT id FROM refresh_tokens ORDER BY id").fetchall() == live_before
    [run] = runs(conn)
    assert (run["rows_deleted"], run["batches"], run["batch_size"]) == (12_345, 13, 1000)
    assert before <= run["cutoff"] <= run["started_at"] <= run["finished_at"] <= datetime.now(UTC)


def test_each_batch_is_its_own_committed_transaction(conn: psycopg.Connection, user_id: uuid.UUID) -> None:
    """A (test-only) statement trigger records the transaction id of every DELETE the procedure runs."""
    conn.execute("""
        CREATE TABLE delete_log (xid xid8, n bigint);
        CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO delete_log SELECT pg_current_xact_id(), count(*) FROM gone;
            RETURN NULL;
        END $$;
        CREATE TRIGGER log_delete AFTER DELETE ON refresh_tokens REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION log_delete();""")
    add_tokens(conn, user_id, 12_345, datetime.now(UTC) - timedelta(days=2))

    assert cleanup(conn, batch_size=1000) == (12_345, 13)

    log = conn.execute("""
        SELECT xid, n, pg_xact_status(xid) FROM delete_log WHERE n > 0 ORDER BY xid""").fetchall()
    assert [n for _, n, _ in log] == [1000] * 12 + [345]
    assert len({xid for xid, _, _ in log}) == 13, "every batch in a transaction of its own"
    assert {status for _, _, status in log} == {"committed"}


def test_earlier_batches_are_committed_while_a_later_one_waits(conn: psycopg.Connection, fresh_db: str,
                                                               user_id: uuid.UUID) -> None:
    """Seen from another connection mid-run: batches 1-4 are gone while batch 5 waits for a row lock."""
    add_tokens(conn, user_id, 5000, datetime.now(UTC) - timedelta(days=2))
    latest = conn.execute("SELECT id FROM refresh_tokens ORDER BY expires_at DESC LIMIT 1").fetchone()
    assert latest is not None

    with psycopg.connect(fresh_db) as locker, psycopg.connect(fresh_db, autocommit=True) as worker:
        locker.execute("SELECT FROM refresh_tokens WHERE id = %s FOR UPDATE", latest)  # until locker commits
        worker_pid = worker.info.backend_pid
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = cleanup(worker, batch_size=1000)
            except Exception as exc:  # surfaced by the assertion below
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                               (worker_pid,)).fetchone() != ("Lock",):
                assert thread.is_alive() and time.monotonic() < deadline, result
                time.sleep(0.01)
            # The worker is blocked inside batch 5 (the one holding the locked token): batches 1-4
            # are committed, so another session no longer sees their 4000 tokens.
            assert count(conn) == 1000
        finally:
            locker.commit()
            thread.join(30)
    assert result == {"value": (5000, 5)}
    assert count(conn) == 0


def test_equal_expiry_times_are_still_batched(conn: psycopg.Connection, user_id: uuid.UUID) -> None:
    """The keyset is (expires_at, id): 2,500 tokens sharing one expires_at still go 1000 at a time."""
    add_tokens(conn, user_id, 2500, datetime.now(UTC) - timedelta(hours=1), step=timedelta(0))
    assert cleanup(conn, batch_size=1000) == (2500, 3)
    assert count(conn) == 0


def test_empty_table(conn: psycopg.Connection) -> None:
    assert cleanup(conn) == (0, 0)
    [run] = runs(conn)
    assert (run["rows_deleted"], run["batches"], run["batch_size"]) == (0, 0, 5000)


def test_nothing_expired(conn: psycopg.Connection, user_id: uuid.UUID) -> None:
    add_tokens(conn, user_id, 300, datetime.now(UTC) + timedelta(minutes=1))
    assert cleanup(conn, batch_size=100) == (0, 0)
    assert count(conn) == 300
    assert [(r["rows_deleted"], r["batches"]) for r in runs(conn)] == [(0, 0)]


def test_boundary_expiry_equal_to_the_cutoff_is_kept(conn: psycopg.Connection, user_id: uuid.UUID) -> None:
    """expires_at < cutoff is deleted; expires_at = cutoff (and 1 s later) is kept."""
    tokens = {
        "1 us before": CUTOFF - timedelta(microseconds=1),
        "at cutoff": CUTOFF,
        "1 s after": CUTOFF + timedelta(seconds=1),
    }
    for name, expiry in tokens.items():
        conn.execute("""INSERT INTO refresh_tokens (user_id, token, created_at, expires_at)
                        VALUES (%s, %s, %s, %s)""", (user_id, name, expiry - timedelta(days=1), expiry))

    assert cleanup(conn, cutoff=CUTOFF) == (1, 1)

    assert {t for (t,) in conn.execute("SELECT token FROM refresh_tokens")} == {"at cutoff", "1 s after"}
    assert runs(conn)[0]["cutoff"] == CUTOFF


def test_default_cutoff_is_now(conn: psycopg.Connection, user_id: uuid.UUID) -> None:
    add_tokens(conn, user_id, 10, datetime.now(UTC) - timedelta(seconds=10))
    add_tokens(conn, user_id, 10, datetime.now(UTC) + timedelta(minutes=1))
    assert cleanup(conn) == (10, 1)
    assert count(conn) == count(conn, "expires_at > now()") == 10


def test_refuses_bad_arguments(conn: psycopg.Connection, user_id: uuid.UUID) -> None:
    add_tokens(conn, user_id, 5, datetime.now(UTC) + timedelta(seconds=30))
    with pytest.raises(errors.InvalidParameterValue, match="in the future"):
        cleanup(conn, cutoff=datetime.now(UTC) + timedelta(minutes=1))
    for bad in (0, -1, None):
        with pytest.raises(errors.InvalidParameterValue, match="batch_size"):
            cleanup(conn, batch_size=bad)
    assert count(conn) == 5
    assert runs(conn) == []


def test_cannot_run_inside_a_transaction_block(conn: psycopg.Connection) -> None:
    """COMMIT inside CALL needs a top-level CALL (autocommit, or a single-statement cron command)."""
    with pytest.raises(errors.InvalidTransactionTermination), conn.transaction():
        cleanup(conn)


def index_scans(plan: str) -> list[tuple[str, int]]:
    """(scan node, shared buffers it touched) for every scan in an auto_explain plan."""
    lines = plan.splitlines()
    scans = []
    for i, line in enumerate(lines):
        node = re.search(r"(Seq Scan|Index Only Scan|Index Scan|Bitmap Index Scan|Tid Scan)\b.*", line)
        if node and "Bitmap Heap Scan" not in line:
            buffers = next(ln for ln in lines[i + 1:] if "Buffers:" in ln)
            pages = sum(int(n) for n in re.findall(r"(?:hit|read)=(\d+)", buffers))
            scans.append((node.group(0).split("  (cost")[0], pages))
    return scans


def test_uses_the_expires_at_index_and_never_rewalks_deleted_entries(conn: psycopg.Connection,
                                                                     user_id: uuid.UUID) -> None:
    """auto_explain sends every plan the procedure runs to this session: each batch scans only its
    own range of refresh_tokens_expires_at_id_idx. Were a batch to restart from the lowest key it
    would walk the (unvacuumed) entries of every row deleted before it: 19,000 entries, ~100 pages,
    by the last batch."""
    add_tokens(conn, user_id, 20_000, datetime.now(UTC) - timedelta(days=2), step=timedelta(seconds=5))
    add_tokens(conn, user_id, 20_000, datetime.now(UTC) + timedelta(hours=1), step=timedelta(seconds=5))
    conn.execute("VACUUM ANALYZE refresh_tokens")
    plans = capture_plans(conn)

    assert cleanup(conn, batch_size=1000) == (20_000, 20)

    # The statements on the table (not the catalog reads that choose the order, sql/009).
    token_plans = [p for p in plans if "FROM refresh_tokens" in p and "Query Text: CALL" not in p]
    assert len(token_plans) == 2 * 20  # per batch: find the batch's end key, delete the range
    for plan in token_plans:
        scans = index_scans(plan)
        assert [node.endswith("refresh_tokens_expires_at_id_idx on refresh_tokens")
                or node == "Bitmap Index Scan on refresh_tokens_expires_at_id_idx" for node, _ in scans] == [True], plan
        assert scans[0][1] <= 25, plan


# ---------------------------------------------------------------------------------------------------
# The cron job's role: exactly the grants the routine needs, nothing more.
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Role:
    name: str
    dsn: str


@pytest.fixture
def cleanup_role(conn: psycopg.Connection, fresh_db: str) -> Iterator[Role]:
    """A login role with only what the cleanup needs."""
    name = "token_cleanup_" + uuid.uuid4().hex[:8]
    password = uuid.uuid4().hex
    role = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
    for grant in token_cleanup.GRANTS:  # exactly what the program grants the job's role
        conn.execute(grant_statement(grant, name))
    try:
        yield Role(name, psycopg.conninfo.make_conninfo(fresh_db, user=name, password=password))
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
            admin.execute(sql.SQL("DROP ROLE {}").format(role))


def test_cleanup_role_has_exactly_its_grants(conn: psycopg.Connection, cleanup_role: Role) -> None:
    privileges = conn.execute("""
        SELECT c.relname, p.privilege_type
          FROM pg_class c
          CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER'])
                     AS p(privilege_type)
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
           AND has_table_privilege(%s, c.oid, p.privilege_type)
         ORDER BY 1, 2""", (cleanup_role.name,)).fetchall()
    assert privileges == [("refresh_token_cleanup_runs", "INSERT"), ("refresh_tokens", "DELETE")]
    columns = conn.execute("""
        SELECT attname FROM pg_attribute
         WHERE attrelid = 'refresh_tokens'::regclass AND attnum > 0
           AND has_column_privilege(%s, attrelid, attnum, 'SELECT') ORDER BY 1""", (cleanup_role.name,)).fetchall()
    assert columns == [("expires_at",), ("id",)]


def test_works_with_only_the_cron_roles_grants(conn: psycopg.Connection, user_id: uuid.UUID,
                                              cleanup_role: Role) -> None:
    add_tokens(conn, user_id, 2500, datetime.now(UTC) - timedelta(days=2))
    add_tokens(conn, user_id, 100, datetime.now(UTC) + timedelta(days=1))

    with psycopg.connect(cleanup_role.dsn, autocommit=True) as job:
        assert cleanup(job, batch_size=1000) == (2500, 3)
        # ... and that role reads nothing else.
        with pytest.raises(errors.InsufficientPrivilege):
            job.execute("SELECT * FROM users")
        with pytest.raises(errors.InsufficientPrivilege):
            job.execute("SELECT token FROM refresh_tokens")
        with pytest.raises(errors.InsufficientPrivilege):
            job.execute("SELECT * FROM refresh_token_cleanup_runs")

    assert count(conn) == count(conn, "expires_at > now()") == 100
    assert [(r["rows_deleted"], r["batches"]) for r in runs(conn)] == [(2500, 3)]


def test_execute_is_not_granted_to_public(conn: psycopg.Connection, cleanup_role: Role) -> None:
    """Without its own EXECUTE grant the role cannot call the procedure: PUBLIC has none."""
    conn.execute(sql.SQL("REVOKE EXECUTE ON PROCEDURE delete_expired_refresh_tokens(integer, timestamptz, "
                         "bigint, integer) FROM {}").format(sql.Identifier(cleanup_role.name)))
    with psycopg.connect(cleanup_role.dsn, autocommit=True) as job, pytest.raises(errors.InsufficientPrivilege):
        cleanup(job)


def test_batch_delete_is_estimated_as_a_batch_not_a_share_of_the_table(conn: psycopg.Connection,
                                                                       user_id: uuid.UUID) -> None:
    """The planner must see each batch's DELETE as ~batch_size rows, whatever the batch's position.

    A pair of row comparisons `(expires_at, id) >= lo AND (expires_at, id) < hi` alone is estimated
    from expires_at only, as P(>= lo) * P(< hi): a quarter of the table for a batch in the middle of
    the expired range. With expires_at uncorrelated to the heap order (as when tokens of different
    lifetimes are mixed) that estimate turns the DELETE into a Seq Scan of the whole table, at 10 M
    tokens 1.2 s per batch (bench/README.md). Such a backlog now goes in heap order (sql/009), so
    here the heap order is shuffled only within runs of 200 rows (correlation ~1: the procedure keeps
    the index order); the estimates do not depend on the heap order. Deterministic: 30,000 rows is
    the whole ANALYZE sample (default_statistics_target 100), the heap order is a fixed permutation,
    autovacuum is off for the table (no re-analyze mid-run), and only estimated rows (EXPLAIN
    without ANALYZE) are read."""
    conn.execute("ALTER TABLE refresh_tokens SET (autovacuum_enabled = off)")
    conn.execute("""
        INSERT INTO refresh_tokens (user_id, token, created_at, expires_at)
        SELECT %(user)s, md5(g::text), e - interval '7 days', e
          FROM (SELECT g, now() - interval '72 hours' + g * interval '12 seconds' AS e
                  FROM generate_series(1, 30000) g) s
         ORDER BY g / 200, md5('order' || g)""", {"user": user_id})  # a fixed heap order
    conn.execute("ANALYZE refresh_tokens")
    expired = count(conn, "expires_at < now()")
    assert 20_000 < expired < 30_000
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_analyze = off"):
        conn.execute(f"SET auto_explain.{setting}")
    conn.execute("SET client_min_messages = log")

    rows_deleted, batches = cleanup(conn, batch_size=1000)
    conn.execute("RESET client_min_messages")

    assert (rows_deleted, batches) == (expired, -(-expired // 1000))
    deletes = [p for p in plans if "DELETE FROM refresh_tokens" in p]
    assert len(deletes) == batches
    for plan in deletes:
        assert "Seq Scan" not in plan, plan
        # The estimate of the scan feeding the Delete node (the Delete node itself estimates 0 rows).
        [estimate] = re.findall(r"Scan(?: using \w+)? on refresh_tokens\s+\(cost=\S+ rows=(\d+)", plan)
        assert int(estimate) <= 2000, plan  # batches of 1,000 (without the plain bounds: 2,800 to ~7,500)


# ---------------------------------------------------------------------------------------------------
# sql/009: a large backlog scattered over the heap is deleted in heap order.
# ---------------------------------------------------------------------------------------------------
HELPER = "delete_expired_refresh_tokens_in_pages"


def scattered_tokens(conn: psycopg.Connection, user_id: uuid.UUID, total: int, expired: int,
                     shuffle: str = "md5('order' || g)") -> None:
    """`total` tokens, the first `expired` of them expired, in a fixed heap order given by `shuffle`
    (by default a permutation uncorrelated with expiry), vacuumed and analyzed."""
    conn.execute(sql.SQL("""
        INSERT INTO refresh_tokens (user_id, token, created_at, expires_at)
        SELECT %(user)s, md5(g::text), e - interval '7 days', e
          FROM (SELECT g, CASE WHEN g <= %(expired)s THEN now() - interval '1 hour' + g * interval '10 ms'
                               ELSE now() + interval '1 hour' + g * interval '10 ms' END AS e
                  FROM generate_series(1, %(total)s) g) s
         ORDER BY {}""").format(sql.SQL(shuffle)), {"user": user_id, "expired": expired, "total": total})
    conn.execute("VACUUM ANALYZE refresh_tokens")


def heap_pages(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT relpages FROM pg_class WHERE oid = 'refresh_tokens'::regclass").fetchone()
    assert row is not None
    return int(row[0])


def debug_lines(conn: psycopg.Connection) -> list[str]:
    """Collects the procedure's RAISE DEBUG lines from now on (the order chosen, each batch)."""
    lines: list[str] = []
    conn.add_notice_handler(lambda diag: lines.append(diag.message_primary or ""))
    conn.execute("SET client_min_messages = debug1")
    return lines


def test_a_scattered_backlog_is_deleted_in_heap_order_with_only_the_cron_roles_grants(
        conn: psycopg.Connection, user_id: uuid.UUID, cleanup_role: Role) -> None:
    scattered_tokens(conn, user_id, total=20_000, expired=10_000)
    live_before = conn.execute("SELECT id FROM refresh_tokens WHERE expires_at > now() ORDER BY id").fetchall()
    pages, tuples = conn.execute(
        "SELECT relpages, reltuples FROM pg_class WHERE oid = 'refresh_tokens'::regclass").fetchone() or (0, 0)
    assert pages <= 10_000, "more expired tokens than heap pages: the heap-order case"
    step = int(1000 * pages / tuples)  # pages holding ~batch_size rows

    with psycopg.connect(cleanup_role.dsn, autocommit=True) as job:
        lines = debug_lines(job)
        rows_deleted, batches = cleanup(job, batch_size=1000)

    assert rows_deleted == 10_000
    assert lines[0].startswith(f"delete_expired_refresh_tokens: heap order, {step} pages per batch"), lines[0]
    per_batch = [int(m[1]) for m in (re.search(r"batch deleted (\d+) rows", ln) for ln in lines) if m]
    assert len(per_batch) == -(-pages // step), "one transaction per page range, every page covered"
    assert sum(per_batch) == 10_000 and max(per_batch) <= 1000
    assert batches == sum(1 for n in per_batch if n > 0)
    assert conn.execute("SELECT id FROM refresh_tokens ORDER BY id").fetchall() == live_before
    assert [(r["rows_deleted"], r["batches"], r["batch_size"]) for r in runs(conn)] == [(10_000, batches, 1000)]


def test_heap_order_batches_are_tid_range_scans_of_their_pages(conn: psycopg.Connection,
                                                               user_id: uuid.UUID) -> None:
    """Each heap-order batch reads its own page range once (no index, no other page)."""
    scattered_tokens(conn, user_id, total=20_000, expired=10_000)
    plans = capture_plans(conn)

    rows_deleted, _ = cleanup(conn, batch_size=1000)
    conn.execute("RESET client_min_messages")

    assert rows_deleted == 10_000
    deletes = [p for p in plans if "DELETE FROM public.refresh_tokens" in p]
    assert deletes
    for plan in deletes:
        scans = re.findall(r"(\w[\w ]*Scan) on refresh_tokens", plan)
        assert scans == ["Tid Range Scan"], plan


@pytest.mark.parametrize(("expired", "shuffle"), [
    (100, "md5('order' || g)"),  # scattered, but fewer expired tokens than heap pages
    (10_000, "g"),  # many expired, laid out in expiry order (correlation 1)
], ids=["small-backlog", "in-expiry-order"])
def test_keeps_the_index_order_when_heap_order_would_not_pay(conn: psycopg.Connection, user_id: uuid.UUID,
                                                             expired: int, shuffle: str) -> None:
    scattered_tokens(conn, user_id, total=20_000, expired=expired, shuffle=shuffle)
    lines = debug_lines(conn)
    assert cleanup(conn, batch_size=1000) == (expired, -(-expired // 1000))
    assert lines[0].startswith("delete_expired_refresh_tokens: index order"), lines[0]
    assert count(conn, "expires_at < now()") == 0 and count(conn) == 20_000 - expired


def test_the_heap_order_helper_serves_only_sessions_that_may_already_delete(
        conn: psycopg.Connection, user_id: uuid.UUID, cleanup_role: Role, fresh_db: str) -> None:
    """The SECURITY DEFINER helper gives no session more than it has: its login role must hold DELETE
    on refresh_tokens and EXECUTE on the procedure; it deletes only expired tokens, returns a count.
    It also works owned by a non-superuser table owner (as in the program, where the owner role runs
    the migrations)."""
    owner = "token_owner_" + uuid.uuid4().hex[:8]
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
    conn.execute(sql.SQL("ALTER TABLE refresh_tokens OWNER TO {}").format(sql.Identifier(owner)))
    conn.execute(sql.SQL("ALTER FUNCTION {}(bigint, integer, timestamptz) OWNER TO {}").format(
        sql.Identifier(HELPER), sql.Identifier(owner)))
    scattered_tokens(conn, user_id, total=2_000, expired=1_000)
    pages = heap_pages(conn)
    call = sql.SQL("SELECT {}(0, %s, %s)").format(sql.Identifier(HELPER))

    others = {}
    for grants in ("none", "delete-only", "execute-only"):
        name, password = f"other_{grants.replace('-', '_')}_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        if grants == "delete-only":
            conn.execute(sql.SQL("GRANT DELETE ON refresh_tokens TO {}").format(sql.Identifier(name)))
        if grants == "execute-only":
            conn.execute(sql.SQL("GRANT EXECUTE ON PROCEDURE delete_expired_refresh_tokens(integer, timestamptz, "
                                 "bigint, integer) TO {}").format(sql.Identifier(name)))
        others[name] = psycopg.conninfo.make_conninfo(fresh_db, user=name, password=password)
    try:
        for dsn in others.values():
            with psycopg.connect(dsn, autocommit=True) as other:
                with pytest.raises(errors.InsufficientPrivilege, match=HELPER) as refused:
                    other.execute(call, (pages, datetime.now(UTC)))
                assert "EXECUTE on that procedure and DELETE on refresh_tokens" in str(refused.value.diag.message_hint)
        assert count(conn, "expires_at < now()") == 1_000

        with psycopg.connect(cleanup_role.dsn, autocommit=True) as job:
            with pytest.raises(errors.InvalidParameterValue, match="in the future"):
                job.execute(call, (pages, datetime.now(UTC) + timedelta(minutes=1)))
            row = job.execute(call, (pages, datetime.now(UTC))).fetchone()
            assert row == (1_000,)
            scattered_tokens(conn, user_id, total=2_000, expired=1_000)
            assert cleanup(job, batch_size=100)[0] == 1_000  # the whole procedure, helper owned by `owner`
        assert count(conn, "expires_at < now()") == 0 and count(conn) == 2_000
    finally:
        for name in [*others, owner]:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
