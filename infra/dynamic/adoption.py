"""Taking over a database another migration tool built: the record of its history, and the role passwords.

`AdoptedHistory` records the files another tool's history covers as applied (infra.migrate.adoption),
once, before the first `Migration` resource runs: those then find their record and run nothing. The
schema was verified before the program declared anything (`__main__.py`); `create` reads the history
again under the migration lock. `RolePassword` sets an imported role's password to the generated one:
an imported `postgresql.Role` keeps the password it had (its provider cannot read it back), so the
stack's credentials would not work without it; rotation (`passwordRotation`) goes through it too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any, ClassVar

import psycopg
import pulumi
from psycopg import sql
from pulumi.dynamic import CreateResult, ReadResult, Resource, UpdateResult

from infra.connection import PASSWORD, USER, WIRE_KEYS, Connection, conninfo
from infra.dynamic.base import DiffingProvider, password_kept_secret
from infra.migrate import MigrationFile
from infra.migrate import adoption as adopt
from infra.migration_identity import ADOPTION_APPLICATION_NAME, LOCK_NAME

APPLICATION_NAME = "pulumi-adoption"
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, as `pg_authid.rolpassword`)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return (f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}$"
            f"{b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}")


def _files(props: dict[str, Any]) -> list[MigrationFile]:
    return [MigrationFile(version=f["version"], name=f["name"], filename=f["filename"], up_sql=f["up_sql"],
                          down_sql=None, checksum=f["checksum"], transactional=bool(f["transactional"]))
            for f in props["files"]]


class AdoptedHistoryProvider(DiffingProvider):
    # Recorded once; later changes of the connection, the files or the accepted differences change nothing.
    ignored_keys: ClassVar[frozenset[str]] = frozenset({*WIRE_KEYS, "files", "recorded", "tables"})

    def create(self, props: dict[str, Any]) -> CreateResult:
        target = conninfo(props, application_name=APPLICATION_NAME)
        plan = adopt.read_plan(target, _files(props), props["tool"], application_name=ADOPTION_APPLICATION_NAME)
        tables = adopt.tables(target, plan, application_name=ADOPTION_APPLICATION_NAME)
        recorded = adopt.record(plan, target, log=pulumi.log.info, lock_name=LOCK_NAME,
                                application_name=ADOPTION_APPLICATION_NAME)
        pulumi.log.info(f"adopted from {props['tool']}: {plan.summary()}")
        return CreateResult(id_=props["tool"], outs={**props, "recorded": recorded, "tables": tables})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "recorded": olds.get("recorded"), "tables": olds.get("tables")})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        pass  # the tracking rows belong to the migrations now; each Migration's delete handles its own

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)


class AdoptedHistory(Resource, module="db", name="AdoptedHistory"):
    """The other tool's history, recorded in the tracking table as applied files (see the module)."""

    recorded: pulumi.Output[list[str]]
    tables: pulumi.Output[list[str]]  # the tables the other tool made, as found when adopting

    def __init__(self, resource_name: str, *, connection: Connection, tool: str, files: list[MigrationFile],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {
            **connection.provider_inputs(), "tool": tool, "recorded": None, "tables": None,
            "files": [{"version": m.version, "name": m.name, "filename": m.filename, "up_sql": m.up_sql,
                       "checksum": m.checksum, "transactional": m.transactional} for m in files],
        }
        super().__init__(AdoptedHistoryProvider(), resource_name, props, password_kept_secret(opts))


class RolePasswordProvider(DiffingProvider):
    replace_keys: ClassVar[frozenset[str]] = frozenset({"role"})
    ignored_keys: ClassVar[frozenset[str]] = frozenset({*(set(WIRE_KEYS) - {PASSWORD}), "admin_user", "admin_password"})

    @staticmethod
    def _set(props: dict[str, Any]) -> None:
        admin = {**props, USER: props["admin_user"], PASSWORD: props["admin_password"]}
        with psycopg.connect(conninfo(admin, application_name=APPLICATION_NAME), autocommit=True) as conn:
            # A verifier, not the password: a server logging statements never sees the password itself.
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(props["role"]), sql.Literal(scram_verifier(props[PASSWORD]))))

    def create(self, props: dict[str, Any]) -> CreateResult:
        self._set(props)
        return CreateResult(id_=props["role"], outs=props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if olds.get(PASSWORD) != news.get(PASSWORD):
            self._set(news)
        return UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        pass  # the role itself is the postgresql.Role's

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)


class RolePassword(Resource, module="db", name="RolePassword"):
    """An adopted role's password set to the stack's generated one (see the module)."""

    def __init__(self, resource_name: str, *, admin: Connection, role: pulumi.Input[str],
                 password: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None) -> None:
        inputs = admin.provider_inputs()
        props: dict[str, Any] = {
            **inputs, "admin_user": inputs[USER], "admin_password": pulumi.Output.secret(inputs[PASSWORD]),
            "role": role, PASSWORD: pulumi.Output.secret(password),
        }
        super().__init__(RolePasswordProvider(), resource_name, props, pulumi.ResourceOptions.merge(
            password_kept_secret(opts), pulumi.ResourceOptions(additional_secret_outputs=["admin_password"])))
