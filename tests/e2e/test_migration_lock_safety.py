"""`pulumi up` applies an `ALTER TABLE customers` while the application works and another session
holds a conflicting lock: the application is never held up much longer than one lock timeout, the
migration is retried and names its blocker, and gives up cleanly when the blocker outlives every retry.

Real Pulumi CLI/engine, the whole program in container mode (real Docker, real PostgreSQL); the
limits come from the stack's config keys. The application's wait without a lock timeout (as long as
the blocker lives) is measured by bench/lock_benchmark.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pulumi import automation as auto

from devsupport.local_postgres import free_port
from tests.e2e.test_full_stack import PROJECT, program

pytestmark = pytest.mark.e2e

LOCK_TIMEOUT_MS = 1000
RETRIES = 3  # 4 attempts, waits of 1, 2 and 4 s between them: about 11 s before up gives up
MARGIN_S = 1.5  # scheduling on a shared CI machine; the blocker lives several times longer than this
BLOCKER_APP = "nightly-report"


class Workload:
    """The application: reads and writes of single customers, a few hundred a second, from three
    threads (a connection each); each query's start and duration are kept."""

    def __init__(self, url: str, ids: list[str], threads: int = 3) -> None:
        self.url, self.ids = url, ids
        self.samples: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, first: int) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name="app") as conn:
            n = first
            while not self._stop.is_set():
                customer = self.ids[n % len(self.ids)]
                query = ("SELECT email FROM customers WHERE id = %s" if n % 2 else
                         "UPDATE customers SET last_seen_at = now() WHERE id = %s")
                started = time.monotonic()
                try:
                    conn.execute(query, (customer,))
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                self.samples.append((started, time.monotonic() - started))
                n += 3
                time.sleep(0.005)

    def __enter__(self) -> Workload:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def longest_between(self, start: float, end: float) -> float:
        return max(d for s, d in self.samples if start <= s <= end)

    def rate_between(self, start: float, end: float) -> float:
        return sum(1 for s, _ in self.samples if start <= s <= end) / (end - start)


