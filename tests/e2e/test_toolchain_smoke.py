"""Smoke test of the offline toolchain: the engine built from source, the dynamic-provider host,
and (when installed) the three provider plugins, through up / preview / destroy."""

from __future__ import annotations

import uuid

import psycopg
import pulumi
import pytest
from pulumi import automation as auto

from devsupport.local_postgres import free_port
from devsupport.smoke_provider import Marker
from tests.e2e.conftest import assert_not_in_state

pytestmark = pytest.mark.e2e


def test_engine_and_dynamic_provider_host(new_stack):
    value = uuid.uuid4().hex

    def program() -> None:
        pulumi.export("value", Marker("marker", value).value)

    stack = new_stack(program)
    up = stack.up(color="never")
    assert up.outputs["value"].value == value
    assert up.summary.resource_changes == {"create": 2}
    stack.preview(expect_no_changes=True, color="never")
    assert_not_in_state(new_stack.backend, "s3cr3t-marker")
    destroy = stack.destroy(color="never")
    assert destroy.summary.resource_changes == {"delete": 2}


def test_all_three_provider_plugins(provider_plugins, new_stack):
    import pulumi_docker as docker
    import pulumi_postgresql as postgresql
    import pulumi_random as random

    port = free_port()

    def program() -> None:
        password = random.RandomPassword("pw", length=24, special=False)
        container = docker.Container(
            "pg", image="customer-insights/postgres-cron:15",
            envs=[password.result.apply(lambda p: f"POSTGRES_PASSWORD={p}")],
            ports=[docker.ContainerPortArgs(internal=5432, external=port, ip="127.0.0.1")],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "postgres"], interval="1s", retries=60),
            wait=True,
        )
        provider = postgresql.Provider("pg", host="127.0.0.1", port=port, username="postgres",
                                       password=password.result, sslmode="disable",
                                       opts=pulumi.ResourceOptions(depends_on=[container]))
        postgresql.Role("smoke", name="smoke_role", login=False, opts=pulumi.ResourceOptions(provider=provider))
        Marker("marker", "smoke")
        pulumi.export("password", password.result)

    stack = new_stack(program)
    up = stack.up(color="never")
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=up.outputs["password"].value,
                         dbname="postgres") as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'smoke_role'").fetchone() == (1,)
    stack.preview(expect_no_changes=True, color="never")
    stack.destroy(color="never")
    assert isinstance(stack, auto.Stack)
