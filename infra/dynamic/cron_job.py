"""A pg_cron job as a Pulumi resource: created, altered in place and unscheduled with the stack."""

from __future__ import annotations

from typing import Any, ClassVar

import psycopg
import pulumi
from pulumi.dynamic import CreateResult, ReadResult, Resource, UpdateResult

from infra.connection import Connection, conninfo
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
                row = conn.execute(
                    "SELECT cron.schedule_in_database(%s, %s, %s, %s, %s, %s)",
                    (props["job_name"], props["schedule"], props["command"], props["database"],
                     props["run_as"], props["active"]),
                ).fetchone()
            except psycopg.Error as e:
                raise _failed(props, "schedule it", e) from None
        assert row is not None
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
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
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
