"""Checks of the server, run by the program before it declares any resource: the Docker engine and
image of a container stack, the existing server of an external one, the database an adoption takes over.

They make `pulumi preview` fail with a precise message, and `pulumi up` stop before it creates
anything, when the server cannot host this stack.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass

import psycopg
import pulumi

from infra.config import AdoptionSettings, ContainerServer, ExternalServer
from infra.docker_cli import DOCKER_TIMEOUT, run_docker
from infra.migrate import CONNECT_TIMEOUT, MigrationFile, MigrationsError
from infra.migrate import adoption as adopt
from infra.migrate.scratch import existing_server, local_container
from infra.migration_identity import ADOPTION_APPLICATION_NAME

MIN_SERVER_VERSION = 130000  # gen_random_uuid() is built in from PostgreSQL 13
# The data directory on the volume, the migrations and pg_cron's build are PostgreSQL 15: another
# minor of 15 is a container replacement, another major needs a data upgrade first.
PG_MAJOR = "15"
APPLICATION_NAME = "pulumi-preflight"


class PreflightError(pulumi.RunError):
    """The server cannot host this stack. A RunError: Pulumi shows the message without a traceback."""


# --------------------------------------------------------------------------------------------- container mode

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


def check_container_host(*, server: ContainerServer, container: str) -> str:
    """Before anything is declared: the Docker engine answers, the image is on it and runs PostgreSQL 15,
    and the host port is free (or already published by this stack's own `container`). Returns the major.

    Each failure is a PreflightError naming the problem and the fix, so `pulumi preview` fails and
    `pulumi up` stops before anything changes (a container replaced by one that cannot start on the
    volume's data would be an outage, not an error message).
    """
    image, docker_host = server.image, server.docker_host
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
    _check_port_free(server.bind_address, server.host_port, port_bindings)
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


# ---------------------------------------------------------------------------------------------- external mode

@dataclass(frozen=True)
class ServerFacts:
    cron_database: str


def check_external_server(*, server: ExternalServer, password: str) -> ServerFacts:
    host, port, user, sslmode = server.host, server.port, server.admin_user, server.sslmode
    where = f"{user}@{host}:{port}/{server.admin_database}"
    try:
        conn = psycopg.connect(
            host=host, port=port, user=user, password=password, dbname=server.admin_database, sslmode=sslmode,
            connect_timeout=CONNECT_TIMEOUT, application_name=APPLICATION_NAME, autocommit=True,
        )
    except psycopg.OperationalError as exc:
        raise PreflightError(_connect_failure(where, str(exc).strip())) from exc
    with conn:
        version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        if version_num < MIN_SERVER_VERSION:
            raise PreflightError(f"{where} runs PostgreSQL {version}; this stack needs 13 or later.")
        superuser, createrole, createdb = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone() or (False, False, False)
        missing = [name for name, has in (("CREATEROLE", createrole), ("CREATEDB", createdb)) if not has]
        if not superuser and missing:
            raise PreflightError(
                f"The admin user {user!r} on {host}:{port} lacks {' and '.join(missing)}: the stack creates four "
                "login roles and the application database with it. Grant it as a superuser "
                f"(ALTER ROLE {user} {' '.join(missing)}; the master user of RDS, Cloud SQL and Azure has both), "
                "or set externalAdminUser to an admin that has them. Nothing was created."
            )
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'"
        ).fetchone()
        preload = str(conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0])  # type: ignore[index]
        cron_database = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()[0]  # type: ignore[index]
        cron_database = str(cron_database or "postgres")  # pg_cron's default
        cron_database_exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (cron_database,)
        ).fetchone() is not None
    if not available or "pg_cron" not in [lib.strip() for lib in preload.split(",")]:
        raise PreflightError(
            f"pg_cron is not enabled on {host}:{port} (shared_preload_libraries = {preload!r}); the token "
            "cleanup job needs it. Enable it, restart the server, then run `pulumi preview` again:\n"
            "  - self-managed: shared_preload_libraries = 'pg_cron' and cron.database_name in postgresql.conf\n"
            "  - Amazon RDS/Aurora: add pg_cron to shared_preload_libraries in the DB parameter group\n"
            "  - Cloud SQL: set the database flag cloudsql.enable_pg_cron=on\n"
            "  - Azure Flexible Server: allow-list pg_cron (azure.extensions) and add it to shared_preload_libraries\n"
            "Nothing was created."
        )
    # The extension and the job are created in pg_cron's own database, whatever its operator named it.
    where_cron = f"{host}:{port}/{cron_database}"
    if not cron_database_exists:
        raise PreflightError(
            f"pg_cron runs in database {cron_database!r} (cron.database_name on {host}:{port}), which does not "
            f"exist. Create it (CREATE DATABASE {cron_database}) or point cron.database_name at an existing "
            "database and restart the server, then run `pulumi preview` again. Nothing was created."
        )
    try:
        psycopg.connect(
            host=host, port=port, user=user, password=password, dbname=cron_database, sslmode=sslmode,
            connect_timeout=CONNECT_TIMEOUT, application_name=APPLICATION_NAME,
        ).close()
    except psycopg.OperationalError as exc:
        raise PreflightError(
            f"Cannot connect to pg_cron's database as {user}@{where_cron}: {str(exc).strip()}\n"
            f"The admin user must be able to connect to {cron_database!r} (cron.database_name) to create the "
            "pg_cron extension and schedule the job: GRANT CONNECT ON DATABASE to it. Nothing was created."
        ) from exc
    return ServerFacts(cron_database=cron_database)


def _connect_failure(where: str, error: str) -> str:
    """What failed when connecting as the admin, and which config key fixes it."""
    if "password authentication failed" in error or "no password supplied" in error:
        cause = (
            "the server rejected the admin password. Set the right one with "
            "`pulumi config set --secret externalAdminPassword <password>` (and check externalAdminUser)"
        )
    elif "timeout expired" in error:
        cause = (
            f"no answer within {CONNECT_TIMEOUT} s: the host drops the connection or nothing answers on it. "
            "Check externalHost/externalPort, that the server is running, and that a firewall or security "
            "group lets this machine reach it"
        )
    elif "Connection refused" in error:
        cause = (
            "nothing listens on that host and port (connection refused). Check externalHost/externalPort and "
            "that the server is running"
        )
    elif "could not translate host name" in error or "Name or service not known" in error:
        cause = "the host name does not resolve. Check externalHost"
    else:
        cause = "check externalHost/externalPort/externalAdminUser/externalAdminPassword/externalSslMode"
    return f"Cannot connect to the external server as {where}: {error}\n{cause}. Nothing was created."


# ---------------------------------------------------------------------------------------------- adoption

# Every read of a database to adopt is read-only and bounded: it may be in production use.
READ_ONLY_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=10000"


def check_adoptable(*, server: ExternalServer, password: str, database: str, owner: str,
                    roles: list[str]) -> frozenset[str]:
    """Before anything is declared for an adoption (reads only): the database exists, and until it is adopted,
    it and every object of its schema `public` are owned by the stack's owner role (the migrations run as
    it). Returns which of the stack's `roles` exist: those are imported, the others created."""
    host, port, user = server.host, server.port, server.admin_user
    where = f"{host}:{port}/{database}"
    try:
        conn = psycopg.connect(host=host, port=port, user=user, password=password, dbname=database,
                               sslmode=server.sslmode, connect_timeout=CONNECT_TIMEOUT,
                               application_name=APPLICATION_NAME, autocommit=True, options=READ_ONLY_OPTIONS)
    except psycopg.OperationalError as exc:
        if f'database "{database}" does not exist' in str(exc):
            raise PreflightError(f"adoptFrom is set, but there is no database {database!r} on {host}:{port} to adopt: "
                                 "set databaseName to the existing database, or remove adoptFrom "
                                 "(`pulumi config rm adoptFrom`) to create it. Nothing was changed.") from exc
        raise PreflightError(_connect_failure(f"{user}@{where}", str(exc).strip())) from exc
    with conn:
        existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                               (roles,)).fetchall()}
        db_owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
                                ).fetchone()[0]  # type: ignore[index]
        foreign = conn.execute(
            """SELECT kind || ' ' || name || ' (owner ' || who || ')' FROM (
                   SELECT 'table' AS kind, relname::text AS name, pg_get_userbyid(relowner) AS who FROM pg_class
                    WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                   UNION ALL
                   SELECT 'function', proname || '()', pg_get_userbyid(proowner) FROM pg_proc
                    WHERE pronamespace = 'public'::regnamespace
                   UNION ALL
                   SELECT 'type', typname, pg_get_userbyid(typowner) FROM pg_type
                    WHERE typnamespace = 'public'::regnamespace AND typtype IN ('e', 'd', 'c')
                      AND typrelid = 0) o
               WHERE who <> %s ORDER BY 1""", (owner,)).fetchall()
        adopted_already = adopt.managed_by_this_runner(conn)
    wrong = ([f"database {database} (owner {db_owner})"] if db_owner != owner else []) + [r[0] for r in foreign]
    if not adopted_already and (owner not in existing or wrong):
        listed = "\n".join(f"  - {w}" for w in wrong[:20])
        listed += f"\n  - ... {len(wrong) - 20} more" if len(wrong) > 20 else ""
        raise PreflightError(
            f"adoptFrom: the database {database!r} on {host}:{port} and its schema must be owned by the stack's owner "
            f"role {owner!r} (the migrations run as it){'' if owner in existing else ', which does not exist'}:\n"
            f"{listed}\nRun as an admin, then `pulumi preview` again: ALTER DATABASE {database} OWNER TO {owner}; "
            f"and in the database: REASSIGN OWNED BY <the role that ran the other tool> TO {owner}; "
            "(or set rolePrefix so that <prefix>_owner is that role). Nothing was changed.")
    return frozenset(existing)