@contextmanager
def blocker(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A report left idle in its transaction after reading customers: ACCESS SHARE until it ends,
    which every ALTER TABLE customers waits for (and every query queued behind that ALTER)."""
    conn = psycopg.connect(url, application_name=BLOCKER_APP)
    conn.execute("SELECT count(*) FROM customers")
    try:
        yield conn
    finally:
        conn.close()


def seed(url: str, count: int = 500) -> list[str]:
    with psycopg.connect(url) as conn:
        org = conn.execute("INSERT INTO organizations (name) VALUES ('lock-drill') RETURNING id").fetchone()[0]
        rows = conn.execute(
            "INSERT INTO customers (organization_id, external_id, email, first_seen_at, last_seen_at) "
            "SELECT %s, 'ext-' || g, 'c' || g || '@example.com', now(), now() FROM generate_series(1, %s) g "
            "RETURNING id", (org, count)).fetchall()
    return [str(r[0]) for r in rows]


def columns(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT column_name FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND table_name = 'customers'").fetchall()
    return {r[0] for r in rows}


def recorded(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}


def up(stack: auto.Stack) -> tuple[str, str | None, float, float]:
    """`pulumi up`: (its output, its error or None, when it started and ended)."""
    lines: list[str] = []
    started = time.monotonic()
    try:
        stack.up(color="never", on_output=lines.append)
        error = None
    except auto.errors.CommandError as exc:
        error = str(exc)
    return "".join(lines), error, started, time.monotonic()


def release_after(conn: psycopg.Connection[Any], owner: str, attempts_seen: int) -> threading.Thread:
    """Ends the blocker's transaction once the migration has failed `attempts_seen` times to get its
    lock (counted as the waits the migration's session started, sampled from another session)."""

    def run() -> None:
        waits, waiting = 0, False
        deadline = time.monotonic() + 120
        with psycopg.connect(owner, autocommit=True) as watch:
            while time.monotonic() < deadline:
                now = bool(watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'customer-insights-migrations' "
                    "AND wait_event_type = 'Lock'").fetchone()[0])
                if waiting and not now:
                    waits += 1
                    if waits >= attempts_seen:
                        break
                waiting = now
                time.sleep(0.05)
        conn.rollback()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_up_under_load_retries_behind_a_blocker_names_it_and_gives_up_cleanly(new_stack, sql_copy: Path):
    stack = new_stack(program, {k: auto.ConfigValue(value=str(v)) for k, v in {
        "protectData": "false", "hostPort": free_port(), "migrationsDir": sql_copy,
        "migrationLockTimeout": LOCK_TIMEOUT_MS, "migrationLockRetries": RETRIES, "migrationLockRetryDelay": 1000,
    }.items()}, project=PROJECT)
    outputs = {k: v.value for k, v in stack.up(color="never").outputs.items()}
    owner, app = outputs["connection_urls"]["owner"], outputs["connection_urls"]["app"]
    ids = seed(app)
    bound = LOCK_TIMEOUT_MS / 1000 + MARGIN_S

    # -- the blocker ends after the third failed attempt: up succeeds on the fourth.
    (sql_copy / "950_customers_add_tier.sql").write_text("ALTER TABLE customers ADD COLUMN tier text;\n")
    (sql_copy / "950_customers_add_tier.down.sql").write_text("ALTER TABLE customers DROP COLUMN tier;\n")
    with Workload(app, ids) as load, blocker(owner) as report:
        blocker_pid = report.info.backend_pid
        releaser = release_after(report, owner, attempts_seen=3)
        output, error, started, ended = up(stack)
        releaser.join(5)
    assert error is None, error[-4000:] if error else ""
    assert "tier" in columns(owner) and "950" in recorded(owner)
    for n in (1, 2, 3):
        assert f"950_customers_add_tier.sql, line 1: canceling statement due to lock timeout (attempt {n} of 4)" \
               in output, output[-4000:]
    assert f"pid {blocker_pid} (application_name '{BLOCKER_APP}'" in output
    assert "state 'idle in transaction', transaction open for" in output
    assert "SELECT count(*) FROM customers" not in output  # the blocker's query text is never shown
    assert "Traceback" not in output
    assert not load.errors, load.errors[:3]
    assert load.rate_between(started, ended) > 100  # a few hundred a second (fewer on a loaded machine)
    assert load.longest_between(started, ended) < bound, (load.longest_between(started, ended), bound)

    # -- the blocker outlives every retry: up fails naming it; nothing of the file stays.
    (sql_copy / "951_customers_add_flag.sql").write_text("ALTER TABLE customers ADD COLUMN flag boolean;\n")
    (sql_copy / "951_customers_add_flag.down.sql").write_text("ALTER TABLE customers DROP COLUMN flag;\n")
    with Workload(app, ids) as load, blocker(owner) as report:
        output, error, started, ended = up(stack)
        blocker_pid = report.info.backend_pid
    assert error is not None, output[-4000:]
    assert "951_customers_add_flag.sql, line 1: canceling statement due to lock timeout" in error
    assert "gave up after 4 attempt(s)" in error
    assert f"pid {blocker_pid} (application_name '{BLOCKER_APP}'" in error
    assert "Nothing of the file stays" in error and "pg_terminate_backend" in error
    assert f"{PROJECT}:migrationLockTimeout" in error  # the program's way to allow a longer wait
    assert "flag" not in columns(owner) and "951" not in recorded(owner)
    assert not load.errors, load.errors[:3]
    assert load.longest_between(started, ended) < bound, (load.longest_between(started, ended), bound)

    # -- the blocker has ended: the next up applies it.
    output, error, _, _ = up(stack)
    assert error is None, error[-4000:] if error else ""
    assert "flag" in columns(owner) and "951" in recorded(owner)
    assert "Traceback" not in output
