"""The application database, its least-privilege roles and their generated credentials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_postgresql as postgresql
import pulumi_random as random

from infra.components.privileges import PrivilegeSequence
from infra.config import RoleNames

TABLE_WRITE = ["SELECT", "INSERT", "UPDATE", "DELETE"]
SCHEMA = "public"


@dataclass
class AdminConnection:
    """How Pulumi reaches the server as an administrator (container superuser or managed admin)."""

    host: pulumi.Input[str]
    port: pulumi.Input[int]
    username: pulumi.Input[str]
    password: pulumi.Input[str]
    sslmode: str
    database: str
    superuser: bool


@dataclass
class DatabaseAndRolesArgs:
    admin: AdminConnection
    database: str
    roles: RoleNames
    password_length: int
    # Shared by every component that grants privileges: see infra/components/privileges.py.
    privileges: PrivilegeSequence


@dataclass
class RoleCredentials:
    username: str
    password: pulumi.Output[str]


class DatabaseAndRoles(pulumi.ComponentResource):
    """Database owned by the owner role; app, read-only and cleanup roles with only what they need.

    No role is a superuser or may create roles or databases; CONNECT is revoked from PUBLIC and
    granted per role; default privileges give tables the owner creates later the right grants.
    """

    provider: postgresql.Provider
    database: postgresql.Database
    credentials: dict[str, RoleCredentials]

    def __init__(self, name: str, args: DatabaseAndRolesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("customer-insights:db:DatabaseAndRoles", name, None, opts)
        self.provider = postgresql.Provider(
            f"{name}-admin",
            host=args.admin.host,
            port=args.admin.port,
            username=args.admin.username,
            password=args.admin.password,
            database=args.admin.database,
            sslmode=args.admin.sslmode,
            superuser=args.admin.superuser,
            connect_timeout=30,
            opts=pulumi.ResourceOptions(parent=self),
        )
        on_server = pulumi.ResourceOptions(parent=self, provider=self.provider)

        self.credentials = {}
        roles: dict[str, postgresql.Role] = {}
        for purpose, role_name in (
            ("owner", args.roles.owner),
            ("app", args.roles.app),
            ("readonly", args.roles.readonly),
            ("cleanup", args.roles.cleanup),
        ):
            password = random.RandomPassword(
                f"{name}-{purpose}-password",
                length=args.password_length,
                special=False,  # URL- and shell-safe; length gives the entropy
                opts=pulumi.ResourceOptions(parent=self),
            )
            roles[purpose] = postgresql.Role(
                f"{name}-{purpose}",
                name=role_name,
                login=True,
                password=password.result,
                superuser=False,
                create_database=False,
                create_role=False,
                replication=False,
                bypass_row_level_security=False,
                inherit=True,
                opts=on_server,
            )
            self.credentials[purpose] = RoleCredentials(role_name, password.result)

        self.database = postgresql.Database(
            name,
            name=args.database,
            owner=roles["owner"].name,
            encoding="UTF8",
            lc_collate="C.UTF-8",
            lc_ctype="C.UTF-8",
            template="template0",
            connection_limit=-1,
            opts=on_server,
        )
        in_database = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self.database])

        grants = args.privileges
        # An empty privilege list revokes everything PUBLIC had on the database (CONNECT, TEMP).
        grants.then(postgresql.Grant(
            f"{name}-revoke-public",
            database=self.database.name,
            role="public",
            object_type="database",
            privileges=[],
            opts=grants.options(in_database),
        ))
        for purpose in ("app", "readonly", "cleanup"):
            role = roles[purpose]
            grants.then(postgresql.Grant(
                f"{name}-{purpose}-connect",
                database=self.database.name,
                role=role.name,
                object_type="database",
                privileges=["CONNECT"],
                opts=grants.options(in_database),
            ))
            grants.then(postgresql.Grant(
                f"{name}-{purpose}-schema-usage",
                database=self.database.name,
                role=role.name,
                schema=SCHEMA,
                object_type="schema",
                privileges=["USAGE"],
                opts=grants.options(in_database),
            ))

        # Tables and sequences the owner creates later (the migrations) get these grants
        # automatically. The cleanup role gets none: its few grants name single objects.
        for purpose, object_type, privileges in (
            ("app", "table", TABLE_WRITE),
            ("app", "sequence", ["USAGE", "SELECT"]),
            ("readonly", "table", ["SELECT"]),
            ("readonly", "sequence", ["SELECT"]),
        ):
            grants.then(postgresql.DefaultPrivileges(
                f"{name}-{purpose}-default-{object_type}",
                database=self.database.name,
                owner=roles["owner"].name,
                role=roles[purpose].name,
                schema=SCHEMA,
                object_type=object_type,
                privileges=privileges,
                opts=grants.options(in_database),
            ))

        self.roles = roles
        self.register_outputs({"database": self.database.name, "roles": {k: r.name for k, r in roles.items()}})


def connection_url(host: pulumi.Input[str], port: pulumi.Input[int], database: pulumi.Input[str],
                   username: str, password: pulumi.Input[str]) -> pulumi.Output[str]:
    """A secret postgresql:// URL (the password percent-encoded, an IPv6 host bracketed)."""

    def url(v: list[Any]) -> str:
        host = f"[{v[0]}]" if ":" in str(v[0]) else str(v[0])
        return f"postgresql://{quote(username, safe='')}:{quote(str(v[3]), safe='')}@{host}:{v[1]}/{v[2]}"

    return pulumi.Output.secret(pulumi.Output.all(host, port, database, password).apply(url))
