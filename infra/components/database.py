"""The application database, its least-privilege roles and their generated credentials."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pulumi
import pulumi_postgresql as postgresql
import pulumi_random as random

from infra.components.privileges import PrivilegeSequence, default_acl_row, object_rows
from infra.config import RoleNames, RolePurpose
from infra.connection import Connection
from infra.dynamic.adoption import RolePassword
from infra.migrate import tracking

TABLE_WRITE = ["SELECT", "INSERT", "UPDATE", "DELETE"]
SCHEMA = "public"
# The postgresql provider's connect timeout (seconds). It stays apart from the program's CONNECT_TIMEOUT:
# a change of it is a provider update on every deployed stack.
PROVIDER_CONNECT_TIMEOUT = 30

# Columns that hold credentials: the read-only role (analysts) never reads them. Every other column
# of these tables is granted column by column, so a column a later migration adds to one of them stays
# unreadable until it is listed here (fail closed); tests/e2e/test_security.py fails until then.
SECRET_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("password_hash",),  # bcrypt hashes: offline guessing of every user's password
    "refresh_tokens": ("token",),  # live bearer credentials: whoever reads one is that user
}
READONLY_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("id", "email", "first_name", "last_name", "role", "permissions", "organization_id",
              "created_at", "updated_at", "last_login_at"),
    "refresh_tokens": ("id", "user_id", "expires_at", "created_at"),
}


@dataclass
class DatabaseAndRolesArgs:
    # How Pulumi reaches the server as an administrator (container superuser or managed admin).
    admin: Connection
    admin_is_superuser: bool
    database: str
    roles: RoleNames
    password_length: int
    # Shared by every component that grants privileges: see infra/components/privileges.py.
    privileges: PrivilegeSequence
    # RandomPassword keepers per role purpose: a change makes that role a new password.
    password_keepers: Mapping[RolePurpose, Mapping[str, str] | None] = field(default_factory=dict)
    protect_data: bool = False  # Pulumi `protect` on the database: destroy and replacement stop
    # Destroy forgets the database and its roles instead of dropping them.
    keep_data_on_destroy: bool = False
    # Created before the admin provider, so nothing reaches the server before them (the stack's claim).
    after: Sequence[pulumi.Resource] = ()
    # An adoption: the existing database and roles are imported, not created.
    adopted: AdoptedObjects | None = None


@dataclass(frozen=True)
class AdoptedObjects:
    existing_roles: frozenset[str]  # imported; the others are created


class DatabaseAndRoles(pulumi.ComponentResource):
    """Database owned by the owner role; app, read-only and cleanup roles with only what they need.

    No role is a superuser or may create roles or databases; CONNECT is revoked from PUBLIC and
    granted per role; default privileges give tables the owner creates later the right grants.
    """

    TYPE: ClassVar[str] = "customer-insights:db:DatabaseAndRoles"

    provider: postgresql.Provider
    database: postgresql.Database
    roles: dict[RolePurpose, postgresql.Role]

    def __init__(self, name: str, args: DatabaseAndRolesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.TYPE, name, None, opts)
        self.provider = postgresql.Provider(
            f"{name}-admin",
            host=args.admin.host,
            port=args.admin.port,
            username=args.admin.user,
            password=args.admin.password,
            database=args.admin.database,
            sslmode=args.admin.sslmode,
            superuser=args.admin_is_superuser,
            connect_timeout=PROVIDER_CONNECT_TIMEOUT,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.after)),
        )
        on_server = pulumi.ResourceOptions(parent=self, provider=self.provider)

        self._admin = args.admin
        self._logins: dict[RolePurpose, tuple[str, pulumi.Output[str]]] = {}
        roles: dict[RolePurpose, postgresql.Role] = {}
        for purpose, role_name in args.roles.items():
            # New keepers replace only this RandomPassword; the Role (and whatever connects as it)
            # is updated in place with the new result: that is the whole rotation.
            password = random.RandomPassword(
                f"{name}-{purpose}-password",
                length=args.password_length,
                special=False,  # URL- and shell-safe; length gives the entropy
                keepers=args.password_keepers.get(purpose),
                opts=pulumi.ResourceOptions(parent=self),
            )
            adopted_role = args.adopted is not None and role_name in args.adopted.existing_roles
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
                # A kept database's tables are owned by the owner and carry the others' privileges
                # (default privileges): PostgreSQL refuses to drop a role while they exist.
                opts=pulumi.ResourceOptions.merge(on_server, pulumi.ResourceOptions(
                    retain_on_delete=args.keep_data_on_destroy,
                    # Imported: its provider cannot read the password back, RolePassword sets it.
                    import_=role_name if adopted_role else None,
                    ignore_changes=["password"] if args.adopted is not None else None)),
            )
            if args.adopted is not None:
                RolePassword(f"{name}-{purpose}-password-set", admin=args.admin, role=roles[purpose].name,
                             password=password.result,
                             opts=pulumi.ResourceOptions(parent=self, depends_on=[roles[purpose]]))
            self._logins[purpose] = (role_name, password.result)

        self.database = postgresql.Database(
            name,
            name=args.database,
            owner=roles[RolePurpose.OWNER].name,
            encoding="UTF8",
            lc_collate="C.UTF-8",
            lc_ctype="C.UTF-8",
            template="template0",
            connection_limit=-1,
            opts=pulumi.ResourceOptions.merge(on_server, pulumi.ResourceOptions(
                protect=args.protect_data, retain_on_delete=args.keep_data_on_destroy,
                # Adopted: created by someone else; how it was created (template, locale) is not read back.
                import_=args.database if args.adopted is not None else None,
                ignore_changes=["template", "lc_collate", "lc_ctype", "encoding"] if args.adopted else None)),
        )
        in_database = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self.database])

        grants = args.privileges
        on_database, on_schema = object_rows("database", SCHEMA, []), object_rows("schema", SCHEMA, [])
        # An empty privilege list revokes everything PUBLIC had on the database (CONNECT, TEMP).
        grants.then(postgresql.Grant(
            f"{name}-revoke-public",
            database=self.database.name,
            role="public",
            object_type="database",
            privileges=[],
            opts=grants.options(in_database, on_database),
        ), on_database)
        # The owner owns the database: it may connect and use the schema already.
        for purpose in (p for p in RolePurpose if p is not RolePurpose.OWNER):
            role = roles[purpose]
            grants.then(postgresql.Grant(
                f"{name}-{purpose}-connect",
                database=self.database.name,
                role=role.name,
                object_type="database",
                privileges=["CONNECT"],
                opts=grants.options(in_database, on_database),
            ), on_database)
            grants.then(postgresql.Grant(
                f"{name}-{purpose}-schema-usage",
                database=self.database.name,
                role=role.name,
                schema=SCHEMA,
                object_type="schema",
                privileges=["USAGE"],
                opts=grants.options(in_database, on_schema),
            ), on_schema)

        # Tables and sequences the owner creates later (the migrations) get these grants
        # automatically. The cleanup role gets none: its few grants name single objects.
        for purpose, object_type, privileges in (
            (RolePurpose.APP, "table", TABLE_WRITE),
            (RolePurpose.APP, "sequence", ["USAGE", "SELECT"]),
            (RolePurpose.READONLY, "table", ["SELECT"]),
            (RolePurpose.READONLY, "sequence", ["SELECT"]),
        ):
            default_acl = [default_acl_row(args.roles.owner, SCHEMA, object_type)]
            grants.then(postgresql.DefaultPrivileges(
                f"{name}-{purpose}-default-{object_type}",
                database=self.database.name,
                owner=roles[RolePurpose.OWNER].name,
                role=roles[purpose].name,
                schema=SCHEMA,
                object_type=object_type,
                privileges=privileges,
                opts=grants.options(in_database, default_acl),
            ), default_acl)

        self.roles = roles
        self.register_outputs({"database": self.database.name, "roles": {p.value: r.name for p, r in roles.items()}})

    def connection_for(self, purpose: RolePurpose) -> Connection:
        """How `purpose`'s role reaches the application database."""
        user, password = self._logins[purpose]
        return self._admin.to_database(self.database.name).as_user(user, password)


