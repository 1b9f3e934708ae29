"""The scheduled deletion of expired refresh tokens, run by pg_cron inside PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_postgresql as postgresql

from infra.components.privileges import PrivilegeSequence
from infra.dynamic.cron_job import CronJob

CLEANUP_PROCEDURE = "delete_expired_refresh_tokens"


@dataclass
class ScheduledJobArgs:
    provider: postgresql.Provider  # admin connection, for the extension and the grants
    # admin connection to pg_cron's own database (the server's cron.database_name)
    admin_connection: dict[str, pulumi.Input[Any]]
    cron_database: pulumi.Input[str]
    database: pulumi.Input[str]  # where the job runs: the application database
    run_as: pulumi.Input[str]  # the token-cleanup role
    job_name: str
    schedule: str
    enabled: bool
    batch_size: int
    after: list[pulumi.Resource]  # the migrations that create the table and the procedure
    privileges: PrivilegeSequence  # see infra/components/privileges.py


class TokenCleanupJob(pulumi.ComponentResource):
    """pg_cron extension, the cleanup role's few grants, and the job itself.

    The role may delete from refresh_tokens (reading only the columns the WHERE clause needs),
    record its runs, and call the procedure: nothing more.
    """

    job: CronJob

    def __init__(self, name: str, args: ScheduledJobArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("customer-insights:db:TokenCleanupJob", name, None, opts)
        on_server = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.after)
        extension = postgresql.Extension(
            f"{name}-pg-cron", name="pg_cron", database=args.cron_database, opts=on_server
        )

        sequence = args.privileges
        grants = [
            sequence.then(postgresql.Grant(f"{name}-{grant_name}", database=args.database, role=args.run_as,
                                           schema="public", opts=sequence.options(on_server), **grant))
            for grant_name, grant in (
                ("delete-tokens", {"object_type": "table", "objects": ["refresh_tokens"], "privileges": ["DELETE"]}),
                ("read-token-expiry", {"object_type": "column", "objects": ["refresh_tokens"],
                                       "columns": ["id", "expires_at"], "privileges": ["SELECT"]}),
                ("record-runs", {"object_type": "table", "objects": ["refresh_token_cleanup_runs"],
                                 "privileges": ["INSERT"]}),
                ("call-procedure", {"object_type": "procedure", "objects": [CLEANUP_PROCEDURE],
                                    "privileges": ["EXECUTE"]}),
            )
        ]

        self.job = CronJob(
            name,
            connection=args.admin_connection,
            job_name=args.job_name,
            schedule=args.schedule,
            command=f"CALL {CLEANUP_PROCEDURE}(batch_size => {int(args.batch_size)})",
            database=args.database,
            run_as=args.run_as,
            active=args.enabled,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[extension, *grants, *args.after]),
        )
        self.register_outputs({"job_id": self.job.job_id, "schedule": self.job.schedule})
