#!/usr/bin/env python3
"""Application latency while a migration meets a blocker: without a lock timeout (the runner before
the statement limits) against the limits `pulumi up` now applies, in the same run.

    python bench/lock_benchmark.py [--blocker-seconds 20] [--rate 300] [--out bench/results/lock.json]

A throwaway PostgreSQL 15 cluster (devsupport/local_postgres.py), the real schema (sql/ applied by
infra.migrate) and 10,000 customers. For each variant, on the same server, one after the other:

  1. the application: single-row reads and writes of customers, alternating, on a fixed schedule of
     `--rate` queries a second from one connection; each query's latency is measured from its
     scheduled start (a query held up delays the ones after it: that wait counts too);
  2. after 2 s a blocker: a session that read customers in a transaction left open (ACCESS SHARE,
     as a report or a forgotten psql does), ended after `--blocker-seconds`;
  3. 1 s later the migration `ALTER TABLE customers ADD COLUMN ...` (a new column per variant),
     applied by `Migrator.apply` with the variant's StatementLimits;
  4. the application runs until 2 s after the migration is applied.

Reported per variant, over the window from the migration's start to its end: application latency
p50 / p99 / max, queries slower than 1 s, and the migration's attempts and duration. Variants:

  none      StatementLimits(lock_timeout_ms=None, lock_retries=0): the runner sets nothing, the ALTER
            waits as long as the blocker lives and every query of customers queues behind it
  default   StatementLimits(): the program's defaults (migrationLockTimeout, migrationLockRetries, ...)
  1s        StatementLimits(lock_timeout_ms=1000, lock_retries=6): a shorter wait, more attempts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devsupport.local_postgres import LocalPostgres  # noqa: E402
from infra.migrate import MigrationFile, Migrator, StatementLimits, checksum_of, load_migrations  # noqa: E402

VARIANTS: dict[str, StatementLimits] = {
    "none": StatementLimits(lock_timeout_ms=None, lock_retries=0),
    "5s": StatementLimits(lock_timeout_ms=5000, lock_retries=4),
    "2s": StatementLimits(lock_timeout_ms=2000, lock_retries=5),
    "1s": StatementLimits(lock_timeout_ms=1000, lock_retries=6),
    "500ms": StatementLimits(lock_timeout_ms=500, lock_retries=8),
}


class App:
    """Fixed-rate reads and writes of customers; latency from each query's scheduled start."""

    def __init__(self, dsn: str, ids: list[str], rate: float) -> None:
        self.dsn, self.ids, self.interval = dsn, ids, 1.0 / rate
        self.samples: list[tuple[float, float]] = []  # (scheduled start, latency from it)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="app") as conn:
            start = time.monotonic()
            n = 0
            while not self._stop.is_set():
                scheduled = start + n * self.interval
                now = time.monotonic()
                if scheduled > now:
                    time.sleep(scheduled - now)
                query = ("SELECT email FROM customers WHERE id = %s" if n % 2 else
                         "UPDATE customers SET last_seen_at = now() WHERE id = %s")
                try:
                    conn.execute(query, (self.ids[n % len(self.ids)],))
                except psycopg.Error:
                    self.errors += 1
                self.samples.append((scheduled, time.monotonic() - scheduled))
                n += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def window(self, start: float, end: float) -> list[float]:
        return sorted(d for s, d in self.samples if start <= s <= end)


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def migration(column: str) -> MigrationFile:
    text = f"ALTER TABLE customers ADD COLUMN {column} text;\n"
    version = str(900 + len(column))  # distinct per variant, above sql/
    return MigrationFile(version=version, name=column, filename=f"{version}_{column}.sql", up_sql=text,
                         down_sql=None, checksum=checksum_of(text), transactional=True)


def run_variant(dsn: str, ids: list[str], name: str, limits: StatementLimits, args: argparse.Namespace,
                index: int) -> dict[str, Any]:
    app = App(dsn, ids, args.rate)
    app.start()
    time.sleep(2)
    blocker = psycopg.connect(dsn, application_name="report")
    blocker.execute("SELECT count(*) FROM customers")
    released = threading.Timer(args.blocker_seconds, blocker.rollback)
    released.start()
    time.sleep(1)
    log: list[str] = []
    m = migration("bench_" + "x" * index)
    started = time.monotonic()
    error = None
    try:
        Migrator(dsn, limits=limits, log=log.append).apply(m)
    except Exception as exc:  # reported in the results: a benchmark run reports, it does not stop
        error = str(exc)
    ended = time.monotonic()
    time.sleep(2)
    app.stop()
    released.join()
    blocker.close()
    window = app.window(started, ended)
    return {
        "variant": name,
        "limits": limits.to_dict(),
        "migration_s": round(ended - started, 2),
        "attempts": 1 + sum("trying again" in line for line in log),
        "error": error,
        "queries": len(window),
        "app_errors": app.errors,
        "p50_ms": round(percentile(window, 50) * 1000, 2),
        "p99_ms": round(percentile(window, 99) * 1000, 1),
        "max_ms": round(window[-1] * 1000, 1),
        "over_1s": sum(d > 1 for d in window),
        "loadavg_before": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocker-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=300.0, help="application queries per second")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lock.json")
    args = parser.parse_args()
    server = LocalPostgres().start()
    try:
        dsn = server.address.dsn("postgres")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE lock_bench")
        dsn = server.address.dsn("lock_bench")
        Migrator(dsn).apply_all(load_migrations(REPO / "sql"))
        with psycopg.connect(dsn) as conn:
            org = conn.execute("INSERT INTO organizations (name) VALUES ('bench') RETURNING id").fetchone()[0]
            ids = [str(r[0]) for r in conn.execute(
                "INSERT INTO customers (organization_id, external_id, email, first_seen_at, last_seen_at) "
                "SELECT %s, 'ext-' || g, 'c' || g || '@example.com', now(), now() "
                "FROM generate_series(1, 10000) g RETURNING id", (org,)).fetchall()]
            conn.execute("ANALYZE customers")
        results = []
        for i, name in enumerate(args.variants.split(","), start=1):
            result = run_variant(dsn, ids, name, VARIANTS[name], args, i)
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        server.stop()
    report = {"run": uuid.uuid4().hex[:8], "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "blocker_seconds": args.blocker_seconds, "rate": args.rate, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'variant':<8} {'migration s':>11} {'attempts':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'>1 s':>5}")
    for r in results:
        print(f"{r['variant']:<8} {r['migration_s']:>11} {r['attempts']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
              f"{r['max_ms']:>8} {r['over_1s']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
