"""Done once the server accepts a real login: what every resource that connects waits for.

pulumi-docker's `wait` polls the container's health once a second, and Docker runs the first health
probe one `interval` after start: a server ready in a fraction of a second costs whole seconds. This
resource logs in as the superuser every few tens of milliseconds instead (a TCP login with the
password: the image's first-start initialisation listens on its Unix socket only, so it never passes
early). The container keeps its healthcheck for `docker ps`; a new container (a new id) waits again.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import psycopg
import pulumi
from pulumi.dynamic import CreateResult, ReadResult, Resource, UpdateResult

from infra.connection import Connection, conninfo
from infra.dynamic.base import PROVIDER_KEY, DiffingProvider, password_kept_secret, stop_waiting_on_property_outputs

POLL_SECONDS = 0.05


def wait_for_login(props: dict[str, Any]) -> None:
    """Returns once a login succeeds; RuntimeError naming the last refusal after `timeout_s`."""
    deadline = time.monotonic() + float(props["timeout_s"])
    target = conninfo(props, application_name="pulumi-server-ready")
    while True:
        try:
            with psycopg.connect(target, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"The server at {props['host']}:{props['port']} did not accept a login within "
                    f"{props['timeout_s']} s: {str(exc).strip()}. Look at `docker logs {props['container']}`."
                ) from None
        time.sleep(POLL_SECONDS)


class ServerReadyProvider(DiffingProvider):
    # A password change alone is an update that waits again (and proves the new password logs in).
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"timeout_s"})

    def create(self, props: dict[str, Any]) -> CreateResult:
        wait_for_login(props)
        return CreateResult(id_=str(props["container_id"]), outs=props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        wait_for_login(news)
        return UpdateResult(outs=news)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)


class ServerReady(Resource, module="db", name="ServerReady"):
    """Created once the server at `connection` accepts its login (see the module)."""

    port: pulumi.Output[int]

    def __init__(self, resource_name: str, *, connection: Connection, container_id: pulumi.Input[str],
                 container: pulumi.Input[str], timeout_s: int,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {**connection.provider_inputs(), "container_id": container_id,
                                 "container": container, "timeout_s": timeout_s}
        super().__init__(ServerReadyProvider(), resource_name, props, password_kept_secret(opts))
        stop_waiting_on_property_outputs(self, [*props, PROVIDER_KEY])
