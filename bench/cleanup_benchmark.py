#!/usr/bin/env python3
"""Benchmark of the expired refresh token cleanup (sql/008) against the alternatives.

    python bench/cleanup_benchmark.py --rows 1000000 --rows 10000000

For each size: a throwaway PostgreSQL 15 cluster (devsupport/local_postgres.py) with durable
settings, the real schema (sql/ applied by infra.migrate, as `pulumi up` does), a template
database holding `rows` refresh tokens (half expired, expired/live randomly interleaved on the
heap pages), and then, for every variant, a fresh copy of that template (CREATE DATABASE ...
TEMPLATE ... STRATEGY FILE_COPY: byte-identical heap and indexes), VACUUM ANALYZE + CHECKPOINT,
and the run, with a fixed-rate token INSERT load on a separate connection. Variants:

  reference   no cleanup: the insert load alone (its latency is the yardstick)
  plain       DELETE FROM refresh_tokens WHERE expires_at < now()     (one transaction)
  slow        loop of DELETE ... WHERE id IN (SELECT id ... ORDER BY expires_at LIMIT 5000
              FOR UPDATE SKIP LOCKED), one commit per batch            (time-capped)
  ours_<N>    CALL delete_expired_refresh_tokens(batch_size => N)      (autocommit connection)
  *_async     (with --variants ours_async,ctid_async) the same with the cleanup session's
              synchronous_commit = off (the INSERT load stays synchronous)
  ctid_<P>p   a suggestion, NOT the shipped code: autocommit DELETEs over P-page heap ranges
              (WHERE ctid >= '(s,0)' AND ctid < '(s+P,0)' AND expires_at < cutoff)
  keyset_<N>  (round 3) sql/008's procedure, index order only, as a renamed copy created from the
              file's text: the procedure before sql/009, measured in the same run as `ours`

With --as-cleanup-role every variant's session is a login role holding exactly the grants the
program gives the cron job's role (infra.token_cleanup.GRANTS; plus SELECT (ctid) for the ctid
variants, which need it), so a variant that needs more privilege fails instead of being measured.

plus `explain_ours`, a separate copy on which the procedure runs with auto_explain loaded in the
calling session (every nested statement's EXPLAIN ANALYZE, BUFFERS goes to the server log), to
show the plans of an early and a late batch. The slow pattern's EXPLAIN (ANALYZE, BUFFERS) is
taken inline: one early and one late batch of the timed run are run under EXPLAIN ANALYZE (they
still delete and commit, and are left out of its per-transaction figures).

Transaction durations:
  plain / slow / ctid: client-side, from sending the DELETE to the return of COMMIT.
  ours:         the procedure's own `RAISE DEBUG ... batch deleted % rows in % ms` (server clock,
                from before the batch's SELECT to after its COMMIT), received as notices with
                client_min_messages = debug1; cross-checked with the client-side gaps between
                consecutive notices (the server flushes each notice as it is raised) and with
                pg_stat_statements (track = all) max_exec_time of the nested statements.
Insert latency: client-side per INSERT (each its own autocommit transaction), from sending it to
its COMMIT's return ("service"), and from its scheduled start ("from schedule", which also counts
the delay of the following inserts when one is slow: no coordinated omission).

Everything is bounded: the slow pattern stops at --slow-cap seconds, the insert thread at a hard
limit, the cluster is stopped and removed at the end. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from devsupport.grants import grant_statement
from devsupport.local_postgres import LocalPostgres
from infra import token_cleanup
from infra.migrate import Migrator, load_migrations

REPO = Path(__file__).resolve().parent.parent

DURABLE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "1GB",
    "max_wal_size": "4GB",
}
# Observation only (they do not change how the server writes or plans).
OBSERVATION_SETTINGS = {
    "shared_preload_libraries": "pg_cron,pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "1000",
    "track_io_timing": "on",
    "log_checkpoints": "on",
    "log_autovacuum_min_duration": "0",
    "track_wal_io_timing": "on",
}
WAL_STATS_SQL = "SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync, wal_sync_time FROM pg_stat_wal"
WAL_STATS_COLS = ["wal_records", "wal_fpi", "wal_bytes", "wal_write", "wal_sync", "wal_sync_time_ms"]

SLOW_BATCH_SQL = """
DELETE FROM refresh_tokens
 WHERE id IN (SELECT id FROM refresh_tokens
               WHERE expires_at < now()
               ORDER BY expires_at
               LIMIT %(batch)s
               FOR UPDATE SKIP LOCKED)
"""
INSERT_SQL = (
    "INSERT INTO refresh_tokens (user_id, token, expires_at) "
    "VALUES (%s, %s, now() + interval '167 hours')"
)
NOTICE_RE = re.compile(r"batch deleted (\d+) rows in ([0-9.]+) ms")


# --------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100.0 * len(s) + 0.5) - 1))
    return s[k]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "p99_9": pct(values, 99.9),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def admin(server: LocalPostgres) -> psycopg.Connection:
    return psycopg.connect(server.address.dsn("postgres"), autocommit=True)


def wal_lsn(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


def wal_diff(conn: psycopg.Connection, a: str, b: str) -> int:
    return int(conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (b, a)).fetchone()[0])


def log_offset(server: LocalPostgres) -> int:
    try:
        return os.path.getsize(server.logfile)
    except OSError:
        return 0


def log_since(server: LocalPostgres, offset: int) -> str:
    with open(server.logfile, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# schema + data


def apply_migrations(dsn: str) -> list[str]:
    """The real schema, applied as `pulumi up` applies it (infra.migrate); the files applied."""
    migrations = load_migrations(REPO / "sql")
    Migrator(dsn).apply_all(migrations)
    return [m.filename for m in migrations]


def schema_fingerprint(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        """
        SELECT 'index ' || indexname || ': ' || indexdef FROM pg_indexes
         WHERE schemaname = 'public' AND tablename = 'refresh_tokens'
        UNION ALL
        SELECT 'constraint ' || conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conrelid = 'refresh_tokens'::regclass
        ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows]


