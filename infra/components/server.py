"""The PostgreSQL server as a Docker container with a persistent volume."""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import ClassVar

import pulumi
import pulumi_docker as docker

from infra.connection import Connection
from infra.docker_cli import DOCKER_TIMEOUT, run_docker
from infra.dynamic.data_volume import DataVolumeCheck
from infra.dynamic.server_ready import ServerReady
from infra.preflight import PreflightError

DATA_DIR = "/var/lib/postgresql/data"
PASSWORD_FILE = "/etc/postgresql-secrets/superuser-password"
# The data directory on the volume, the migrations and pg_cron's build are PostgreSQL 15: another
# minor of 15 is a container replacement, another major needs a data upgrade first.
PG_MAJOR = "15"


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
    # Pulumi `protect` on the data volume: destroy, or a change that would replace it, stops.
    protect_data: bool = True
    # config keepDataOnDestroy: destroy forgets the volume instead of deleting it.
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
        stack = pulumi.get_stack()
        labels = [
            docker.ContainerLabelArgs(label="com.customer-insights.stack", value=stack),
            docker.ContainerLabelArgs(label="com.customer-insights.project", value=pulumi.get_project()),
        ]

        volume = docker.Volume(
            f"{name}-data",
            name=f"{name}-{stack}-data",
            labels=[docker.VolumeLabelArgs(label=lab.label, value=lab.value) for lab in labels],
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect_data,
                                        retain_on_delete=args.keep_data_on_destroy),
        )
        # The image is built locally by the bootstrap (or pulled by users with a registry); keep it
        # on destroy, it is shared by every stack on this machine.
        image = docker.RemoteImage(f"{name}-image", name=args.image, keep_locally=True, opts=child)

        self.container = docker.Container(
            name,
            name=container_name(name, stack),
            image=image.image_id,
            envs=server_envs(args.superuser),
            uploads=[docker.ContainerUploadArgs(file=PASSWORD_FILE, content=args.superuser_password)],
            command=server_command(args.cron_database),
            ports=[docker.ContainerPortArgs(internal=5432, external=args.host_port, ip=args.bind_address)],
            volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=DATA_DIR)],
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=healthcheck_test(args.superuser),
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
            protected=args.protect_data, docker_host=pulumi.Config("docker").get("host"), opts=child,
        )

        # Clients reach a server published on all interfaces through loopback.
        client_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.bind_address, args.bind_address)
        self.host = pulumi.Output.from_input(client_host)
        published = self.container.ports.apply(
            lambda ports: int(ports[0].external) if ports and ports[0].external else args.host_port
        )
        ready = ServerReady(
            f"{name}-ready",
            connection=Connection(host=client_host, port=published, database="postgres", user=args.superuser,
                                  password=args.superuser_password, sslmode="disable"),
            container_id=self.container.id, container=self.container.name, timeout_s=120, opts=child,
        )
        self.port = ready.port
        self.container_name = self.container.name
        self.register_outputs({"host": self.host, "port": self.port, "container_name": self.container_name})


def container_name(name: str, stack: str) -> str:
    return f"{name}-{stack}"


