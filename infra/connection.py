"""One database connection: the value components pass around and the inputs dynamic providers receive.

Components hand each other a `Connection` (`DatabaseAndRoles.connection_for("owner")`). A dynamic
resource stores it among its inputs (`provider_inputs`); its provider, which sees plain dicts after
unpickling, reads them back with `conninfo` and `database_of`. The wire keys are defined here and
nowhere else: they are recorded in the state of every Migration and CronJob, so renaming one would
show every resource of every existing stack as changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
import pulumi
from pulumi.runtime import rpc

from infra.migrate import CONNECT_TIMEOUT

HOST, PORT, DATABASE, USER, PASSWORD, SSLMODE = "host", "port", "dbname", "user", "password", "sslmode"
WIRE_KEYS = (HOST, PORT, DATABASE, USER, PASSWORD, SSLMODE)


@dataclass(frozen=True)
class Connection:
    """How to reach one database as one user. The password is always a secret Output."""

    host: pulumi.Input[str]
    port: pulumi.Input[int]
    database: pulumi.Input[str]
    user: pulumi.Input[str]
    password: pulumi.Input[str]
    sslmode: str = "prefer"

    def __post_init__(self) -> None:
        # Secret wherever it goes (resource inputs, state, exports built from it), whoever built the value.
        object.__setattr__(self, "password", pulumi.Output.secret(self.password))

    def to_database(self, database: pulumi.Input[str]) -> Connection:
        return dataclasses.replace(self, database=database)

    def as_user(self, user: pulumi.Input[str], password: pulumi.Input[str]) -> Connection:
        return dataclasses.replace(self, user=user, password=password)

    def provider_inputs(self) -> dict[str, pulumi.Input[Any]]:
        """The inputs a dynamic provider of this program reads with `conninfo` (the password secret)."""
        return {HOST: self.host, PORT: self.port, DATABASE: self.database, USER: self.user,
                PASSWORD: self.password, SSLMODE: self.sslmode}

    def url(self) -> pulumi.Output[str]:
        """A secret postgresql:// URL (user and password percent-encoded, an IPv6 host bracketed)."""

        def render(v: list[Any]) -> str:
            host, port, database, user, password = (str(x) for x in v)
            host = f"[{host}]" if ":" in host else host
            return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"

        parts = pulumi.Output.all(self.host, self.port, self.database, self.user, self.password)
        return pulumi.Output.secret(parts.apply(render))

    def env(self) -> pulumi.Output[dict[str, str]]:
        """The libpq-style environment of an application (POSTGRES_* and DATABASE_URL), secret as a whole."""
        parts = pulumi.Output.all(self.host, self.port, self.database, self.user, self.password, self.url())
        return pulumi.Output.secret(parts.apply(lambda v: dict(zip(
            ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "DATABASE_URL"),
            (str(x) for x in v), strict=True))))


def conninfo(inputs: Mapping[str, Any], *, application_name: str) -> str:
    """A libpq connection string from a dynamic resource's inputs (plain values: the provider's side)."""
    return psycopg.conninfo.make_conninfo(
        host=inputs[HOST],
        port=int(inputs[PORT]),
        dbname=inputs[DATABASE],
        user=inputs[USER],
        password=inputs[PASSWORD],
        sslmode=inputs.get(SSLMODE) or "prefer",
        connect_timeout=CONNECT_TIMEOUT,
        application_name=application_name,
    )


def database_of(inputs: Mapping[str, Any]) -> tuple[Any, Any, Any] | None:
    """(host, port, database) of a dynamic resource's inputs; None while a connection input is unknown
    (a preview before the server or the database exists)."""
    if any(inputs.get(k) in (None, rpc.UNKNOWN) for k in (HOST, PORT, DATABASE, USER, PASSWORD)):
        return None
    return inputs[HOST], inputs[PORT], inputs[DATABASE]
