"""The PostgreSQL server as a Docker container with a persistent volume."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

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
    image: str
    host_port: int
    bind_address: str
    superuser: str
    superuser_password: pulumi.Input[str]
    cron_database: str  # pg_cron keeps its jobs in one database: the application's


class PostgresServer(pulumi.ComponentResource):
    """Network, named volume, image and a container that is healthy only once it accepts connections.

    `container.wait` makes the container resource complete only when its healthcheck passes, so
    every resource that connects (they all depend on `host`/`port`) waits for a server that really
    answers, not just a started process.
    """

    host: pulumi.Output[str]
    port: pulumi.Output[int]
    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: PostgresServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("customer-insights:db:PostgresServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        stack = pulumi.get_stack()
        labels = [
            docker.ContainerLabelArgs(label="com.customer-insights.stack", value=stack),
            docker.ContainerLabelArgs(label="com.customer-insights.project", value=pulumi.get_project()),
        ]

        network = docker.Network(f"{name}-network", name=f"{name}-{stack}", opts=child)
        volume = docker.Volume(
            f"{name}-data",
            name=f"{name}-{stack}-data",
            labels=[docker.VolumeLabelArgs(label=lab.label, value=lab.value) for lab in labels],
            opts=child,
        )
        # The image is built locally by the bootstrap (or pulled by users with a registry); keep it
        # on destroy, it is shared by every stack on this machine.
        image = docker.RemoteImage(f"{name}-image", name=args.image, keep_locally=True, opts=child)

        self.container = docker.Container(
            name,
            name=f"{name}-{stack}",
            image=image.image_id,
            envs=server_envs(args.superuser),
            uploads=[docker.ContainerUploadArgs(file=PASSWORD_FILE, content=args.superuser_password)],
            command=server_command(args.cron_database),
            ports=[docker.ContainerPortArgs(internal=5432, external=args.host_port, ip=args.bind_address)],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=DATA_DIR)],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network.name)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=healthcheck_test(args.superuser),
                interval="2s",
                timeout="5s",
                retries=30,
                start_period="5s",
            ),
            wait=True,
            wait_timeout=120,
            restart="unless-stopped",
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["uploads"]),
        )

        # Clients reach a server published on all interfaces through loopback.
        client_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.bind_address, args.bind_address)
        self.host = pulumi.Output.from_input(client_host)
        self.port = self.container.ports.apply(
            lambda ports: int(ports[0].external) if ports and ports[0].external else args.host_port
        )
        self.container_name = self.container.name
        self.register_outputs({"host": self.host, "port": self.port, "container_name": self.container_name})