def _docker(docker_host: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return run_docker(docker_host, *args)
    except FileNotFoundError as exc:
        raise PreflightError(
            "The docker command is not installed: container mode needs the Docker engine and its CLI "
            "(`bash bootstrap/bootstrap.sh` installs them). Nothing was changed."
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise PreflightError(
            f"The Docker engine at {docker_host or 'the default socket'} did not answer `docker {args[0]}` within "
            f"{DOCKER_TIMEOUT} s; check it with `docker info`. Nothing was changed."
        ) from exc


def check_container_host(
    *, image: str, bind_address: str, host_port: int, container: str, docker_host: str | None
) -> str:
    """Before anything is declared: the Docker engine answers, `image` is on it and runs PostgreSQL 15,
    and `host_port` is free (or already published by this stack's own container). Returns the major.

    Each failure is a PreflightError naming the problem and the fix, so `pulumi preview` fails and
    `pulumi up` stops before anything changes (a container replaced by one that cannot start on the
    volume's data would be an outage, not an error message).
    """
    where = docker_host or "the default socket (DOCKER_HOST unset)"
    inspected = _docker(docker_host, "image", "inspect", "--format", "{{json .Config.Env}}", image)
    if inspected.returncode != 0:
        error = inspected.stderr.strip()
        if "No such image" in error or "no such image" in error:
            raise PreflightError(
                f"The image {image!r} is not in the Docker engine at {where}. Build it "
                "(`bash bootstrap/postgres-image/build.sh` builds customer-insights/postgres-cron:15), "
                "`docker pull` it, or set `image` to one listed by `docker image ls`. Nothing was changed."
            )
        raise PreflightError(
            f"Cannot use the Docker engine at {where}: {error}\nStart it (`bash bootstrap/docker-engine.sh`, "
            "or `systemctl start docker`) or point DOCKER_HOST (or the docker:host config) at a running "
            "engine; `docker info` must answer. Nothing was changed."
        )
    major = _image_major(docker_host, image, json.loads(inspected.stdout or "null") or [])
    if major != PG_MAJOR:
        raise PreflightError(
            f"The image {image!r} runs PostgreSQL {major}, but this stack's data directory is PostgreSQL "
            f"{PG_MAJOR}: the new server would not start on it. Changing the image only moves between minor "
            f"versions of {PG_MAJOR}. A major upgrade moves the data: dump it (pg_dumpall from the running "
            f"{PG_MAJOR} server), bring up a new stack on the new image and restore into it, or run "
            "pg_upgrade on a copy of the volume. Nothing was changed."
        )
    # This stack's own container, if there is one: its state and the ports it publishes (one inspect).
    own = _docker(docker_host, "container", "inspect", "--format",
                  "{{.State.Status}} {{json .HostConfig.PortBindings}}", container)
    status, _, port_bindings = own.stdout.strip().partition(" ") if own.returncode == 0 else ("", "", "")
    _check_container_running(container, status)
    _check_port_free(bind_address, host_port, port_bindings)
    return major


def _check_container_running(container: str, status: str) -> None:
    """A stopped server is invisible to `pulumi up` (it compares with its state, not with Docker): the
    migrations would report "unchanged" against a server that is down. Say so instead.
    `status`: the container's state, "" when it does not exist."""
    if status and status != "running":
        raise PreflightError(
            f"The server container {container} exists but is {status}, not running. Start it with "
            f"`docker start {container}` (its data is on its volume), wait until `docker ps` shows it "
            "healthy, then run `pulumi up` again. Nothing was changed."
        )


def _image_major(docker_host: str | None, image: str, env: list[str]) -> str:
    """PG_MAJOR of the image's environment (the official images' convention, and ours), else what
    `postgres --version` says inside it (a throwaway container without network)."""
    for item in env:
        if item.startswith("PG_MAJOR="):
            return item.split("=", 1)[1]
    ran = _docker(docker_host, "run", "--rm", "--network", "none", "--entrypoint", "postgres", image, "--version")
    found = re.search(r"PostgreSQL\)? (\d+)", ran.stdout)
    if ran.returncode != 0 or not found:
        raise PreflightError(
            f"Cannot tell which PostgreSQL the image {image!r} runs: it sets no PG_MAJOR and "
            f"`postgres --version` in it failed: {(ran.stderr or ran.stdout).strip()}. Use an image built "
            "from the official postgres:15 image or bootstrap/postgres-image. Nothing was changed."
        )
    return found.group(1)


def _check_port_free(bind_address: str, host_port: int, own_port_bindings: str) -> None:
    """`own_port_bindings`: the JSON of this stack's container's port bindings, "" without one."""
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Connections closed a moment ago (TIME_WAIT) do not hold the port; only a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind_address, host_port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # not ours to judge (e.g. the address is on the engine's host only)
    if f'"HostPort":"{host_port}"' in own_port_bindings.replace(" ", ""):
        return  # this stack's own server holds it
    raise PreflightError(
        f"hostPort {host_port} on {bind_address} is already in use by another program or container "
        f"(`ss -ltnp 'sport = :{host_port}'` or `docker ps --filter publish={host_port}` shows which). Free "
        f"it, or choose another port: `pulumi config set hostPort <port>`. Nothing was changed."
    )
