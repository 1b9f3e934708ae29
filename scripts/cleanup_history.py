"""The last runs of the token-cleanup job: status, duration and rows removed.

pg_cron records each run in cron.job_run_details (status, start and end); the cleanup procedure
records the rows it removed in refresh_token_cleanup_runs. This joins the two by time (a CALL by
hand within 30 s of a scheduled run can be mistaken for it).

    python scripts/cleanup_history.py --database-url "$ADMIN_URL" [--job NAME] [--limit 20]

The URL must reach the application database as a role that may read cron.job_run_details
(a superuser, or rds_superuser on RDS): pg_cron shows other users' runs only to them.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import datetime

import psycopg

QUERY = """
SELECT d.runid, d.status, d.start_time, d.end_time,
       extract(epoch FROM d.end_time - d.start_time) * 1000 AS duration_ms,
       r.rows_deleted, r.batches, d.return_message
FROM cron.job_run_details d
JOIN cron.job j ON j.jobid = d.jobid
LEFT JOIN LATERAL (
    -- pg_cron stamps start_time from its launcher, which may see the worker start only after the
    -- procedure has begun: take the procedure's run nearest to it. Runs of one job are at least a
    -- minute apart and never overlap, so a 30 s window cannot pick a neighbour's.
    SELECT c.rows_deleted, c.batches
    FROM refresh_token_cleanup_runs c
    WHERE c.started_at BETWEEN d.start_time - interval '30 seconds'
                           AND coalesce(d.end_time, now()) + interval '30 seconds'
    ORDER BY abs(extract(epoch FROM c.started_at - d.start_time))
    LIMIT 1
) r ON true
WHERE j.jobname = %(job)s
ORDER BY d.runid DESC
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Run:
    run_id: int
    status: str
    started: datetime | None
    duration_ms: float | None
    rows_deleted: int | None
    batches: int | None
    message: str | None


def history(database_url: str, job: str, limit: int = 20) -> list[Run]:
    with psycopg.connect(database_url, connect_timeout=15) as conn:
        rows = conn.execute(QUERY, {"job": job, "limit": limit}).fetchall()
    return [Run(r[0], r[1], r[2], float(r[4]) if r[4] is not None else None,
                int(r[5]) if r[5] is not None else None, int(r[6]) if r[6] is not None else None, r[7])
            for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--job", default="customer_insights-delete-expired-refresh-tokens")
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("pass --database-url or set DATABASE_URL")
    try:
        runs = history(args.database_url, args.job, args.limit)
    except psycopg.Error as exc:
        print(f"cannot read the run history of job {args.job!r}: {str(exc).strip()}\n"
              "Check --database-url (the cron database, as a role that may read cron.job_run_details)",
              file=sys.stderr)
        return 1
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
