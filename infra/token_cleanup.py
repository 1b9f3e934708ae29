"""The scheduled deletion of expired refresh tokens: what this program's pg_cron job runs, and its grants.

The table and the procedure come from the migrations (sql/007_*, sql/008_*); the job's role gets
exactly what the procedure needs and nothing more: delete from refresh_tokens (reading only the
columns its WHERE clause needs), record its runs, and call the procedure.
"""

from __future__ import annotations

from infra.components.scheduled_job import JobGrant, ScheduledJob

PROCEDURE = "delete_expired_refresh_tokens"
TOKENS = "refresh_tokens"
RUNS = "refresh_token_cleanup_runs"

GRANTS = (
    JobGrant("delete-tokens", "table", [TOKENS], ["DELETE"]),
    JobGrant("read-token-expiry", "column", [TOKENS], ["SELECT"], columns=["id", "expires_at"]),
    JobGrant("record-runs", "table", [RUNS], ["INSERT"]),
    JobGrant("call-procedure", "procedure", [PROCEDURE], ["EXECUTE"]),
)


def command(batch_size: int) -> str:
    """The job's SQL: one call of the procedure, deleting in batches of `batch_size` rows."""
    return f"CALL {PROCEDURE}(batch_size => {int(batch_size)})"


class TokenCleanupJob(ScheduledJob):
    """The ScheduledJob of this program, under the type token its stacks were created with."""

    TYPE = "customer-insights:db:TokenCleanupJob"
