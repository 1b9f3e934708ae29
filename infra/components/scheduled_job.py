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
    # A server shared with others (external mode) keeps pg_cron on destroy: other jobs may use it.
    keep_extension_on_destroy: bool = False


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
            f"{name}-pg-cron", name="pg_cron", database=args.cron_database,
            opts=pulumi.ResourceOptions.merge(on_server, pulumi.ResourceOptions(
                retain_on_delete=args.keep_extension_on_destroy)),
        )

        sequence = args.privileges

        def grant(suffix: str, object_type: str, objects: list[str], privileges: list[str],
                  columns: list[str] | None = None) -> postgresql.Grant:
            return sequence.then(postgresql.Grant(
                f"{name}-{suffix}", database=args.database, role=args.run_as, schema="public",
                object_type=object_type, objects=objects, columns=columns, privileges=privileges,
                opts=sequence.options(on_server),
            ))

        grants = [
            grant("delete-tokens", "table", ["refresh_tokens"], ["DELETE"]),
            grant("read-token-expiry", "column", ["refresh_tokens"], ["SELECT"], columns=["id", "expires_at"]),
            grant("record-runs", "table", ["refresh_token_cleanup_runs"], ["INSERT"]),
            grant("call-procedure", "procedure", [CLEANUP_PROCEDURE], ["EXECUTE"]),
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
