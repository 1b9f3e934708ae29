"""infra.connection: the one connection value, its provider inputs (wire keys kept stable) and its URL."""

from __future__ import annotations

from typing import Any

import psycopg
import pulumi
import pytest
from pulumi.runtime import rpc

from infra.connection import WIRE_KEYS, Connection, conninfo, database_of

pytestmark = pytest.mark.unit

# What every Migration and CronJob of existing stacks has in its state: a renamed key would show them all
# as changed (or, for the connection a delete needs, unreadable).
RECORDED_KEYS = ("host", "port", "dbname", "user", "password", "sslmode")


class NoResources(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[Any, Any]]:
        raise AssertionError("no resource is declared here")

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, []


@pytest.fixture(autouse=True)
def mocks() -> None:
    pulumi.runtime.set_mocks(NoResources(), project="p", stack="s", preview=False)


def owner() -> Connection:
    return Connection(host="::1", port=5433, database="insights", user="ci owner", password="p@ss/w:rd 1",
                      sslmode="verify-full")


def test_the_wire_keys_are_the_ones_existing_stacks_recorded() -> None:
    assert WIRE_KEYS == RECORDED_KEYS


@pulumi.runtime.test
def test_provider_inputs_carry_every_key_and_the_password_as_a_secret() -> pulumi.Output[Any]:
    inputs = owner().provider_inputs()
    assert tuple(inputs) == RECORDED_KEYS
    assert {k: v for k, v in inputs.items() if k != "password"} == {
        "host": "::1", "port": 5433, "dbname": "insights", "user": "ci owner", "sslmode": "verify-full",
    }

    async def check() -> None:
        password = inputs["password"]
        assert isinstance(password, pulumi.Output)
        assert await password.is_secret()
        assert await password.future() == "p@ss/w:rd 1"

    return pulumi.Output.from_input(check())


@pulumi.runtime.test
def test_a_password_given_in_plain_text_becomes_a_secret_in_every_derived_connection() -> pulumi.Output[Any]:
    derived = owner().to_database("other").as_user("ci_app", "plain-password")

    async def check() -> None:
        assert await pulumi.Output.from_input(derived.password).is_secret()
        assert (derived.database, derived.user, derived.host, derived.sslmode) == ("other", "ci_app", "::1",
                                                                                   "verify-full")

    return pulumi.Output.from_input(check())


@pulumi.runtime.test
def test_url_is_secret_encoded_and_brackets_an_ipv6_host() -> pulumi.Output[Any]:
    url = owner().url()

    async def check() -> None:
        assert await url.is_secret()
        assert await url.future() == "postgresql://ci%20owner:p%40ss%2Fw%3Ard%201@[::1]:5433/insights"

    return pulumi.Output.from_input(check())


def test_the_provider_side_reads_the_inputs_back() -> None:
    plain = {"host": "db.internal", "port": "6543", "dbname": "insights", "user": "ci_owner", "password": "pw",
             "sslmode": "require"}
    params = psycopg.conninfo.conninfo_to_dict(conninfo(plain, application_name="probe"))
    assert params == {"host": "db.internal", "port": "6543", "dbname": "insights", "user": "ci_owner",
                      "password": "pw", "sslmode": "require", "connect_timeout": "10", "application_name": "probe"}
    assert database_of(plain) == ("db.internal", "6543", "insights")
    assert database_of({**plain, "dbname": rpc.UNKNOWN}) is None  # preview before the database exists
