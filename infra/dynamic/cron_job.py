"""A pg_cron job as a Pulumi resource: created, altered in place and unscheduled with the stack.

Its run history is readable by the roles it names (`history_readers`) without any privilege on
pg_cron's schema: a function `job_history."<job name>"(max_runs)` in pg_cron's database, SECURITY
DEFINER of the admin that scheduled the job, returns this job's rows of `cron.job_run_details` and
nothing else (pg_cron shows other users' runs only to a superuser). EXECUTE is revoked from PUBLIC
and granted to the readers, with USAGE on the schema and, when pg_cron's database is not the job's,
CONNECT on it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import psycopg
import pulumi
from psycopg import sql
from pulumi.dynamic import CreateResult, ReadResult, Resource, UpdateResult

from infra.connection import DATABASE, Connection, conninfo
from infra.dynamic.base import (
    DiffingProvider,
    ProviderFailure,
    password_kept_secret,
    renamed_from_generic_type,
    reported_create,
    reported_delete,
    reported_read,
    reported_update,
)

APPLICATION_NAME = "pulumi-cron-job"
HISTORY_SCHEMA = "job_history"


def history_function(job_name: str) -> sql.Composable:
    return sql.Identifier(HISTORY_SCHEMA, job_name)


def _grant_history(conn: psycopg.Connection[Any], props: dict[str, Any], job_id: int,
                   revoke_from: list[str] | None = None) -> None:
    """(Re)create the job's history function and grant it to exactly `history_readers`."""
    readers = list(props.get("history_readers") or [])
    function = history_function(props["job_name"])
    body = sql.SQL(
        "SELECT d.runid, d.status, d.start_time, d.end_time, d.return_message FROM cron.job_run_details d "
        "WHERE d.jobid = {} ORDER BY d.runid DESC LIMIT max_runs").format(sql.Literal(int(job_id))).as_string(conn)
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(HISTORY_SCHEMA)))
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(HISTORY_SCHEMA)))
        conn.execute(sql.SQL(
            "CREATE OR REPLACE FUNCTION {}(max_runs integer DEFAULT 20) "
            "RETURNS TABLE (runid bigint, status text, start_time timestamptz, end_time timestamptz, "
            "return_message text) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
            "AS {}").format(function, sql.Literal(body)))
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}(integer) FROM PUBLIC").format(function))
        for role in revoke_from or []:
            _revoke_history(conn, props, role)
        for role in readers:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(HISTORY_SCHEMA), sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {}(integer) TO {}").format(function, sql.Identifier(role)))
            if props[DATABASE] != props["database"]:
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(props[DATABASE]), sql.Identifier(role)))


def _revoke_history(conn: psycopg.Connection[Any], props: dict[str, Any], role: str) -> None:
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        return
    conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(
        sql.Identifier(HISTORY_SCHEMA), sql.Identifier(role)))
    if props[DATABASE] != props["database"]:
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(
            sql.Identifier(props[DATABASE]), sql.Identifier(role)))


def _connect(props: dict[str, Any]) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(conninfo(props, application_name=APPLICATION_NAME), autocommit=True)
    except psycopg.Error as e:
        raise ProviderFailure(f"cron job {props.get('job_name')!r}: cannot connect to the database: "
                              f"{e}".rstrip()) from None


def _failed(props: dict[str, Any], action: str, e: psycopg.Error) -> ProviderFailure:
    """PostgreSQL's refusal of a pg_cron call, as the job's own message (nothing was changed)."""
    diag = e.diag
    parts = [f"cron job {props.get('job_name')!r}: cannot {action}: {diag.message_primary or str(e).strip()}"]
    parts += [f"  {label}: {value}" for label, value in
              (("sqlstate", e.sqlstate), ("detail", diag.message_detail), ("hint", diag.message_hint)) if value]
    parts.append("  nothing was changed; fix the cause and run `pulumi up` again")
    return ProviderFailure("\n".join(parts))


