"""The server's data volume as this stack recorded it: `preview` and `up` stop when it is gone.

`pulumi up` compares the program with the state, not with Docker: after `docker rm -f` of the
container and `docker volume rm` of its volume it reports no changes, and `pulumi refresh` fails on
every database resource, since no server answers. The engine hands a dynamic provider's `check` the
inputs recorded in the state, so this resource can tell a deployed stack whose volume vanished (the
data is gone) from a stack being created (nothing there yet), and name the recovery.
"""

from __future__ import annotations

import subprocess
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, ReadResult, Resource, UpdateResult

from infra.docker_cli import run_docker
from infra.dynamic.base import DiffingProvider, ProviderFailure, reported_read


class DataVolumeGone(ProviderFailure):
    """The recorded volume no longer exists (raised by `read`, i.e. during `pulumi refresh`)."""


def volume_missing(volume: str, docker_host: str | None) -> bool:
    """True only when the engine answers that the volume does not exist; an engine that does not
    answer is the container preflight's to report (infra/preflight.py)."""
    try:
        done = run_docker(docker_host, "volume", "inspect", volume)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode != 0 and "no such volume" in done.stderr.lower()


def gone_message(props: dict[str, Any]) -> str:
    volume, volume_urn, container_urn = props["volume"], props["volume_urn"], props["container_urn"]
    lost = (
        f"The data volume {volume} of this stack is gone (removed outside Pulumi, e.g. `docker volume rm`), "
        "and with it the server's databases, roles and rows. The state still lists them: `pulumi up` would "
        "report no changes, and `pulumi refresh` cannot read a server that is not there."
    )
    if props.get("protected"):
        return (
            f"{lost} This stack protects its data (protectData): nothing is recreated empty. Restore it from "
            f"your backup:\n  - a copy of the volume: restore it as {volume}, then "
            f"`pulumi refresh --yes --target '{container_urn}'` and `pulumi up` (the server starts on it);\n"
            "  - a dump: start again empty, saying so with --force: "
            f"`pulumi state delete '{volume_urn}' --target-dependents --force --yes` (forgets the lost server "
            "and everything on it), `pulumi up` (creates them again, empty), then load the dump.\n"
            "Nothing was changed."
        )
    return (
        f"{lost} To start again with an empty server: "
        f"`pulumi state delete '{volume_urn}' --target-dependents --yes` (forgets the lost server and "
        "everything on it), then `pulumi up` (creates them again, empty; load a backup if you have one). "
        "Nothing was changed."
    )


class DataVolumeProvider(DiffingProvider):
    # Nothing here exists on the server: every change is an in-place update of the record.
    ignored_keys: ClassVar[frozenset[str]] = frozenset()

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        # `olds` are the inputs in the state: empty while the stack (or this record) is being created.
        if olds and volume_missing(news["volume"], news.get("docker_host") or None):
            return CheckResult(news, [CheckFailure("", gone_message(news))])
        return CheckResult(news, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["volume"], outs=props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=news)

    @reported_read
    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if volume_missing(props["volume"], props.get("docker_host") or None):
            raise DataVolumeGone(gone_message(props))
        return ReadResult(id_=id_, outs=props)


class DataVolumeCheck(Resource, module="db", name="DataVolumeCheck"):
    """Records the server's volume; fails `preview`, `up` and `refresh` once it is gone (see module)."""

    volume: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        volume: pulumi.Input[str],
        volume_urn: pulumi.Input[str],
        container_urn: pulumi.Input[str],
        protected: bool,
        docker_host: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"volume": volume, "volume_urn": volume_urn, "container_urn": container_urn,
                 "protected": protected, "docker_host": docker_host or ""}
        super().__init__(DataVolumeProvider(), resource_name, props, opts)
