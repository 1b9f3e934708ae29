"""Checks of an existing (managed) server, run by the program before it declares any resource.

They make `pulumi preview` fail with a precise message, and `pulumi up` stop before it creates
anything, when the server cannot host this stack.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import psycopg
import pulumi

from infra.dynamic.base import ADOPTION_APPLICATION_NAME
from infra.migrate import CONNECT_TIMEOUT, MigrationFile, MigrationsError
from infra.migrate import adoption as adopt
from infra.migrate.scratch import existing_server, local_container

MIN_SERVER_VERSION = 130000  # gen_random_uuid() is built in from PostgreSQL 13


class PreflightError(pulumi.RunError):
    """The server cannot host this stack. A RunError: Pulumi shows the message without a traceback."""


@dataclass(frozen=True)
class ServerFacts:
    cron_database: str


def check_external_server(
    *, host: str, port: int, user: str, password: str, dbname: str, sslmode: str
) -> ServerFacts:
    where = f"{user}@{host}:{port}/{dbname}"
    try:
        conn = psycopg.connect(
            host=host, port=port, user=user, password=password, dbname=dbname, sslmode=sslmode,
            connect_timeout=CONNECT_TIMEOUT, application_name="pulumi-preflight", autocommit=True,
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
            connect_timeout=CONNECT_TIMEOUT, application_name="pulumi-preflight",
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


@dataclass(frozen=True)
class AdoptionFacts:
    existing_roles: frozenset[str]  # the stack's roles that already exist (imported, not created)


def check_adoptable(*, host: str, port: int, user: str, password: str, sslmode: str, database: str,
                    owner: str, roles: list[str]) -> AdoptionFacts:
    """Before anything is declared for an adoption (reads only): the database exists, and until it is adopted,
    it and every object of its schema `public` are owned by the stack's owner role (the migrations run as
    it). Which of the stack's roles exist decides which are imported and which created."""
    where = f"{host}:{port}/{database}"
    try:
        conn = psycopg.connect(host=host, port=port, user=user, password=password, dbname=database, sslmode=sslmode,
                               connect_timeout=CONNECT_TIMEOUT, application_name="pulumi-preflight", autocommit=True,
                               options="-c default_transaction_read_only=on -c statement_timeout=10000")
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
    return AdoptionFacts(existing_roles=frozenset(existing))


def check_adoption_schema(*, target: str, files: list[MigrationFile], tool: str, owner: str, accept: frozenset[str],
                          scratch_url: str | None, scratch_image: str, namespace: str) -> None:
    """Before anything is declared, while the database is not adopted yet (no tracking table of this program):
    the other tool's history matches the files and the live schema is what the matched files make (applied to
    a scratch database); else PreflightError listing every difference and how to resolve it."""
    try:
        with psycopg.connect(target, connect_timeout=CONNECT_TIMEOUT, autocommit=True,
                             options="-c default_transaction_read_only=on -c statement_timeout=10000") as conn:
            if adopt.managed_by_this_runner(conn):
                return  # adopted already: the tracking table is this program's from now on
        plan = adopt.read_plan(target, files, tool, application_name=ADOPTION_APPLICATION_NAME)
        with ExitStack() as stack:
            server = (existing_server(scratch_url) if scratch_url
                      else stack.enter_context(local_container(scratch_image, log=pulumi.log.info)))
            accepted = adopt.verify(plan, target, scratch=server, owner=owner, accept=accept,
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