def build_template(server: LocalPostgres, name: str, rows: int, layout: str = "interleaved",
                   expired_share: float = 0.5) -> dict[str, Any]:
    """The template database: real schema, organizations/users, `rows` tokens, half expired.

    layout "interleaved": each row expired or live by a coin toss (expired rows on every page).
    layout "clustered": rows in creation order, created_at evenly over the last 14 days and
    expires_at = created_at + 168 h, as in production where expiry follows insertion: the expired
    half is the first half of the heap.
    """
    t0 = time.perf_counter()
    with admin(server) as a:
        a.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        a.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = server.address.dsn(name)
    migrations = apply_migrations(dsn)
    n_orgs = 100
    n_users = max(1000, rows // 100)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("SET maintenance_work_mem = '1GB'")
        fingerprint = schema_fingerprint(conn)
        # Load without the table's indexes/PK/FK, then re-create them from their own definitions
        # (checked identical below): the same schema, built in minutes instead of hours.
        idx = conn.execute(
            """SELECT indexname, indexdef FROM pg_indexes i
                WHERE schemaname = 'public' AND tablename = 'refresh_tokens'
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"""
        ).fetchall()
        cons = conn.execute(
            """SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint
                WHERE conrelid = 'refresh_tokens'::regclass AND contype IN ('p', 'f')"""
        ).fetchall()
        with conn.transaction():
            for iname, _ in idx:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(iname)))
            for cname, _, _ in cons:
                conn.execute(
                    sql.SQL("ALTER TABLE refresh_tokens DROP CONSTRAINT {}").format(sql.Identifier(cname))
                )
        with conn.transaction():
            conn.execute("SELECT setseed(0.4242)")
            conn.execute(
                "INSERT INTO organizations (name) SELECT 'Organization ' || g FROM generate_series(1, %s) g",
                (n_orgs,),
            )
            conn.execute(
                """
                INSERT INTO users (email, password_hash, first_name, last_name, role, organization_id)
                SELECT 'user' || g || '@example.com',
                       '$2b$10$' || substr(md5(g::text) || md5('salt' || g), 1, 53),
                       'First' || g, 'Last' || g,
                       (ARRAY['admin', 'analyst', 'viewer'])[1 + g %% 3],
                       o.ids[1 + g %% cardinality(o.ids)]
                  FROM (SELECT array_agg(id ORDER BY name) AS ids FROM organizations) o,
                       generate_series(1, %s) g
                """,
                (n_users,),
            )
            log(f"  loading {rows:,} tokens")
            # Heap order = generate_series order; each row expired or live by a coin toss, so the
            # expired rows are spread over every page. Tokens: 48 random bytes in base64 (64 chars).
            # Lifetime exactly 168 hours (the CHECK's maximum); expired ones expired 1 min..7 days
            # ago, live ones expire in 1 min..167 h.
            if layout == "interleaved":
                expiry = """SELECT CASE WHEN random() < %(share)s
                                        THEN now() - interval '1 minute' - random() * interval '7 days'
                                        ELSE now() + interval '1 minute' + random() * interval '167 hours'
                                   END AS e
                              FROM generate_series(1, %(rows)s) g"""
            else:  # clustered: creation order; created_at over the last 336 h, half expired
                expiry = """SELECT now() - interval '168 hours'
                                   + (g - 0.5) * (interval '336 hours' / %(rows)s) AS e
                              FROM generate_series(1, %(rows)s) g ORDER BY g"""
            conn.execute(
                """
                INSERT INTO refresh_tokens (id, user_id, token, expires_at, created_at)
                SELECT gen_random_uuid(),
                       u.ids[1 + floor(random() * cardinality(u.ids))::int],
                       translate(encode(decode(md5(random()::text) || md5(random()::text)
                                               || md5(random()::text), 'hex'), 'base64'), '+/', '-_'),
                       s.e, s.e - interval '168 hours'
                  FROM (SELECT array_agg(id) AS ids FROM users) u,
                       LATERAL (""" + expiry + """) s
                """,
                {"rows": rows, "share": expired_share},
            )
        log("  re-creating the PK, indexes and FK")
        for _, ctype, cdef in sorted(cons, key=lambda c: c[1] != "p"):
            if ctype == "p":
                conn.execute(f"ALTER TABLE refresh_tokens ADD CONSTRAINT refresh_tokens_pkey {cdef}")
        for _, idef in idx:
            conn.execute(idef)
        for cname, ctype, cdef in cons:
            if ctype == "f":
                conn.execute(
                    sql.SQL("ALTER TABLE refresh_tokens ADD CONSTRAINT {} ").format(sql.Identifier(cname))
                    + sql.SQL(cdef)
                )
        after = schema_fingerprint(conn)
        if after != fingerprint:
            raise RuntimeError(f"schema changed by the load:\n{fingerprint}\n!=\n{after}")
        conn.execute("VACUUM (ANALYZE, FREEZE)")
        conn.execute("CHECKPOINT")
        info = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE expires_at < now()),
                      avg(length(token)), pg_relation_size('refresh_tokens'),
                      pg_indexes_size('refresh_tokens')
                 FROM refresh_tokens"""
        ).fetchone()
        idx_sizes = dict(
            conn.execute(
                """SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)
                     FROM pg_index WHERE indrelid = 'refresh_tokens'::regclass"""
            ).fetchall()
        )
        # Share of heap pages that hold both expired and live rows.
        mixed = conn.execute(
            """SELECT avg(CASE WHEN e > 0 AND l > 0 THEN 1.0 ELSE 0.0 END)
                 FROM (SELECT (ctid::text::point)[0] AS page,
                              count(*) FILTER (WHERE expires_at < now()) AS e,
                              count(*) FILTER (WHERE expires_at >= now()) AS l
                         FROM refresh_tokens GROUP BY 1) p"""
        ).fetchone()[0]
    return {
        "database": name,
        "layout": layout,
        "expired_share": expired_share,
        "migrations": migrations,
        "schema": fingerprint,
        "organizations": n_orgs,
        "users": n_users,
        "tokens": info[0],
        "expired": info[1],
        "avg_token_length": float(info[2]),
        "heap_bytes": info[3],
        "indexes_bytes": info[4],
        "index_bytes": idx_sizes,
        "share_of_pages_with_expired_and_live_rows": float(mixed),
        "build_seconds": time.perf_counter() - t0,
    }


def fresh_copy(server: LocalPostgres, template: str, name: str) -> str:
    with admin(server) as a:
        a.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        a.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    dsn = server.address.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        # Same starting cache state for every variant: the table and its indexes read once.
        conn.execute("SELECT count(*) FROM refresh_tokens")
        conn.execute("CHECKPOINT")
        conn.execute("SELECT pg_stat_statements_reset()")
    return dsn


def drop_db(server: LocalPostgres, name: str) -> None:
    with admin(server) as a:
        a.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --------------------------------------------------------------------------------------------
# the concurrent INSERT load


class InsertLoad(threading.Thread):
    """INSERTs at a fixed rate from their own autocommit connection; client-side latencies."""

    def __init__(self, dsn: str, rate: float, user_ids: list[str], hard_limit_s: float):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rate = rate
        self.user_ids = user_ids
        self.hard_limit_s = hard_limit_s
        self.stop_evt = threading.Event()
        self.ready = threading.Event()
        self.samples: list[tuple[float, float, float]] = []  # (scheduled, sent, done)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="bench-insert") as conn:
                cur = conn.cursor()
                for _ in range(5):  # get the prepared statement in place
                    cur.execute(INSERT_SQL, (self.user_ids[0], secrets.token_urlsafe(48)), prepare=True)
                self.ready.set()
                t0 = time.perf_counter()
                i = 0
                rng = secrets.SystemRandom()
                while not self.stop_evt.is_set():
                    sched = t0 + i / self.rate
                    now = time.perf_counter()
                    if now - t0 > self.hard_limit_s:
                        break
                    if sched > now and self.stop_evt.wait(sched - now):
                        break
                    uid = self.user_ids[rng.randrange(len(self.user_ids))]
                    token = secrets.token_urlsafe(48)
                    sent = time.perf_counter()
                    cur.execute(INSERT_SQL, (uid, token), prepare=True)
                    done = time.perf_counter()
                    self.samples.append((sched, sent, done))
                    i += 1
        except BaseException as e:  # reported by the caller
            self.error = e
            self.ready.set()

    def stats(self, start: float, end: float) -> dict[str, Any]:
        window = [s for s in self.samples if start <= s[1] <= end]
        service = [(d - s) * 1000 for _, s, d in window]
        from_sched = [(d - sc) * 1000 for sc, _, d in window]
        return {
            "window_s": end - start,
            "inserts": len(window),
            "achieved_rate_per_s": len(window) / (end - start) if end > start else None,
            "service_ms": summary(service),
            "from_schedule_ms": summary(from_sched),
            "over_5ms": sum(1 for v in service if v > 5),
            "raw_service_ms": [round(v, 3) for v in service],
        }


# --------------------------------------------------------------------------------------------
# variants


def txn_stats(durations_ms: list[float], threshold_ms: float = 100.0) -> dict[str, Any]:
    out = summary(durations_ms)
    out["over_100ms"] = sum(1 for d in durations_ms if d > threshold_ms)
    return out


def run_plain(conn: psycopg.Connection, _: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute("DELETE FROM refresh_tokens WHERE expires_at < now()")
        n = cur.rowcount
    conn.commit()
    d = (time.perf_counter() - t0) * 1000
    return {"rows_deleted": n, "batches": 1, "txn_ms": [d], "complete": True}


def run_slow(conn: psycopg.Connection, ctx: dict[str, Any]) -> dict[str, Any]:
    cap = ctx["slow_cap"]
    expected = ctx["expired"]
    batch = 5000
    txn_ms: list[float] = []
    explains: list[dict[str, Any]] = []
    deleted = 0
    t_start = time.perf_counter()
    late_done = False
    complete = False
    b = 0
    while True:
        b += 1
        elapsed = time.perf_counter() - t_start
        if elapsed > cap:
            break
        explain_as = None
        if b == 2:
            explain_as = "early (batch 2)"
        elif not late_done and (deleted >= 0.85 * expected or elapsed >= 0.85 * cap):
            explain_as = f"late (batch {b}, {deleted / expected:.0%} of the expired rows already deleted)"
            late_done = True
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            if explain_as:
                cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + SLOW_BATCH_SQL, {"batch": batch})
                plan = "\n".join(r[0] for r in cur.fetchall())
                n = _deleted_from_plan(plan)
            else:
                cur.execute(SLOW_BATCH_SQL, {"batch": batch})
                n = cur.rowcount
        conn.commit()
        d = (time.perf_counter() - t0) * 1000
        if explain_as:
            explains.append({"when": explain_as, "batch": b, "wall_ms": d, "rows_deleted": n, "plan": plan})
        else:
            txn_ms.append(d)
        deleted += n
        if n == 0:
            complete = True
            break
    return {
        "rows_deleted": deleted,
        "batches": b,
        "txn_ms": txn_ms,
        "complete": complete,
        "cap_s": cap,
        "explain": explains,
        "note": "the EXPLAIN ANALYZE batches delete and commit like the others; their times are in "
        "`explain`, not in txn_ms",
    }


def _deleted_from_plan(plan: str) -> int:
    # EXPLAIN ANALYZE of a DELETE returns no row count: the rows the Delete node was fed (its
    # child, the plan's second node) are the rows it deleted (nothing else deletes concurrently).
    m = re.search(r"->.*?actual time=[0-9.]+\.\.[0-9.]+ rows=(\d+)", plan)
    return int(m.group(1)) if m else 0


SYNC_PROC = "delete_expired_refresh_tokens_sync"


def create_sync_copy(conn: psycopg.Connection) -> None:
    """For the `ours_<N>_sync` variant: the shipped procedure minus its per-batch
    `SET LOCAL synchronous_commit = off`, under another name (everything else identical)."""
    src = conn.execute(
        "SELECT pg_get_functiondef('delete_expired_refresh_tokens(integer, timestamptz, bigint, integer)'::regprocedure)"
    ).fetchone()[0]
    line = "SET LOCAL synchronous_commit = off;"
    if line not in src:
        raise RuntimeError("the shipped procedure has no per-batch SET LOCAL synchronous_commit = off")
    src = src.replace(line, "").replace("public.delete_expired_refresh_tokens(", f"public.{SYNC_PROC}(")
    conn.execute(src)


KEYSET_PROC = "delete_expired_refresh_tokens_008"


def create_keyset_copy(conn: psycopg.Connection) -> None:
    """For the `keyset_<N>` variant: sql/008's procedure (index order only) under another name,
    from the file's own text, so that the procedure before sql/009 runs beside it in one session."""
    src = (REPO / "sql" / "008_create_refresh_token_cleanup.sql").read_text()
    start = src.index("CREATE PROCEDURE delete_expired_refresh_tokens(")
    body = src[start:src.index("$$;", start) + 3]
    conn.execute(body.replace("delete_expired_refresh_tokens(", f"{KEYSET_PROC}(", 1))


