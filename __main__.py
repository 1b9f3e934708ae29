"""PostgreSQL environment of the customer insights platform.

Read and validate the config and the migrations, reach a server (a container, or an existing one),
compose the components on it, export connection details.
"""

from pathlib import Path

import pulumi
import pulumi_random as random
from psycopg import conninfo as psycopg_conninfo

from infra import config as stack_config
from infra import dependency_order, token_cleanup
from infra.components.database import (
    AdoptedObjects,
    DatabaseAndRoles,
    DatabaseAndRolesArgs,
    TablePrivileges,
    TablePrivilegesArgs,
)
from infra.components.migrations import Migrations, MigrationsArgs, RehearsalArgs
from infra.components.privileges import PrivilegeSequence
from infra.components.protection import DataProtection
from infra.components.scheduled_job import ScheduledJobArgs
from infra.components.server import PostgresServer, PostgresServerArgs, check_container_host, container_name
from infra.config import RolePurpose
from infra.connection import Connection
from infra.dynamic.adoption import AdoptedHistory
from infra.dynamic.stack_claim import StackClaim
from infra.preflight import check_adoptable, check_adoption_schema, check_external_server

# The SDK's own cycle check walks the whole migration chain for every migration (quadratic, recursive):
# replaced by a ranked one before anything is declared (see infra/dependency_order.py).
dependency_order.install()
namespace, stack = pulumi.get_project(), pulumi.get_stack()
pulumi_config = pulumi.Config()
cfg = stack_config.load(pulumi_config, namespace=namespace, stack=stack)
migrations_dir = Path(__file__).resolve().parent / cfg.migrations.directory
migration_files = stack_config.checked_migrations(migrations_dir, cfg.migrations, namespace)
checkpoint = stack_config.checked_checkpoint(migrations_dir, migration_files, namespace)

# The server, and how Pulumi reaches it as an administrator.
adopted: AdoptedObjects | None = None  # adoptFrom: what exists already
if isinstance(cfg.server, stack_config.ExternalServer):
    facts = check_external_server(
        host=cfg.server.host, port=cfg.server.port, user=cfg.server.admin_user,
        password=pulumi_config.require(cfg.server.admin_password_key),
        dbname=cfg.server.admin_database, sslmode=cfg.server.sslmode,
    )
    cron_database = facts.cron_database
    if cfg.adoption is not None:
        # adoptFrom: the existing database and roles are imported; the schema is verified before anything is declared.
        admin_password = pulumi_config.require(cfg.server.admin_password_key)
        found = check_adoptable(host=cfg.server.host, port=cfg.server.port, user=cfg.server.admin_user,
                                password=admin_password, sslmode=cfg.server.sslmode, database=cfg.database,
                                owner=cfg.roles.owner, roles=list(cfg.roles.all()))
        check_adoption_schema(
            target=psycopg_conninfo.make_conninfo(
                host=cfg.server.host, port=cfg.server.port, user=cfg.server.admin_user, password=admin_password,
                dbname=cfg.database, sslmode=cfg.server.sslmode),
            files=migration_files, tool=cfg.adoption.tool, owner=cfg.roles.owner, accept=cfg.adoption.accept,
            scratch_url=pulumi_config.get(cfg.adoption.scratch_url_key) if cfg.adoption.scratch_url_key else None,
            scratch_image=cfg.adoption.image, namespace=namespace)
        adopted = AdoptedObjects(existing_roles=found.existing_roles)
    admin = Connection(
        host=cfg.server.host, port=cfg.server.port, database=cfg.server.admin_database, user=cfg.server.admin_user,
        password=pulumi_config.require_secret(cfg.server.admin_password_key), sslmode=cfg.server.sslmode,
    )
    # A shared server: this stack claims its database and role names before anything reaches the server.
    server_resources: list[pulumi.Resource] = [StackClaim(
        "stack-claim", admin=admin, stack=f"{namespace}/{stack}", database=cfg.database, roles=list(cfg.roles.all()),
        keep_on_destroy=cfg.keep_data_on_destroy)]
    admin_is_superuser = cfg.server.superuser
else:
    # Before anything is declared: the engine answers, the image is there and is PostgreSQL 15, the port is free.
    check_container_host(
        image=cfg.server.image, bind_address=cfg.server.bind_address, host_port=cfg.server.host_port,
        container=container_name("postgres", stack), docker_host=pulumi.Config("docker").get("host"),
    )
    superuser_password = random.RandomPassword("superuser-password", length=cfg.password_length, special=False)
    cron_database = cfg.database
    server = PostgresServer(
        "postgres",
        PostgresServerArgs(
            image=cfg.server.image, host_port=cfg.server.host_port, bind_address=cfg.server.bind_address,
            superuser=cfg.server.superuser, superuser_password=superuser_password.result,
            cron_database=cfg.database, protect_data=cfg.protect_data,
            keep_data_on_destroy=cfg.keep_data_on_destroy,
        ),
    )
    server_resources = [superuser_password, server]
    admin = Connection(host=server.host, port=server.port, database="postgres", user=cfg.server.superuser,
                       password=superuser_password.result, sslmode="disable")
    admin_is_superuser = True

