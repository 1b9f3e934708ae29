"""PostgreSQL environment of the customer insights platform.

Read and validate the config, compose the four components, export connection details.
"""

from pathlib import Path

import pulumi
import pulumi_random as random

from infra import config as stack_config
from infra.components.database import (
    PURPOSES,
    AdminConnection,
    DatabaseAndRoles,
    DatabaseAndRolesArgs,
    TablePrivileges,
    TablePrivilegesArgs,
    connection_url,
)
from infra.components.migrations import Migrations, MigrationsArgs, checked_migrations
from infra.components.privileges import PrivilegeSequence
from infra.components.protection import DataProtection
from infra.components.scheduled_job import ScheduledJobArgs, TokenCleanupJob
from infra.components.server import PostgresServer, PostgresServerArgs, check_container_host, container_name
from infra.preflight import check_external_server

pulumi_config = pulumi.Config()
cfg = stack_config.load(pulumi_config, namespace=pulumi.get_project(), stack=pulumi.get_stack())
migrations_dir = str(Path(__file__).resolve().parent / cfg.migrations.directory)
checked_migrations(migrations_dir, cfg.migrations.accept_checksums)

if isinstance(cfg.server, stack_config.ExternalServer):
    admin_password = pulumi_config.require_secret(cfg.server.admin_password_key)
    facts = check_external_server(
        host=cfg.server.host, port=cfg.server.port, user=cfg.server.admin_user,
        password=pulumi_config.require(cfg.server.admin_password_key),
        dbname=cfg.server.admin_database, sslmode=cfg.server.sslmode,
    )
    cron_database = facts.cron_database
    container_resources: list[pulumi.Resource] = []
    admin = AdminConnection(
        host=cfg.server.host, port=cfg.server.port, username=cfg.server.admin_user, password=admin_password,
        sslmode=cfg.server.sslmode, database=cfg.server.admin_database, superuser=cfg.server.superuser,
    )
else:
    # Before anything is declared: the engine answers, the image is there and is PostgreSQL 15, the port is free.
    check_container_host(
        image=cfg.server.image, bind_address=cfg.server.bind_address, host_port=cfg.server.host_port,
        container=container_name("postgres", pulumi.get_stack()), docker_host=pulumi.Config("docker").get("host"),
    )
    superuser_password = random.RandomPassword("superuser-password", length=cfg.password_length, special=False)
    cron_database = cfg.database
    server = PostgresServer(
        "postgres",
        PostgresServerArgs(
            image=cfg.server.image, host_port=cfg.server.host_port, bind_address=cfg.server.bind_address,
            superuser=cfg.server.superuser, superuser_password=superuser_password.result,
            cron_database=cfg.database, protect_data=cfg.protect_data,
        ),
    )
    container_resources = [superuser_password, server]
    admin = AdminConnection(
        host=server.host, port=server.port, username=cfg.server.superuser, password=superuser_password.result,
        sslmode="disable", database="postgres", superuser=True,
    )

# One sequence for every grant of the program: no two privilege changes ever run at once.
privileges = PrivilegeSequence()
db = DatabaseAndRoles(
    "app-db",
    DatabaseAndRolesArgs(admin=admin, database=cfg.database, roles=cfg.roles, password_length=cfg.password_length,
                         privileges=privileges, protect_data=cfg.protect_data,
                         password_keepers={purpose: cfg.rotation_keepers(purpose) for purpose in PURPOSES}),
)
owner = db.credentials["owner"]

migrations = Migrations(
    "schema",
    MigrationsArgs(
        directory=migrations_dir,
        connection={
            "host": admin.host, "port": admin.port, "dbname": db.database.name,
            "user": owner.username, "password": owner.password, "sslmode": admin.sslmode,
        },
        accept_checksums=cfg.migrations.accept_checksums,
        keep_data_on_destroy=cfg.migrations.keep_data_on_destroy,
        allow_out_of_order=cfg.migrations.allow_out_of_order,
        fixes=stack_config.migration_fixes(pulumi.get_project()),
        after=[db],
    ),
    # Reverting a migration drops data: protected with the database (children inherit `protect`).
    opts=pulumi.ResourceOptions(protect=cfg.protect_data),
)

# The exceptions to the default privileges (secret columns, migration history, the procedure).
table_privileges = TablePrivileges(
    "table-privileges",
    TablePrivilegesArgs(provider=db.provider, database=db.database.name, roles=db.roles, after=[migrations],
                        privileges=privileges),
)

cleanup = TokenCleanupJob(
    "token-cleanup",
    ScheduledJobArgs(
        provider=db.provider,
        admin_connection={
            "host": admin.host, "port": admin.port, "dbname": cron_database,
            "user": admin.username, "password": admin.password, "sslmode": admin.sslmode,
        },
        cron_database=cron_database,
        database=db.database.name,
        run_as=db.roles["cleanup"].name,
        job_name=cfg.cleanup_job.name,
        schedule=cfg.cleanup_job.schedule,
        enabled=cfg.cleanup_job.enabled,
        batch_size=cfg.cleanup_job.batch_size,
        after=[migrations],
        privileges=privileges,
        keep_extension_on_destroy=isinstance(cfg.server, stack_config.ExternalServer),
    ),
)

# protectData: `pulumi destroy` stops before it deletes anything (see DataProtection for why this is needed).
DataProtection("protectData", cfg.protect_data, [*container_resources, db, migrations, table_privileges, cleanup])

app = db.credentials["app"]
pulumi.export("mode", cfg.mode)
pulumi.export("host", admin.host)
pulumi.export("port", admin.port)
pulumi.export("database", db.database.name)
pulumi.export("roles", {purpose: c.username for purpose, c in db.credentials.items()})
# Secret as a whole, not only value by value: tools reading the outputs see it is a credential.
pulumi.export(
    "connection_urls",
    pulumi.Output.secret(pulumi.Output.all(**{
        purpose: connection_url(admin.host, admin.port, db.database.name, c.username, c.password)
        for purpose, c in db.credentials.items()
    })),
)
pulumi.export(
    "env",
    pulumi.Output.secret(
        pulumi.Output.all(admin.host, admin.port, db.database.name, app.password,
                          connection_url(admin.host, admin.port, db.database.name, app.username, app.password))
        .apply(lambda v: {
            "POSTGRES_HOST": str(v[0]), "POSTGRES_PORT": str(v[1]), "POSTGRES_DB": str(v[2]),
            "POSTGRES_USER": app.username, "POSTGRES_PASSWORD": str(v[3]), "DATABASE_URL": str(v[4]),
        })
    ),
)
pulumi.export("migrations", migrations.versions)
pulumi.export("cleanup_job", {"name": cfg.cleanup_job.name, "schedule": cfg.cleanup_job.schedule,
                              "job_id": cleanup.job.job_id})
