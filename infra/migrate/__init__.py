"""Ordered SQL migrations for the customer insights PostgreSQL database.

    from infra.migrate import Migrator, load_migrations

    migrator = Migrator(conninfo, log=print)
    for m in load_migrations("sql"):
        record, adopted = migrator.apply(m)

Files: `sql/NNN_snake_name.sql` (+ optional `NNN_snake_name.down.sql`), see `files`. Tracking table:
`public.schema_migrations`, see `tracking`. Concurrency: a session-level advisory lock on the fixed
key `LOCK_KEY` (-4344450105921422089, derived from "customer-insights:schema_migrations"), see
`locking`. CLI: `python -m infra.migrate --help`.
"""

from .errors import (
    ChecksumMismatchError,
    LockTimeoutError,
    MigrationFailedError,
    MigrationFileError,
    MigrationsError,
)
from .files import (
    NO_TRANSACTION_MARKER,
    MigrationFile,
    checksum_of,
    is_transactional,
    load_migrations,
    next_migration_paths,
)
from .locking import LOCK_KEY, LOCK_NAME
from .runner import Migrator
from .statements import Statement, split_statements
from .tracking import AppliedMigration

__all__ = [
    "LOCK_KEY",
    "LOCK_NAME",
    "NO_TRANSACTION_MARKER",
    "AppliedMigration",
    "ChecksumMismatchError",
    "LockTimeoutError",
    "MigrationFailedError",
    "MigrationFile",
    "MigrationFileError",
    "MigrationsError",
    "Migrator",
    "Statement",
    "checksum_of",
    "is_transactional",
    "load_migrations",
    "next_migration_paths",
    "split_statements",
]
