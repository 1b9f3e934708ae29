"""PostgreSQL environment of the customer insights platform.

Read and validate the config and the migrations, reach a server (a container, or an existing one),
compose the components on it, export connection details.
"""

from pathlib import Path

import pulumi

from infra import config as stack_config
from infra import dependency_order, server_access, token_cleanup
from infra.components.database import DatabaseAndRoles, DatabaseAndRolesArgs, TablePrivileges, TablePrivilegesArgs
from infra.components.migrations import Migrations, MigrationsArgs, RehearsalArgs
from infra.components.privileges import PrivilegeSequence
from infra.components.protection import DataProtection
from infra.components.scheduled_job import ScheduledJobArgs
from infra.config import RolePurpose
from infra.dynamic.adoption import AdoptedHistory

# The SDK's own cycle check walks the whole migration chain for every migration (quadratic, recursive):
# replaced by a ranked one before anything is declared (see infra/dependency_order.py).
dependency_order.install()
namespace, stack = pulumi.get_project(), pulumi.get_stack()
pulumi_config = pulumi.Config()
cfg = stack_config.load(pulumi_config, namespace=namespace, stack=stack,
                        docker_host=pulumi.Config("docker").get("host"))
migrations_dir = Path(__file__).resolve().parent / cfg.migrations.directory
migration_files = stack_config.checked_migrations(migrations_dir, cfg.migrations, namespace)
checkpoint = stack_config.checked_checkpoint(migrations_dir, migration_files, namespace)

# The server, and how Pulumi reaches it as an administrator (checked before anything is declared).
access = server_access.reach(cfg, pulumi_config, migration_files, project=namespace, stack=stack)

# One sequence for every grant of the program: no two privilege changes on one catalog row run at once.
privileges = PrivilegeSequence()
db = DatabaseAndRoles(
    "app-db",
    DatabaseAndRolesArgs(admin=access.admin, admin_is_superuser=access.admin_is_superuser, database=cfg.database,
                         roles=cfg.roles, password_length=cfg.password_length, privileges=privileges,
                         protect_data=cfg.protect_data, keep_data_on_destroy=cfg.keep_data_on_destroy,
                         password_keepers={purpose: cfg.rotation_keepers(purpose) for purpose in RolePurpose},
                         after=[access.claim] if access.claim else [], adopted=access.adopted),
)

# Adoption: the other tool's history recorded as applied files, before the first migration looks.
history = (AdoptedHistory("adopted-history", connection=db.connection_for(RolePurpose.OWNER), tool=cfg.adoption.tool,
                          files=migration_files, opts=pulumi.ResourceOptions(depends_on=[db]))
           if cfg.adoption is not None else None)

# `pulumi preview` rehearses pending migrations on a scratch database (docs/rehearsal.md).
rehearsal = RehearsalArgs(
    admin=access.admin, roles=list(cfg.roles.all()), image=cfg.rehearsal.scratch.image, limits=cfg.migrations.limits,
    read_timeout_ms=cfg.rehearsal.read_timeout_ms, admin_reads_target=access.admin_is_superuser,
    scratch_on_server=access.own_container,
    scratch_url=pulumi_config.require_secret(key) if (key := cfg.rehearsal.scratch.url_key) else None,
) if cfg.rehearsal.enabled else None

migrations = Migrations(
    "schema",
    MigrationsArgs(
        migrations=migration_files,
        directory=str(migrations_dir),
        connection=db.connection_for(RolePurpose.OWNER),
        accept_checksums=cfg.migrations.accept_checksums,
        keep_data_on_destroy=cfg.keep_data_on_destroy,
        allow_out_of_order=cfg.migrations.allow_out_of_order,
        fixes=stack_config.migration_fixes(namespace),
        limits=cfg.migrations.limits,  # in `up` as in the preview's rehearsal
        after=[db, *([history] if history else [])],
        rehearsal=rehearsal,
        checkpoint=checkpoint,
    ),
    # Reverting a migration drops data: protected with the database (children inherit `protect`).
    opts=pulumi.ResourceOptions(protect=cfg.protect_data),
)

# The exceptions to the default privileges (secret columns, migration history, the procedure).
table_privileges = TablePrivileges(
    "table-privileges",
    TablePrivilegesArgs(provider=db.provider, database=db.database.name, roles=db.roles, after=migrations.applied,
                        privileges=privileges, adopted_tables=history.tables if history else None),
)

cleanup = token_cleanup.TokenCleanupJob(
    "token-cleanup",
    ScheduledJobArgs(
        provider=db.provider,
        cron_connection=access.admin.to_database(access.cron_database),
        database=db.database.name,
        run_as=db.roles[RolePurpose.CLEANUP].name,
        job_name=cfg.cleanup_job.name,
        schedule=cfg.cleanup_job.schedule,
        command=token_cleanup.command(cfg.cleanup_job.batch_size),
        enabled=cfg.cleanup_job.enabled,
        grants=token_cleanup.GRANTS,
        after=migrations.applied,
        privileges=privileges,
        keep_extension_on_destroy=not access.own_container,
        history_readers=[db.roles[RolePurpose.OWNER].name, db.roles[RolePurpose.READONLY].name],
    ),
)

# protectData: `pulumi destroy` stops before it deletes anything (see DataProtection for why this is needed).
DataProtection("protectData", cfg.protect_data,
               [*access.resources, db, *([history] if history else []), *migrations.applied, table_privileges, cleanup])

connections = {purpose.value: db.connection_for(purpose) for purpose in RolePurpose}
pulumi.export("mode", cfg.mode)
pulumi.export("host", access.admin.host)
pulumi.export("port", access.admin.port)
pulumi.export("database", db.database.name)
pulumi.export("roles", {purpose: c.user for purpose, c in connections.items()})
# Secret as a whole, not only value by value: tools reading the outputs see it is a credential.
pulumi.export("connection_urls",
              pulumi.Output.secret(pulumi.Output.all(**{purpose: c.url() for purpose, c in connections.items()})))
pulumi.export("env", connections[RolePurpose.APP.value].env())
pulumi.export("migrations", migrations.versions)
# Where the owner and read-only roles read the job's runs (scripts/cleanup_history.py --cron-database).
pulumi.export("cleanup_job", {"name": cfg.cleanup_job.name, "schedule": cfg.cleanup_job.schedule,
                              "job_id": cleanup.job.job_id, "history_database": access.cron_database})