CLEANUP_ROLE = "bench_cleanup"
CLEANUP_PASSWORD = secrets.token_hex(16)


def grant_cleanup_role(conn: psycopg.Connection, extra_ctid: bool) -> None:
    """The cron job's grants (infra.token_cleanup.GRANTS, as the program states them) in this
    database, plus SELECT (ctid) for the ctid variants; EXECUTE on the benchmark's copies."""
    role = sql.Identifier(CLEANUP_ROLE)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
    for grant in token_cleanup.GRANTS:
        conn.execute(grant_statement(grant, CLEANUP_ROLE))
    if extra_ctid:
        conn.execute(sql.SQL("GRANT SELECT (ctid) ON refresh_tokens TO {}").format(role))


def run_ours(conn: psycopg.Connection, ctx: dict[str, Any]) -> dict[str, Any]:
    batch = ctx["batch_size"]
    notices: list[tuple[float, int, float]] = []  # (client time, rows, server ms)
    modes: list[str] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        msg = diag.message_primary or ""
        m = NOTICE_RE.search(msg)
        if m:
            notices.append((time.perf_counter(), int(m.group(1)), float(m.group(2))))
        elif " order" in msg:
            modes.append(msg)

    conn.add_notice_handler(on_notice)
    conn.execute("SET client_min_messages = debug1")
    # Bounded: statement_timeout covers the whole CALL (its COMMITs do not reset it); batches
    # committed before a cancel stay deleted and are counted from the notices.
    conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{int(ctx['ours_cap'] * 1000)}ms")))
    t0 = time.perf_counter()
    complete = True
    try:
        proc = ctx.get("proc") or (SYNC_PROC if ctx.get("sync_proc") else "delete_expired_refresh_tokens")
        row = conn.execute(f"CALL {proc}(batch_size => %s)", (batch,)).fetchone()
    except psycopg.errors.QueryCanceled:
        complete = False
        row = (sum(n[1] for n in notices), sum(1 for n in notices if n[1] > 0))
    t1 = time.perf_counter()
    conn.execute("RESET statement_timeout")
    conn.execute("SET client_min_messages = notice")
    conn.remove_notice_handler(on_notice)
    server_ms = [n[2] for n in notices]
    client_gaps = []
    prev = t0
    for t, _, _ in notices:
        client_gaps.append((t - prev) * 1000)
        prev = t
    return {
        "rows_deleted": int(row[0]),
        "batches": int(row[1]),
        "batch_size": batch,
        "txn_ms": server_ms,
        "client_gap_ms": client_gaps,
        "client_gap_stats": summary(client_gaps),
        "rows_per_batch": [n[1] for n in notices],
        "complete": complete,
        "cap_s": ctx["ours_cap"],
        "call_wall_ms": (t1 - t0) * 1000,
        "procedure": proc,
        "mode": modes,
    }