class CronJobProvider(DiffingProvider):
    # pg_cron identifies a job by its id; a new name is a new job. Everything else is altered in
    # place with cron.alter_job.
    replace_keys: ClassVar[frozenset[str]] = frozenset({"job_name"})
    # New connection details are an in-place update (a harmless alter_job) so the state keeps the
    # credentials that delete and refresh will use.
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"job_id"})

    @reported_create
    def create(self, props: dict[str, Any]) -> CreateResult:
        with _connect(props) as conn:
            try:
                # One transaction: a job whose history grant fails is not left scheduled outside the state.
                with conn.transaction():
                    row = conn.execute(
                        "SELECT cron.schedule_in_database(%s, %s, %s, %s, %s, %s)",
                        (props["job_name"], props["schedule"], props["command"], props["database"],
                         props["run_as"], props["active"]),
                    ).fetchone()
                    assert row is not None
                    _grant_history(conn, props, int(row[0]))
            except psycopg.Error as e:
                raise _failed(props, "schedule it", e) from None
        pulumi.log.info(f"cron job {props['job_name']!r} scheduled as job {row[0]} ({props['schedule']})")
        return CreateResult(id_=str(row[0]), outs={**props, "job_id": int(row[0])})

    @reported_update
    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with _connect(news) as conn:
            try:
                if conn.execute("SELECT 1 FROM cron.job WHERE jobid = %s", (int(id_),)).fetchone() is None:
                    raise ProviderFailure(
                        f"cron job {news['job_name']!r}: cannot update job {id_}: it is no longer in cron.job "
                        "(unscheduled outside Pulumi); nothing was changed. Run `pulumi refresh` (the job "
                        "leaves the state), then `pulumi up` schedules it again"
                    )
                conn.execute(
                    "SELECT cron.alter_job(%s, schedule => %s, command => %s, database => %s,"
                    " username => %s, active => %s)",
                    (int(id_), news["schedule"], news["command"], news["database"], news["run_as"], news["active"]),
                )
                gone = sorted(set(olds.get("history_readers") or []) - set(news.get("history_readers") or []))
                _grant_history(conn, news, int(id_), revoke_from=gone)
            except psycopg.Error as e:
                raise _failed(news, f"update job {id_}", e) from None
        return UpdateResult(outs={**news, "job_id": int(id_)})

    @reported_delete
    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with _connect(props) as conn:
            try:
                exists = conn.execute("SELECT 1 FROM cron.job WHERE jobid = %s", (int(id_),)).fetchone()
                if exists:
                    conn.execute("SELECT cron.unschedule(%s::bigint)", (int(id_),))
                with conn.transaction():
                    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}(integer)").format(
                        history_function(props["job_name"])))
                    for role in props.get("history_readers") or []:
                        if conn.execute("SELECT to_regnamespace(%s)", (HISTORY_SCHEMA,)).fetchone() != (None,):
                            _revoke_history(conn, props, role)
                # The schema stays while another stack's job on this server keeps its function there.
                if conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = to_regnamespace(%s)",
                                (HISTORY_SCHEMA,)).fetchone() == (0,):
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(HISTORY_SCHEMA)))
            except psycopg.Error as e:
                raise _failed(props, f"unschedule job {id_}", e) from None

    @reported_read
    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with _connect(props) as conn:
            try:
                row = conn.execute(
                    "SELECT schedule, command, database, username, active FROM cron.job WHERE jobid = %s",
                    (int(id_),),
                ).fetchone()
            except psycopg.Error as e:
                raise _failed(props, f"read job {id_}", e) from None
        if row is None:
            return ReadResult(id_="", outs={})
        schedule, command, database, run_as, active = row
        return ReadResult(
            id_=id_,
            outs={**props, "schedule": schedule, "command": command, "database": database,
                  "run_as": run_as, "active": active},
        )


class CronJob(Resource, module="db", name="CronJob"):
    """A job in pg_cron's `cron.job`, run by `run_as` in `database` on `schedule`.

    Type `pulumi-python:dynamic/db:CronJob` (see `Migration`).
    """

    job_id: pulumi.Output[int]
    job_name: pulumi.Output[str]
    schedule: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        connection: Connection,
        job_name: pulumi.Input[str],
        schedule: pulumi.Input[str],
        command: pulumi.Input[str],
        database: pulumi.Input[str],
        run_as: pulumi.Input[str],
        active: pulumi.Input[bool],
        history_readers: pulumi.Input[list[str]] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "history_readers": history_readers or [],
            **connection.provider_inputs(),
            "job_name": job_name,
            "schedule": schedule,
            "command": command,
            "database": database,
            "run_as": run_as,
            "active": active,
            "job_id": None,
        }
        super().__init__(CronJobProvider(), resource_name, props,
                         renamed_from_generic_type(password_kept_secret(opts)))