# One sequence for every grant of the program: no two privilege changes on one catalog row run at once.
privileges = PrivilegeSequence()
db = DatabaseAndRoles(
    "app-db",
    DatabaseAndRolesArgs(admin=admin, admin_is_superuser=admin_is_superuser, database=cfg.database,
                         roles=cfg.roles, password_length=cfg.password_length, privileges=privileges,
                         protect_data=cfg.protect_data, keep_data_on_destroy=cfg.keep_data_on_destroy,
                         password_keepers={purpose: cfg.rotation_keepers(purpose) for purpose in RolePurpose},
                         after=[r for r in server_resources if isinstance(r, StackClaim)], adopted=adopted),
)

# Adoption: the other tool's history recorded as applied files, before the first migration looks.
history = (AdoptedHistory("adopted-history", connection=db.connection_for(RolePurpose.OWNER), tool=cfg.adoption.tool,
                          files=migration_files, opts=pulumi.ResourceOptions(depends_on=[db]))
           if adopted is not None and cfg.adoption else None)

# The limits every migration statement runs under, in `up` and in the preview's rehearsal alike.
statement_limits = cfg.migrations.limits
# `pulumi preview` rehearses pending migrations on a scratch database (docs/rehearsal.md).
rehearsal = RehearsalArgs(
    admin=admin, roles=list(cfg.roles.all()), image=cfg.rehearsal.image, limits=statement_limits,
    read_timeout_ms=cfg.rehearsal.read_timeout_ms, admin_reads_target=admin_is_superuser,
    scratch_on_server=isinstance(cfg.server, stack_config.ContainerServer),
    scratch_url=pulumi_config.require_secret(cfg.rehearsal.scratch_url_key) if cfg.rehearsal.scratch_url_key else None,
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
        limits=statement_limits,
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
        cron_connection=admin.to_database(cron_database),
        database=db.database.name,
        run_as=db.roles[RolePurpose.CLEANUP].name,
        job_name=cfg.cleanup_job.name,
        schedule=cfg.cleanup_job.schedule,
        command=token_cleanup.command(cfg.cleanup_job.batch_size),
        enabled=cfg.cleanup_job.enabled,
        grants=token_cleanup.GRANTS,
        after=migrations.applied,
        privileges=privileges,
        keep_extension_on_destroy=isinstance(cfg.server, stack_config.ExternalServer),
        history_readers=[db.roles[RolePurpose.OWNER].name, db.roles[RolePurpose.READONLY].name],
    ),
)

# protectData: `pulumi destroy` stops before it deletes anything (see DataProtection for why this is needed).
DataProtection("protectData", cfg.protect_data,
               [*server_resources, db, *([history] if history else []), *migrations.applied, table_privileges, cleanup])

connections = {purpose.value: db.connection_for(purpose) for purpose in RolePurpose}
app = connections[RolePurpose.APP.value]
pulumi.export("mode", cfg.mode)
pulumi.export("host", admin.host)
pulumi.export("port", admin.port)
pulumi.export("database", db.database.name)
pulumi.export("roles", {purpose: c.user for purpose, c in connections.items()})
# Secret as a whole, not only value by value: tools reading the outputs see it is a credential.
pulumi.export("connection_urls",
              pulumi.Output.secret(pulumi.Output.all(**{purpose: c.url() for purpose, c in connections.items()})))
pulumi.export(
    "env",
    pulumi.Output.secret(
        pulumi.Output.all(app.host, app.port, app.database, app.user, app.password, app.url())
        .apply(lambda v: {
            "POSTGRES_HOST": str(v[0]), "POSTGRES_PORT": str(v[1]), "POSTGRES_DB": str(v[2]),
            "POSTGRES_USER": str(v[3]), "POSTGRES_PASSWORD": str(v[4]), "DATABASE_URL": str(v[5]),
        })
    ),
)
pulumi.export("migrations", migrations.versions)
# Where the owner and read-only roles read the job's runs (scripts/cleanup_history.py --cron-database).
pulumi.export("cleanup_job", {"name": cfg.cleanup_job.name, "schedule": cfg.cleanup_job.schedule,
                              "job_id": cleanup.job.job_id, "history_database": cron_database})