def run_ctid(conn: psycopg.Connection, ctx: dict[str, Any]) -> dict[str, Any]:
    """Suggested alternative (not in sql/): batches in physical order, by heap page ranges.

    Each batch is one autocommit DELETE over `pages` heap pages (a TID Range Scan, PostgreSQL
    14+), so the table is read once, sequentially, as by the plain DELETE, whatever the order of
    expires_at on the pages; a batch's cost is bounded by its page count.
    """
    pages = ctx["ctid_pages"]
    cutoff = conn.execute("SELECT now()").fetchone()[0]
    nblocks = conn.execute(
        "SELECT pg_relation_size('refresh_tokens') / current_setting('block_size')::int"
    ).fetchone()[0]
    txn_ms: list[float] = []
    deleted = 0
    for start in range(0, nblocks, pages):
        t0 = time.perf_counter()
        cur = conn.execute(
            "DELETE FROM refresh_tokens WHERE ctid >= %s::tid AND ctid < %s::tid AND expires_at < %s",
            (f"({start},0)", f"({start + pages},0)", cutoff),
        )
        deleted += cur.rowcount
        txn_ms.append((time.perf_counter() - t0) * 1000)
    return {"rows_deleted": deleted, "batches": len(txn_ms), "pages_per_batch": pages,
            "txn_ms": txn_ms, "complete": True}


