"""A job run by pg_cron inside PostgreSQL, with the few privileges its role needs to run it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pulumi
import pulumi_postgresql as postgresql

from infra.components.privileges import PrivilegeSequence, object_rows
from infra.connection import Connection
from infra.dynamic.cron_job import CronJob


@dataclass(frozen=True)
class JobGrant:
    """One privilege the job's role needs: a `postgresql.Grant` named `<job>-<name>`."""

    name: str
    object_type: str  # table, column, sequence, function, procedure, ...
    objects: Sequence[str]
    privileges: Sequence[str]
    columns: Sequence[str] | None = None  # object_type "column" only
    schema: str = "public"


@dataclass
class ScheduledJobArgs:
    provider: postgresql.Provider  # admin connection, for the extension and the grants
    # Admin connection to pg_cron's own database (the server's cron.database_name).
    cron_connection: Connection
    database: pulumi.Input[str]  # where the job runs
    run_as: pulumi.Input[str]  # the role the job runs as
    job_name: str
    schedule: str
    command: str
    enabled: bool
    grants: Sequence[JobGrant]  # exactly what `run_as` needs for `command`, in `database`
    after: Sequence[pulumi.Resource]  # what creates the objects the grants and the command name
    privileges: PrivilegeSequence  # see infra/components/privileges.py
    # A server shared with others (external mode) keeps pg_cron on destroy: other jobs may use it.
    keep_extension_on_destroy: bool = False
    # Roles that may read the job's run history (see infra/dynamic/cron_job.py), without any right on pg_cron.
    history_readers: Sequence[pulumi.Input[str]] = ()


class ScheduledJob(pulumi.ComponentResource):
    """The pg_cron extension, the job role's grants, and the job, created once all of them exist."""

    TYPE: ClassVar[str] = "customer-insights:db:ScheduledJob"

    job: CronJob

    def __init__(self, name: str, args: ScheduledJobArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.TYPE, name, None, opts)
        on_server = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.after))
        extension = postgresql.Extension(
            f"{name}-pg-cron", name="pg_cron", database=args.cron_connection.database,
            opts=pulumi.ResourceOptions.merge(on_server, pulumi.ResourceOptions(
                retain_on_delete=args.keep_extension_on_destroy)),
        )

        sequence = args.privileges
        grants = [
            sequence.then(postgresql.Grant(
                f"{name}-{g.name}", database=args.database, role=args.run_as, schema=g.schema,
                object_type=g.object_type, objects=list(g.objects),
                columns=list(g.columns) if g.columns is not None else None, privileges=list(g.privileges),
                opts=sequence.options(on_server, object_rows(g.object_type, g.schema, g.objects)),
            ), object_rows(g.object_type, g.schema, g.objects))
            for g in args.grants
        ]

        self.job = CronJob(
            name,
            connection=args.cron_connection,
            job_name=args.job_name,
            schedule=args.schedule,
            command=args.command,
            database=args.database,
            run_as=args.run_as,
            active=args.enabled,
            history_readers=pulumi.Output.all(*args.history_readers) if args.history_readers else None,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[extension, *grants, *args.after]),
        )
        self.register_outputs({"job_id": self.job.job_id, "schedule": self.job.schedule})
