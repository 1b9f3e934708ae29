"""The PostgreSQL server as a Docker container with a persistent volume."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import pulumi
import pulumi_docker as docker

from infra.config import ContainerServer
from infra.connection import Connection
from infra.dynamic.data_volume import DataVolumeCheck
from infra.dynamic.server_ready import ServerReady

DATA_DIR = "/var/lib/postgresql/data"
PASSWORD_FILE = "/etc/postgresql-secrets/superuser-password"


def server_command(cron_database: str) -> list[str]:
    """The container's command: pg_cron preloaded, its jobs kept in the application database."""
    return [
        "postgres",
        "-c", "shared_preload_libraries=pg_cron",
        "-c", f"cron.database_name={cron_database}",
        # Jobs run in background workers: no libpq login (and so no password) for the job's role.
        "-c", "cron.use_background_workers=on",
        "-c", "max_worker_processes=32",
    ]


def server_envs(superuser: str) -> list[str]:
    """The official image's contract; the password comes from a file, never from the environment."""
    return [
        f"POSTGRES_USER={superuser}",
        f"POSTGRES_PASSWORD_FILE={PASSWORD_FILE}",
        "POSTGRES_DB=postgres",
        f"PGDATA={DATA_DIR}",
    ]


def healthcheck_test(superuser: str) -> list[str]:
    # -h 127.0.0.1: during first-start initialisation the server listens on its Unix socket only,
    # so a TCP check does not pass before it is really ready.
    return ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", superuser, "-d", "postgres"]


@dataclass
class PostgresServerArgs:
    server: ContainerServer  # image, published port and address, superuser, Docker engine
    superuser_password: pulumi.Input[str]
    cron_database: str  # pg_cron keeps its jobs in one database: the application's
    container_name: str
    volume_name: str
    labels: Mapping[str, str] = field(default_factory=dict)  # on the container and the volume
    # Pulumi `protect` on the data volume: destroy, or a change that would replace it, stops.
    protect_data: bool = True
    # Destroy forgets the volume instead of deleting it.
    keep_data_on_destroy: bool = False


class PostgresServer(pulumi.ComponentResource):
    """Named volume, image, container, and `ServerReady`: done once the server accepts a login.

    `port` comes from `ServerReady`, so every resource that connects (they all depend on `port`)
    waits for a server that really answers, not just a started process. No Docker network: clients
    reach the server through its published port only (pulumi-docker's network create ends in a
    fixed two-second wait).
    """

    TYPE: ClassVar[str] = "customer-insights:db:PostgresServer"

    host: pulumi.Output[str]
    port: pulumi.Output[int]
    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: PostgresServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        server = args.server
        labels = [docker.ContainerLabelArgs(label=key, value=value) for key, value in args.labels.items()]

        volume = docker.Volume(
            f"{name}-data",
            name=args.volume_name,
            labels=[docker.VolumeLabelArgs(label=key, value=value) for key, value in args.labels.items()],
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect_data,
                                        retain_on_delete=args.keep_data_on_destroy),
        )
        # The image is built locally by the bootstrap (or pulled by users with a registry); keep it
        # on destroy, it is shared by every stack on this machine.
        image = docker.RemoteImage(f"{name}-image", name=server.image, keep_locally=True, opts=child)

        self.container = docker.Container(
            name,
            name=args.container_name,
            image=image.image_id,
            envs=server_envs(server.superuser),
            uploads=[docker.ContainerUploadArgs(file=PASSWORD_FILE, content=args.superuser_password)],
            command=server_command(args.cron_database),
            ports=[docker.ContainerPortArgs(internal=5432, external=server.host_port, ip=server.bind_address)],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=DATA_DIR)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=healthcheck_test(server.superuser),
                interval="2s",
                timeout="5s",
                retries=30,
                start_period="5s",
            ),
            restart="unless-stopped",
            labels=labels,
            # A replacement frees the name and the host port before the new container takes them.
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["uploads"],
                                        delete_before_replace=True),
        )

        # A volume removed outside Pulumi: preview and up stop, naming the recovery (see DataVolumeCheck).
        DataVolumeCheck(
            f"{name}-data-check", volume=volume.name, volume_urn=volume.urn, container_urn=self.container.urn,
            protected=args.protect_data, docker_host=server.docker_host, opts=child,
        )

        # Clients reach a server published on all interfaces through loopback.
        client_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.bind_address, server.bind_address)
        self.host = pulumi.Output.from_input(client_host)
        published = self.container.ports.apply(
            lambda ports: int(ports[0].external) if ports and ports[0].external else server.host_port
        )
        ready = ServerReady(
            f"{name}-ready",
            connection=Connection(host=client_host, port=published, database="postgres", user=server.superuser,
                                  password=args.superuser_password, sslmode="disable"),
            container_id=self.container.id, container=self.container.name, timeout_s=120, opts=child,
        )
        self.port = ready.port
        self.container_name = self.container.name
        self.register_outputs({"host": self.host, "port": self.port, "container_name": self.container_name})