def run_variant(server: LocalPostgres, template: str, name: str, kind: str, ctx: dict[str, Any]) -> dict[str, Any]:
    dsn = fresh_copy(server, template, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as side:
            user_ids = [str(r[0]) for r in side.execute("SELECT id FROM users ORDER BY id LIMIT 2000")]
            stat0 = side.execute(
                "SELECT n_tup_del, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables "
                "WHERE relname = 'refresh_tokens'"
            ).fetchone()
            lsn0 = wal_lsn(side)
            walst0 = side.execute(WAL_STATS_SQL).fetchone()
            if ctx.get("sync_proc"):
                create_sync_copy(side)
            if ctx.get("proc") == KEYSET_PROC:
                create_keyset_copy(side)
            if ctx.get("as_role"):
                grant_cleanup_role(side, extra_ctid=kind == "ctid")
        logoff = log_offset(server)
        load = InsertLoad(dsn, ctx["insert_rate"], user_ids, hard_limit_s=max(ctx["slow_cap"], ctx["ours_cap"]) + 600)
        load.start()
        load.ready.wait(30)
        if load.error:
            raise load.error
        time.sleep(ctx["warmup_s"])
        autocommit = kind in ("ours", "reference", "ctid")
        run_dsn = (psycopg.conninfo.make_conninfo(dsn, user=CLEANUP_ROLE, password=CLEANUP_PASSWORD)
                   if ctx.get("as_role") else dsn)
        load0 = os.getloadavg()
        with psycopg.connect(run_dsn, autocommit=autocommit, application_name=f"bench-{name}") as conn:
            if ctx.get("async_commit"):
                conn.execute("SET synchronous_commit = off")
                if not autocommit:
                    conn.commit()
            start = time.perf_counter()
            if kind == "reference":
                time.sleep(ctx["reference_s"])
                res: dict[str, Any] = {"rows_deleted": 0, "batches": 0, "txn_ms": [], "complete": True}
            elif kind == "plain":
                res = run_plain(conn, ctx)
            elif kind == "slow":
                res = run_slow(conn, ctx)
            elif kind == "ctid":
                res = run_ctid(conn, ctx)
            else:
                res = run_ours(conn, ctx)
            end = time.perf_counter()
        load.stop_evt.set()
        load.join(60)
        if load.error:
            raise load.error
        with psycopg.connect(dsn, autocommit=True) as side:
            lsn1 = wal_lsn(side)
            walst1 = side.execute(WAL_STATS_SQL).fetchone()
            stat1 = side.execute(
                "SELECT n_tup_del, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables "
                "WHERE relname = 'refresh_tokens'"
            ).fetchone()
            remaining = side.execute(
                "SELECT count(*) FROM refresh_tokens WHERE expires_at < now() - interval '1 minute'"
            ).fetchone()[0]
            pss = side.execute(
                """SELECT regexp_replace(query, '\\s+', ' ', 'g'), toplevel, calls,
                          round(total_exec_time::numeric, 1), round(max_exec_time::numeric, 2),
                          round(mean_exec_time::numeric, 3), rows, shared_blks_hit, shared_blks_read,
                          wal_bytes
                     FROM pg_stat_statements
                    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                    ORDER BY total_exec_time DESC LIMIT 8"""
            ).fetchall()
            wal = wal_diff(side, lsn0, lsn1)
        serverlog = log_since(server, logoff)
        res.update(
            {
                "variant": name,
                "session_role": CLEANUP_ROLE if ctx.get("as_role") else "superuser",
                "loadavg_before": load0,
                "loadavg_after": os.getloadavg(),
                "total_s": end - start,
                "longest_txn_ms": max(res["txn_ms"]) if res["txn_ms"] else None,
                "txn_stats": txn_stats(res["txn_ms"]),
                "insert_latency": load.stats(start, end),
                "wal_bytes": wal,
                "pg_stat_wal_delta": {c: float(b - a) for c, a, b in zip(WAL_STATS_COLS, walst0, walst1, strict=False)},
                "expired_rows_left": remaining,
                "autovacuum_runs_during": stat1[1] - stat0[1],
                "autovacuum_log": [line for line in serverlog.splitlines() if "automatic vacuum of table" in line],
                "checkpoints_during": [line for line in serverlog.splitlines() if "checkpoint starting" in line],
                "pg_stat_statements": [
                    {
                        "query": r[0][:300], "toplevel": r[1], "calls": r[2], "total_ms": float(r[3]),
                        "max_ms": float(r[4]), "mean_ms": float(r[5]), "rows": r[6],
                        "shared_blks_hit": r[7], "shared_blks_read": r[8], "wal_bytes": int(r[9]),
                    }
                    for r in pss
                ],
            }
        )
        return res
    finally:
        drop_db(server, name)


# The batch DELETE of sql/008 before the fix (row comparisons only) ...
OURS_DELETE_SQL = (
    "DELETE FROM refresh_tokens WHERE (expires_at, id) >= (%(lo_e)s, %(lo_i)s) "
    "AND (expires_at, id) < (%(hi_e)s, %(hi_i)s)"
)
# ... and as sql/008 now has it: the same key range plus redundant scalar bounds on expires_at, which
# the planner pairs into one range clause (it cannot estimate a pair of row comparisons as a range).
FIXED_DELETE_SQL = OURS_DELETE_SQL + " AND expires_at >= %(lo_e)s AND expires_at <= %(hi_e)s"


def probe_plans(server: LocalPostgres, template: str, name: str, batch: int) -> list[dict[str, Any]]:
    """Plans of the procedure's DELETE for a batch starting at several points of the run.

    For each fraction f, lo = the key of the expired row at rank f * expired, hi = the key
    `batch` rows further: exactly what the procedure's batch at that point deletes. EXPLAIN
    ANALYZE, BUFFERS in a transaction that is rolled back, on the freshly analyzed copy (the
    planner's estimates are those of the procedure's batches until an autoanalyze happens).
    """
    dsn = fresh_copy(server, template, name)
    out = []
    try:
        with psycopg.connect(dsn) as conn:
            cutoff = conn.execute("SELECT now()").fetchone()[0]
            expired = conn.execute("SELECT count(*) FROM refresh_tokens WHERE expires_at < %s", (cutoff,)).fetchone()[0]
            conn.rollback()
            for f in (0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
                k = int(f * expired)
                lo = conn.execute(
                    "SELECT expires_at, id FROM refresh_tokens WHERE expires_at < %s "
                    "ORDER BY expires_at, id OFFSET %s LIMIT 1", (cutoff, k)).fetchone()
                hi = conn.execute(
                    "SELECT expires_at, id FROM refresh_tokens WHERE expires_at < %s "
                    "ORDER BY expires_at, id OFFSET %s LIMIT 1", (cutoff, k + batch)).fetchone()
                conn.rollback()
                if hi is None:  # the last batch ends at the cutoff, as in the procedure
                    hi = (cutoff, "00000000-0000-0000-0000-000000000000")
                params = {"lo_e": lo[0], "lo_i": lo[1], "hi_e": hi[0], "hi_i": hi[1]}
                row: dict[str, Any] = {"fraction_done": f}
                for label, q in (("before_fix", OURS_DELETE_SQL), ("with_scalar_bounds", FIXED_DELETE_SQL)):
                    t0 = time.perf_counter()
                    plan = "\n".join(
                        r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + q, params).fetchall()
                    )
                    wall = (time.perf_counter() - t0) * 1000
                    conn.rollback()
                    m = re.search(r"->\s+(\w[\w ]*?)\s+(?:on|using)\b", plan)
                    est = re.search(r"->.*?rows=(\d+) width", plan)
                    row[label] = {"scan": m.group(1) if m else None, "estimated_rows": int(est.group(1)) if est else None,
                                  "wall_ms": wall, "plan": plan}
                out.append(row)
                log(f"    probe f={f}: before fix {row['before_fix']['scan']} est {row['before_fix']['estimated_rows']:,} "
                    f"{row['before_fix']['wall_ms']:.0f} ms; with scalar bounds (sql/008 now) {row['with_scalar_bounds']['scan']} "
                    f"{row['with_scalar_bounds']['wall_ms']:.0f} ms")
    finally:
        drop_db(server, name)
    return out


def explain_ours(server: LocalPostgres, template: str, name: str, batch: int, cap_s: float) -> dict[str, Any]:
    """Run the procedure once with auto_explain on in the calling session; early + late plans."""
    dsn = fresh_copy(server, template, name)
    try:
        off = log_offset(server)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("LOAD 'auto_explain'")
            for k, v in {
                "auto_explain.log_min_duration": "0",
                "auto_explain.log_analyze": "on",
                "auto_explain.log_buffers": "on",
                "auto_explain.log_timing": "on",
                "auto_explain.log_nested_statements": "on",
                "auto_explain.log_format": "text",
            }.items():
                conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(*k.split(".")), sql.Literal(v)))
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{int(cap_s * 1000)}ms")))
            try:
                row = conn.execute("CALL delete_expired_refresh_tokens(batch_size => %s)", (batch,)).fetchone()
            except psycopg.errors.QueryCanceled:
                row = (-1, -1)  # capped: the plans logged so far are still reported
        time.sleep(1)
        text = log_since(server, off)
    finally:
        drop_db(server, name)
    # Split the log into entries (each starts with the log_line_prefix timestamp).
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\d{4}-\d\d-\d\d ", line):
            entries.append(line)
        elif entries:
            entries[-1] += "\n" + line
    plans = [e for e in entries if "plan:" in e and "refresh_tokens" in e]
    selects = [e for e in plans if "OFFSET $4 LIMIT 1" in e]
    deletes = [e for e in plans if "DELETE FROM refresh_tokens" in e]
    n = min(len(selects), len(deletes))
    late = max(0, int(n * 0.9) - 1)
    mid = max(0, int(n * 0.5) - 1)
    pick = lambda lst, i: re.sub(r"^.*?LOG:\s+", "", lst[i], count=1) if lst else None  # noqa: E731
    dur = lambda e: float(re.search(r"duration: ([0-9.]+) ms", e).group(1))  # noqa: E731
    plan_node = lambda e: " ".join(  # noqa: E731
        sorted(set(re.findall(r"(Seq Scan|Bitmap Heap Scan|Index Only Scan|Index Scan)", e)))
    )
    slowest_delete = max(range(len(deletes)), key=lambda i: dur(deletes[i])) if deletes else 0
    slowest_select = max(range(len(selects)), key=lambda i: dur(selects[i])) if selects else 0
    return {
        "per_batch": [
            {"batch": i + 1, "select_ms": dur(selects[i]), "delete_ms": dur(deletes[i]),
             "select_plan": plan_node(selects[i]), "delete_plan": plan_node(deletes[i])}
            for i in range(n)
        ],
        "mid": {"batch": mid + 1, "select": pick(selects, mid), "delete": pick(deletes, mid)},
        "slowest_delete": {"batch": slowest_delete + 1, "delete": pick(deletes, slowest_delete)},
        "slowest_select": {"batch": slowest_select + 1, "select": pick(selects, slowest_select)},
        "batch_size": batch,
        "rows_deleted": int(row[0]),
        "batches": int(row[1]),
        "plans_logged": {"select": len(selects), "delete": len(deletes)},
        "early": {"batch": 2, "select": pick(selects, 1), "delete": pick(deletes, 1)},
        "late": {"batch": late + 1, "select": pick(selects, late), "delete": pick(deletes, late)},
        "note": "auto_explain (log_analyze, log_buffers, log_timing, log_nested_statements) loaded in "
        "the calling session only; times are inflated by the instrumentation",
    }