def check_adoption_schema(*, target: str, files: list[MigrationFile], adoption: AdoptionSettings, owner: str,
                          scratch_url: str | None, namespace: str) -> None:
    """Before anything is declared, while the database is not adopted yet (no tracking table of this program):
    the other tool's history matches the files and the live schema is what the matched files make (applied to
    a scratch database: `scratch_url`'s server, else a local container); else PreflightError listing every
    difference and how to resolve it."""
    tool = adoption.tool
    try:
        with psycopg.connect(target, connect_timeout=CONNECT_TIMEOUT, autocommit=True,
                             options=READ_ONLY_OPTIONS) as conn:
            if adopt.managed_by_this_runner(conn):
                return  # adopted already: the tracking table is this program's from now on
        plan = adopt.read_plan(target, files, tool, application_name=ADOPTION_APPLICATION_NAME)
        with ExitStack() as stack:
            server = (existing_server(scratch_url) if scratch_url
                      else stack.enter_context(local_container(adoption.scratch.image, log=pulumi.log.info)))
            accepted = adopt.verify(plan, target, scratch=server, owner=owner, accept=adoption.accept,
                                    application_name=ADOPTION_APPLICATION_NAME, ways_out=[
                "make the live schema what the files make (with the other tool, or by hand), then preview again",
                f"or accept a difference by its id: `pulumi config set --path '{namespace}:adoptAccept[0]' "
                "'<id>'` (e.g. one a later file of the migrations folder fixes)",
            ])
    except adopt.AdoptionError as exc:
        raise PreflightError(f"{exc}\n(config {namespace}:adoptFrom = {tool}.) Nothing was changed.") from exc
    except MigrationsError as exc:
        raise PreflightError(f"adoptFrom: cannot verify the schema to adopt: {exc}. Nothing was changed.") from exc
    pulumi.log.info(f"adoption from {tool}: {plan.summary()}; the live schema is what those files make"
                    + (f" (accepted: {', '.join(d.id for d in accepted)})" if accepted else ""))
