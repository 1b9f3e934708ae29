"""How the program reaches its PostgreSQL server as an administrator: one function per mode, one typed value.

Each function checks the server first (infra/preflight.py), so nothing is declared for a server that
cannot host the stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pulumi
import pulumi_random as random
from psycopg import conninfo

from infra import preflight
from infra.components.database import AdoptedObjects
from infra.components.server import PostgresServer, PostgresServerArgs
from infra.config import ContainerServer, ExternalServer, StackConfig
from infra.connection import Connection
from infra.dynamic.stack_claim import StackClaim
from infra.migrate import MigrationFile

SERVER_NAME = "postgres"  # the container component's name; its container is SERVER_NAME-<stack>


@dataclass(frozen=True)
class ServerAccess:
    admin: Connection  # Pulumi's administrator connection to the server's admin database
    admin_is_superuser: bool
    cron_database: str  # the database pg_cron keeps its jobs in
    # The stack's own container: scratch databases may live on it, and pg_cron goes with it on destroy.
    own_container: bool
    # What makes or claims the server: protected with the data, and created before anything reaches it.
    resources: tuple[pulumi.Resource, ...]
    claim: StackClaim | None = None  # a shared server: the stack's database and role names, claimed first
    adopted: AdoptedObjects | None = None  # adoptFrom: what exists already


class SecretSource(Protocol):
    """What `pulumi.Config` offers for secrets: the plain value for a preflight, the Output for resources."""

    def require(self, key: str) -> str: ...
    def require_secret(self, key: str) -> pulumi.Output[str]: ...


def reach(cfg: StackConfig, secrets: SecretSource, files: list[MigrationFile], *,
          project: str, stack: str) -> ServerAccess:
    if isinstance(cfg.server, ExternalServer):
        return external_access(cfg, cfg.server, secrets, files, project=project, stack=stack)
    return container_access(cfg, cfg.server, stack=stack, project=project)


def container_access(cfg: StackConfig, server: ContainerServer, *, project: str, stack: str) -> ServerAccess:
    """The stack's own container, created with a generated superuser password."""
    container = f"{SERVER_NAME}-{stack}"
    preflight.check_container_host(server=server, container=container)
    password = random.RandomPassword("superuser-password", length=cfg.password_length, special=False)
    postgres = PostgresServer(SERVER_NAME, PostgresServerArgs(
        server=server, superuser_password=password.result, cron_database=cfg.database,
        container_name=container, volume_name=f"{container}-data",
        labels={"com.customer-insights.stack": stack, "com.customer-insights.project": project},
        protect_data=cfg.protect_data, keep_data_on_destroy=cfg.keep_data_on_destroy,
    ))
    admin = Connection(host=postgres.host, port=postgres.port, database="postgres", user=server.superuser,
                       password=password.result, sslmode="disable")
    return ServerAccess(admin=admin, admin_is_superuser=True, cron_database=cfg.database, own_container=True,
                        resources=(password, postgres))


def external_access(cfg: StackConfig, server: ExternalServer, secrets: SecretSource,
                    files: list[MigrationFile], *, project: str, stack: str) -> ServerAccess:
    """An existing server, shared with others: the stack claims its names there before anything else."""
    password = secrets.require(server.admin_password_key)
    facts = preflight.check_external_server(server=server, password=password)
    adopted = None
    if cfg.adoption is not None:
        # The existing database and roles are imported; the schema is verified before anything is declared.
        existing_roles = preflight.check_adoptable(server=server, password=password, database=cfg.database,
                                                   owner=cfg.roles.owner, roles=list(cfg.roles.all()))
        scratch_key = cfg.adoption.scratch.url_key
        preflight.check_adoption_schema(
            target=conninfo.make_conninfo(host=server.host, port=server.port, user=server.admin_user,
                                          password=password, dbname=cfg.database, sslmode=server.sslmode),
            files=files, adoption=cfg.adoption, owner=cfg.roles.owner,
            scratch_url=secrets.require(scratch_key) if scratch_key else None, namespace=project)
        adopted = AdoptedObjects(existing_roles=existing_roles)
    admin = Connection(host=server.host, port=server.port, database=server.admin_database, user=server.admin_user,
                       password=secrets.require_secret(server.admin_password_key), sslmode=server.sslmode)
    claim = StackClaim("stack-claim", admin=admin, stack=f"{project}/{stack}", database=cfg.database,
                       roles=list(cfg.roles.all()), keep_on_destroy=cfg.keep_data_on_destroy)
    return ServerAccess(admin=admin, admin_is_superuser=server.superuser, cron_database=facts.cron_database,
                        own_container=False, resources=(claim,), claim=claim, adopted=adopted)