# --------------------------------------------------------------------------------------------


def machine_info(server: LocalPostgres) -> dict[str, Any]:
    with admin(server) as a:
        version = a.execute("SELECT version()").fetchone()[0]
        names = [
            *DURABLE_SETTINGS,
            "wal_level", "checkpoint_timeout", "work_mem", "maintenance_work_mem",
            "autovacuum", "autovacuum_vacuum_scale_factor", "autovacuum_vacuum_cost_limit", "random_page_cost",
            "effective_cache_size", "wal_buffers", "max_parallel_workers_per_gather", "shared_preload_libraries",
            "pg_stat_statements.track", "wal_sync_method",
        ]
        settings = {n: a.execute(sql.SQL("SHOW {}").format(sql.Identifier(*n.split(".")))).fetchone()[0] for n in names}
    mem = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = line.split(":")[1].strip()
    cpu = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":")[1].strip()
                break
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu, "mem_total": mem, "kernel": platform.release(),
        "python": platform.python_version(), "psycopg": psycopg.__version__,
        "postgres": version, "settings": settings, "datadir": server.datadir,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, action="append", help="tokens in the table (repeatable)")
    ap.add_argument("--ours-batch-sizes", default="5000,1000")
    ap.add_argument("--insert-rate", type=float, default=200.0, help="concurrent INSERTs per second")
    ap.add_argument("--reference-seconds", type=float, default=30.0)
    ap.add_argument("--warmup-seconds", type=float, default=2.0)
    ap.add_argument("--slow-cap", type=float, default=600.0, help="seconds before the slow loop gives up")
    ap.add_argument("--ours-cap", type=float, default=900.0, help="statement_timeout (s) of each CALL")
    ap.add_argument("--ctid-pages", type=int, default=200, help="heap pages per batch of the ctid variant")
    ap.add_argument("--variants", default="reference,plain,slow,ours,ctid,explain")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "raw"))
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--expired-share", type=float, default=0.5,
                    help="interleaved layout: the share of tokens that are expired (coin toss per row)")
    ap.add_argument("--as-cleanup-role", action="store_true",
                    help="run every variant as a role with exactly the cron job's grants (infra.token_cleanup)")
    ap.add_argument("--layout", choices=("interleaved", "clustered"), default="interleaved",
                    help="interleaved: expired/live by coin toss on every page; clustered: creation order, "
                    "expires_at = created_at + 168 h (expired rows are the first half of the heap)")
    args = ap.parse_args()
    sizes = args.rows or [1_000_000]
    variants = args.variants.split(",")
    batch_sizes = [int(b) for b in args.ours_batch_sizes.split(",")]
    os.makedirs(args.out, exist_ok=True)

    server = LocalPostgres(extra_settings={**DURABLE_SETTINGS, **OBSERVATION_SETTINGS}).start()
    try:
        machine = machine_info(server)
        with admin(server) as a:
            a.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(CLEANUP_ROLE), sql.Literal(CLEANUP_PASSWORD)))
        log(f"server up: {machine['postgres']}")
        for rows in sizes:
            tmpl = f"tmpl_{rows}"
            log(f"== {rows:,} tokens: building the template database")
            data = build_template(server, tmpl, rows, args.layout, args.expired_share)
            log(
                f"  {data['tokens']:,} tokens, {data['expired']:,} expired, heap "
                f"{data['heap_bytes'] / 2**20:.0f} MiB, indexes {data['indexes_bytes'] / 2**20:.0f} MiB, "
                f"{data['build_seconds']:.0f} s"
            )
            ctx = {
                "expired": data["expired"], "slow_cap": args.slow_cap, "ours_cap": args.ours_cap, "insert_rate": args.insert_rate,
                "warmup_s": args.warmup_seconds, "reference_s": args.reference_seconds,
                "as_role": args.as_cleanup_role,
            }
            plan: list[tuple[str, str, dict[str, Any]]] = []
            if "reference" in variants:
                plan.append(("reference", "reference", {}))
            if "plain" in variants:
                plan.append(("plain", "plain", {}))
            if "slow" in variants:
                plan.append(("slow", "slow", {}))
            if "ours" in variants:
                for b in batch_sizes:
                    plan.append((f"ours_{b}", "ours", {"batch_size": b}))
            if "ctid" in variants:
                plan.append((f"ctid_{args.ctid_pages}p", "ctid", {"ctid_pages": args.ctid_pages}))
            if "keyset" in variants:
                for b in batch_sizes:
                    plan.append((f"keyset_{b}", "ours", {"batch_size": b, "proc": KEYSET_PROC}))
            # Suggestions measured without touching sql/: the cleanup session with
            # synchronous_commit = off (the inserts stay synchronous).
            # The shipped procedure commits each batch with synchronous_commit = off; `ours_sync`
            # runs a copy of it without that SET LOCAL, to measure what it buys.
            if "ours_sync" in variants:
                for b in batch_sizes:
                    plan.append((f"ours_{b}_sync", "ours", {"batch_size": b, "sync_proc": True}))
            if "ours_async" in variants:
                for b in batch_sizes:
                    plan.append((f"ours_{b}_async", "ours", {"batch_size": b, "async_commit": True}))
            if "ctid_async" in variants:
                plan.append((f"ctid_{args.ctid_pages}p_async", "ctid",
                             {"ctid_pages": args.ctid_pages, "async_commit": True}))
            results: dict[str, Any] = {}
            out_path = Path(args.out) / f"cleanup_{rows}{'_' + args.tag if args.tag else ''}.json"
            doc = {
                "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "command": " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
                "machine": machine, "data": data, "insert_rate_per_s": args.insert_rate,
                "slow_cap_s": args.slow_cap, "results": results,
            }
            for vname, kind, extra in plan:
                log(f"  variant {vname}")
                r = run_variant(server, tmpl, f"run_{vname}", kind, {**ctx, **extra})
                results[vname] = r
                il = r["insert_latency"]["service_ms"]
                log(
                    f"    [{r['session_role']}, load {r['loadavg_before'][0]:.2f}] {' '.join(r.get('mode') or [])}")
                log(
                    f"    total {r['total_s']:.2f} s, deleted {r['rows_deleted']:,} in {r['batches']} txn(s), "
                    f"longest txn {r['longest_txn_ms'] or 0:.1f} ms, insert p50 {il.get('p50') or 0:.2f} "
                    f"p99 {il.get('p99') or 0:.2f} max {il.get('max') or 0:.2f} ms, "
                    f"left {r['expired_rows_left']}, complete {r['complete']}"
                )
                out_path.write_text(json.dumps(doc, indent=1, default=str))
            if "probe" in variants:
                log("  plan probe of the procedure's DELETE")
                doc["probe_delete_plans"] = probe_plans(server, tmpl, "run_probe", batch_sizes[0])
                out_path.write_text(json.dumps(doc, indent=1, default=str))
            if "explain" in variants:
                log("  explain pass (auto_explain) for ours")
                doc["explain_ours"] = explain_ours(server, tmpl, "run_explain", batch_sizes[0], args.ours_cap)
                pb = doc["explain_ours"]["per_batch"]
                kinds: dict[str, list[int]] = {}
                for b in pb:
                    kinds.setdefault(f"DELETE {b['delete_plan']} / SELECT {b['select_plan']}", []).append(b["batch"])
                for k, v in kinds.items():
                    log(f"    {k}: {len(v)} batches ({v[0]}..{v[-1]})")
                if pb:
                    log(f"    slowest DELETE {max(b['delete_ms'] for b in pb):.1f} ms, slowest SELECT "
                        f"{max(b['select_ms'] for b in pb):.1f} ms (instrumented)")
            out_path.write_text(json.dumps(doc, indent=1, default=str))
            log(f"  wrote {out_path}")
            drop_db(server, tmpl)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
