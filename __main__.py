"""PostgreSQL environment of the customer insights platform.

Read and validate the config and the migrations, reach a server (a container, or an existing one),
compose the components on it, export connection details.
"""

from pathlib import Path

import pulumi
import pulumi_random as random

from infra import config as stack_config
from infra import dependency_order, token_cleanup
from infra.components.database import (
    PURPOSES,
    DatabaseAndRoles,
    DatabaseAndRolesArgs,
    TablePrivileges,
    TablePrivilegesArgs,
)
from infra.components.migrations import Migrations, MigrationsArgs
from infra.components.privileges import PrivilegeSequence
from infra.components.protection import DataProtection
from infra.components.scheduled_job import ScheduledJobArgs
from infra.components.server import PostgresServer, PostgresServerArgs, check_container_host, container_name
from infra.connection import Connection
from infra.dynamic.stack_claim import StackClaim
from infra.preflight import check_external_server

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
if isinstance(cfg.server, stack_config.ExternalServer):
    facts = check_external_server(
        host=cfg.server.host, port=cfg.server.port, user=cfg.server.admin_user,
        password=pulumi_config.require(cfg.server.admin_password_key),
        dbname=cfg.server.admin_database, sslmode=cfg.server.sslmode,
    )
    cron_database = facts.cron_database
    admin = Connection(
        host=cfg.server.host, port=cfg.server.port, database=cfg.server.admin_database, user=cfg.server.admin_user,
        password=pulumi_config.require_secret(cfg.server.admin_password_key), sslmode=cfg.server.sslmode,
    )
    # A shared server: this stack claims its database and role names before anything reaches the server.
    server_resources: list[pulumi.Resource] = [StackClaim(
        "stack-claim", admin=admin, stack=f"{namespace}/{stack}", database=cfg.database, roles=list(cfg.roles.all()),
        keep_on_destroy=cfg.migrations.keep_data_on_destroy)]
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
            keep_data_on_destroy=cfg.migrations.keep_data_on_destroy,
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
                         protect_data=cfg.protect_data, keep_data_on_destroy=cfg.migrations.keep_data_on_destroy,
                         password_keepers={purpose: cfg.rotation_keepers(purpose) for purpose in PURPOSES},
                         after=[r for r in server_resources if isinstance(r, StackClaim)]),
)

migrations = Migrations(
    "schema",
    MigrationsArgs(
        migrations=migration_files,
        directory=str(migrations_dir),
        connection=db.connection_for("owner"),
        accept_checksums=cfg.migrations.accept_checksums,
        keep_data_on_destroy=cfg.migrations.keep_data_on_destroy,
        allow_out_of_order=cfg.migrations.allow_out_of_order,
        fixes=stack_config.migration_fixes(namespace),
        after=[db],
        checkpoint=checkpoint,
    ),
    # Reverting a migration drops data: protected with the database (children inherit `protect`).
    opts=pulumi.ResourceOptions(protect=cfg.protect_data),
)

# The exceptions to the default privileges (secret columns, migration history, the procedure).
table_privileges = TablePrivileges(
    "table-privileges",
    TablePrivilegesArgs(provider=db.provider, database=db.database.name, roles=db.roles, after=migrations.applied,
                        privileges=privileges),
)

cleanup = token_cleanup.TokenCleanupJob(
    "token-cleanup",
    ScheduledJobArgs(
        provider=db.provider,
        cron_connection=admin.to_database(cron_database),
        database=db.database.name,
        run_as=db.roles["cleanup"].name,
        job_name=cfg.cleanup_job.name,
        schedule=cfg.cleanup_job.schedule,
        command=token_cleanup.command(cfg.cleanup_job.batch_size),
        enabled=cfg.cleanup_job.enabled,
        grants=token_cleanup.GRANTS,
        after=migrations.applied,
        privileges=privileges,
        keep_extension_on_destroy=isinstance(cfg.server, stack_config.ExternalServer),
    ),
)

# protectData: `pulumi destroy` stops before it deletes anything (see DataProtection for why this is needed).
DataProtection("protectData", cfg.protect_data, [*server_resources, db, *migrations.applied, table_privileges, cleanup])

connections = {purpose: db.connection_for(purpose) for purpose in PURPOSES}
app = connections["app"]
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
pulumi.export("cleanup_job", {"name": cfg.cleanup_job.name, "schedule": cfg.cleanup_job.schedule,
                              "job_id": cleanup.job.job_id})
