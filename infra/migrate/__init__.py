"""Ordered SQL migrations for a PostgreSQL database.

    from infra.migrate import Migrator, load_migrations

    Migrator(conninfo, log=print).apply_all(load_migrations("sql"))   # or .apply(m) file by file

Files: `sql/NNN_snake_name.sql` (+ optional `NNN_snake_name.down.sql`), see `files`. Tracking table:
`public.schema_migrations`, see `tracking`. Concurrency: a session-level advisory lock whose key derives
from the migrator's `lock_name` (`lock_key`), see `locking`. Limits: every statement runs under
`StatementLimits` (lock timeout, retries on lock_not_available with a growing wait, statement
timeout), see `session`. Order: a pending file below the highest applied version is refused
(`OutOfOrderMigrationError`) unless `Migrator(..., allow_out_of_order=True)`, see `runner`.
Errors state facts (file, version, checksums) and the ways out; a caller that offers a way to accept a
refusal words it in its own terms (`RefusedMigrationError.with_fix`).
Schemas: `catalog.snapshot` / `catalog.diff` (what a schema is made of, and every difference). Taking over
a database another tool migrated (knex, Flyway, dbmate, golang-migrate): `adoption`.
"""

from .checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointEntry,
    checkpoint_of,
    load_checkpoint,
    split_at_checkpoint,
    write_checkpoint,
)
from .errors import (
    ChecksumMismatchError,
    LockTimeoutError,
    MigrationBlockedError,
    MigrationFailedError,
    MigrationFileError,
    MigrationsError,
    OutOfOrderMigrationError,
    RefusedMigrationError,
    RenamedMigrationError,
)
from .files import (
    NO_TRANSACTION_MARKER,
    MigrationFile,
    checksum_of,
    is_transactional,
    load_migrations,
    next_migration_paths,
)
from .locking import DEFAULT_LOCK_NAME, lock_key
from .runner import DEFAULT_APPLICATION_NAME, Migrator, check_identity, check_order
from .session import CONNECT_TIMEOUT, StatementLimits, session_setup
from .statements import Statement, split_statements
from .tracking import AppliedMigration, highest_of

__all__ = [
    "CHECKPOINT_FILE",
    "CONNECT_TIMEOUT",
    "DEFAULT_APPLICATION_NAME",
    "DEFAULT_LOCK_NAME",
    "NO_TRANSACTION_MARKER",
    "AppliedMigration",
    "Checkpoint",
    "CheckpointEntry",
    "ChecksumMismatchError",
    "LockTimeoutError",
    "MigrationBlockedError",
    "MigrationFailedError",
    "MigrationFile",
    "MigrationFileError",
    "MigrationsError",
    "Migrator",
    "OutOfOrderMigrationError",
    "RefusedMigrationError",
    "RenamedMigrationError",
    "Statement",
    "StatementLimits",
    "check_identity",
    "check_order",
    "checkpoint_of",
    "checksum_of",
    "highest_of",
    "is_transactional",
    "load_checkpoint",
    "load_migrations",
    "lock_key",
    "next_migration_paths",
    "session_setup",
    "split_at_checkpoint",
    "split_statements",
    "write_checkpoint",
]