@dataclass
class TablePrivilegesArgs:
    provider: postgresql.Provider
    database: pulumi.Input[str]
    roles: Mapping[RolePurpose, postgresql.Role]  # from DatabaseAndRoles
    after: Sequence[pulumi.Resource]  # the migrations that create the tables and the procedure
    privileges: PrivilegeSequence
    # Tables another tool made (adoption): the owner's default privileges never applied to them.
    adopted_tables: pulumi.Input[Sequence[str]] | None = None


class TablePrivileges(pulumi.ComponentResource):
    """What the schema-wide default privileges must not give: the exceptions, on named objects.

    - The read-only role reads `users` and `refresh_tokens` column by column, never the secret
      columns. Column privileges rather than views: nothing is added to the schema, queries naming
      columns keep working, `SELECT *` fails loudly instead of silently hiding a column, a new
      column stays unreadable until listed, and no view runs with its owner's rights.
    - The migration history is written by the owner alone: the application role gets nothing on it
      (it needs no migration history; the stack output `migrations` lists the applied versions).
      The read-only role keeps reading it. The cleanup role never had any privilege on it.
    (The cleanup procedure needs no exception here: its migration, 008, revokes EXECUTE from PUBLIC,
    and the job grants it to the cleanup role.)

    A Grant with no privileges runs `REVOKE ALL` on its objects and keeps them so: this is how an
    existing stack converges with one `pulumi up`, whatever the default privileges gave before.
    REVOKE ALL on a table also drops that role's column grants, so each column grant is declared
    after its table's revoke (and the shared sequence keeps that order on update and destroy too).
    """

    TYPE: ClassVar[str] = "customer-insights:db:TablePrivileges"

    def __init__(self, name: str, args: TablePrivilegesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.TYPE, name, None, opts)
        on_server = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.after))
        seq = args.privileges

        def grant(resource_name: str, **kwargs: Any) -> postgresql.Grant:
            # Objects known only at run time (the adopted tables) count as every relation of the schema.
            objects = kwargs["objects"] if isinstance(kwargs["objects"], list) else []
            rows = object_rows(kwargs["object_type"], SCHEMA, objects)
            return seq.then(postgresql.Grant(f"{name}-{resource_name}", database=args.database, schema=SCHEMA,
                                             opts=seq.options(on_server, rows), **kwargs), rows)

        readonly = args.roles[RolePurpose.READONLY].name
        for table, columns in READONLY_COLUMNS.items():
            grant(f"readonly-{table}-revoke", role=readonly, object_type="table", objects=[table], privileges=[])
            grant(f"readonly-{table}-columns", role=readonly, object_type="column", objects=[table],
                  columns=list(columns), privileges=["SELECT"])
        grant("app-history-revoke", role=args.roles[RolePurpose.APP].name, object_type="table",
              objects=[tracking.TABLE], privileges=[])
        if args.adopted_tables is not None:
            # What the default privileges give a table the owner creates (secret-column tables: above).
            grant("app-adopted-tables", role=args.roles[RolePurpose.APP].name, object_type="table",
                  objects=args.adopted_tables, privileges=TABLE_WRITE)
            grant("readonly-adopted-tables", role=readonly, object_type="table", privileges=["SELECT"],
                  objects=pulumi.Output.from_input(args.adopted_tables).apply(
                      lambda ts: [t for t in ts or [] if t not in READONLY_COLUMNS]))
        self.register_outputs({})
