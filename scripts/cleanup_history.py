"""The last runs of the token-cleanup job: status, start, duration, rows removed and error.

pg_cron records each run in cron.job_run_details (status, start and end, error), in its own database;
the cleanup procedure records the rows it removed in refresh_token_cleanup_runs, in the application
database. This joins the two by time (a CALL by hand within 30 s of a scheduled run can be mistaken
for it). The owner's and the read-only role's URLs from the stack outputs are enough: the stack gives
them the job's history function (`job_history."<job name>"()` in pg_cron's database, see
infra/dynamic/cron_job.py); an admin URL works too.

    python scripts/cleanup_history.py \
        --database-url "$(pulumi stack output --show-secrets connection_urls --json | jq -r .readonly)" \
        --job "$(pulumi stack output cleanup_job --json | jq -r .name)" \
        --cron-database "$(pulumi stack output cleanup_job --json | jq -r .history_database)"
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from infra.migrate import CONNECT_TIMEOUT

# The admin's way (a role that sees every user's runs): pg_cron's tables themselves.
DIRECT_QUERY = """
SELECT d.runid, d.status, d.start_time, d.end_time, d.return_message
FROM cron.job_run_details d JOIN cron.job j ON j.jobid = d.jobid
WHERE j.jobname = %(job)s ORDER BY d.runid DESC LIMIT %(limit)s
"""
# pg_cron stamps start_time from its launcher, which may see the worker start only after the procedure
# has begun: each run takes the procedure's record nearest to it within this window. Runs of one job
# are at least a minute apart and never overlap, so the window cannot pick a neighbour's.
MATCH_WINDOW = timedelta(seconds=30)


@dataclass(frozen=True)
class Run:
    run_id: int
    status: str
    started: datetime | None
    duration_ms: float | None
    rows_deleted: int | None
    batches: int | None
    message: str | None


def history(database_url: str, job: str, limit: int = 20, cron_database: str | None = None) -> list[Run]:
    """The job's last `limit` runs, newest first; pg_cron's database is `cron_database` (default: the URL's)."""
    cron_url = pg_conninfo.make_conninfo(database_url, dbname=cron_database) if cron_database else database_url
    with psycopg.connect(cron_url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        try:
            runs = conn.execute(sql.SQL("SELECT runid, status, start_time, end_time, return_message FROM {}(%s)")
                                .format(sql.Identifier("job_history", job)), (limit,)).fetchall()
        except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName):
            runs = conn.execute(DIRECT_QUERY, {"job": job, "limit": limit}).fetchall()
    recorded: list[Any] = []
    if runs:
        earliest = min(r[2] for r in runs if r[2]) - MATCH_WINDOW
        with psycopg.connect(database_url, connect_timeout=CONNECT_TIMEOUT) as conn:
            recorded = conn.execute("SELECT started_at, rows_deleted, batches FROM refresh_token_cleanup_runs "
                                    "WHERE started_at >= %s", (earliest,)).fetchall()
    out = []
    for runid, status, start, end, message in runs:
        near = [r for r in recorded if start and start - MATCH_WINDOW <= r[0] <= (end or datetime.now(r[0].tzinfo))
                + MATCH_WINDOW]
        best = min(near, key=lambda r: abs((r[0] - start).total_seconds()), default=None)
        out.append(Run(runid, status, start, (end - start).total_seconds() * 1000 if start and end else None,
                       int(best[1]) if best else None, int(best[2]) if best else None, message))
    return out


def _without_secrets(text: str, url: str) -> str:
    """The error without the URL or its password (libpq may echo either)."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        password = None
    for secret in (url, password):
        if secret:
            text = text.replace(str(secret), "***")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--job", default="customer_insights-delete-expired-refresh-tokens")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--cron-database", help="pg_cron's database (stack output cleanup_job.history_database); "
                        "default: the URL's")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("pass --database-url or set DATABASE_URL")
    try:
        runs = history(args.database_url, args.job, args.limit, args.cron_database)
    except psycopg.errors.InsufficientPrivilege as e:
        print(f"cleanup_history: this role may not read the job's run history ({e.diag.message_primary}). "
              "Use the owner's or the read-only role's URL from the stack outputs, with --cron-database "
              "(stack output cleanup_job.history_database) and --job (cleanup_job.name).", file=sys.stderr)
        return 2
    except psycopg.errors.UndefinedTable as e:
        print(f"cleanup_history: {e.diag.message_primary}: the URL must reach the application database "
              "(refresh_token_cleanup_runs), and --cron-database name pg_cron's database.", file=sys.stderr)
        return 2
    except psycopg.Error as e:  # a wrong URL, a refused login, an unreachable server
        print(f"cleanup_history: cannot read the history: {_without_secrets(str(e).strip(), args.database_url)}",
              file=sys.stderr)
        return 2
    print(f"{'run':>6}  {'status':<10} {'started (UTC)':<20} {'duration':>10} {'rows':>9} {'batches':>8}  message")
    for run in runs:
        started = run.started.strftime("%Y-%m-%d %H:%M:%S") if run.started else "-"
        duration = f"{run.duration_ms:.0f} ms" if run.duration_ms is not None else "-"
        print(f"{run.run_id:>6}  {run.status:<10} {started:<20} {duration:>10} "
              f"{run.rows_deleted if run.rows_deleted is not None else '-':>9} "
              f"{run.batches if run.batches is not None else '-':>8}  {run.message or ''}")
    if not runs:
        print(f"(no runs of job {args.job!r} yet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
