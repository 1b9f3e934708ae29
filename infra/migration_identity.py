"""This program's names for its migration sessions and tools, one home for `pulumi up` (infra/dynamic),
the config checks and the CLI.

The library (`infra.migrate`) takes them as parameters; the same lock name makes a CLI run and an up
serialise, and the application names tell the sessions apart in pg_stat_activity.
"""

LOCK_NAME = "customer-insights:schema_migrations"
MIGRATOR_APPLICATION_NAME = "customer-insights-migrations"
ADOPTION_APPLICATION_NAME = "customer-insights-adoption"  # its sessions reading and recording another tool's history
CLI = "python -m infra.migrations_cli"
# How a user of this program mends what the library says of a file name or a checkpoint.
FILES_HINT = (f"`{CLI} new NAME` creates well-named files; `{CLI} checkpoint --through VERSION` writes a checkpoint "
              "again")
