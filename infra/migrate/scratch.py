"""Scratch databases: a throwaway copy of a target database's schema (never its rows) to run migrations on.

    with local_container("postgres:15", log=print) as server:           # or existing_server(url)
        with scratch_database(server, schema_from=target, owner="app_owner", roles=[], log=print) as db:
            ...                                                             # db: superuser conninfo

The copy is `pg_dump --schema-only` of the target, restored as the scratch server's superuser, so
owners and grants are kept and a migration can run as its owner role. pg_cron's extension and its
`cron` schema are left out: the extension can only live in the server's `cron.database_name`. The
roles the target's objects need are created on the scratch server where missing (NOLOGIN). The
database is dropped when the block ends, also after an error; leftovers of a killed process are swept
by the next scratch database made on the same server. See docs/rehearsal.md.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from .errors import MigrationsError
from .session import CONNECT_TIMEOUT

Log = Callable[[str], None]

DB_PREFIX = "rehearsal_"
SWEEP_AGE_SECONDS = 3600  # a scratch database this old belongs to a process that was killed
DUMP_TIMEOUT_SECONDS = 120  # pg_dump and pg_restore each; a schema dump is catalog reads
LOCK_WAIT_TIMEOUT_MS = 5000  # pg_dump's wait for ACCESS SHARE on each table of the target
STARTUP_TIMEOUT_SECONDS = 90.0
CONTAINER_LABEL = "infra.migrate.scratch"

_NAME_RE = re.compile(rf"^{DB_PREFIX}(\d{{10}})_[0-9a-f]+$")


class ScratchError(MigrationsError):
    """A scratch server or database could not be made; the message names the cause and the fix."""


def _noop(_: str) -> None:
    pass


class ScratchServer:
    """A superuser on a throwaway server (a local container, or a server given as scratch)."""

    def __init__(self, conninfo: str, *, description: str | None = None) -> None:
        try:
            params = pg_conninfo.conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as e:
            raise ScratchError(f"invalid scratch server connection string: {_scrub(str(e), conninfo)}") from e
        self._conninfo = conninfo
        self.description = description or f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return pg_conninfo.make_conninfo(self._conninfo, dbname=dbname)

    def secrets(self) -> list[str]:
        """The values no log line or error may contain (the password)."""
        password = pg_conninfo.conninfo_to_dict(self._conninfo).get("password")
        return [str(password)] if password else []

    def __repr__(self) -> str:  # never the conninfo: it carries a password
        return f"ScratchServer({self.description!r})"


def existing_server(conninfo: str) -> ScratchServer:
    """A server given by its superuser conninfo (it must be a throwaway server: roles get created there)."""
    return ScratchServer(conninfo)


def _connect(conninfo: str, **kwargs: Any) -> psycopg.Connection[Any]:
    params: dict[str, Any] = {"application_name": "migration-rehearsal"}
    if "connect_timeout" not in pg_conninfo.conninfo_to_dict(conninfo) and not os.environ.get("PGCONNECT_TIMEOUT"):
        params["connect_timeout"] = CONNECT_TIMEOUT
    params.update(kwargs)
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None, **params)


def _scrub(text: str, *conninfos_or_secrets: str) -> str:
    """`text` without any password: the given ones (or those of the given conninfos) and any
    `password=...` / `user:password@` a tool printed."""
    for item in conninfos_or_secrets:
        values = [item]
        with contextlib.suppress(psycopg.ProgrammingError):
            password = pg_conninfo.conninfo_to_dict(item).get("password")
            values = [str(password)] if password else []
        for value in values:
            if value:
                text = text.replace(value, "********")
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1********", text, flags=re.IGNORECASE)
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@", r"\1********@", text)


# ------------------------------------------------------------------------------------------- container


def _docker(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
            env=None if env is None else {**os.environ, **env},
        )
    except FileNotFoundError as e:
        raise ScratchError(
            "cannot start a scratch PostgreSQL container: the docker command is not installed; install "
            "Docker, or give a scratch server instead"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise ScratchError(
            f"docker {args[0]} did not answer within {timeout:.0f} s: is the Docker engine running?"
        ) from e


@contextlib.contextmanager
def local_container(
    image: str, *, log: Log | None = None, startup_timeout: float = STARTUP_TIMEOUT_SECONDS
) -> Iterator[ScratchServer]:
    """A PostgreSQL container of `image` (the official `postgres` image's contract), published on
    127.0.0.1 on a port Docker picks, with a random superuser password; yields once a login works,
    and removes the container when the block ends (also after an error)."""
    say = log if log is not None else _noop
    sweep_containers(log=say)
    password = secrets.token_hex(24)
    started = int(time.time())
    name = f"rehearsal-{started}-{secrets.token_hex(4)}"
    # The password reaches docker through its environment (`-e NAME` without a value), never argv.
    run = _docker(
        "run", "--rm", "-d", "--name", name, "--label", f"{CONTAINER_LABEL}={started}",
        "-e", "POSTGRES_PASSWORD", "-p", "127.0.0.1::5432", image,
        env={"POSTGRES_PASSWORD": password}, timeout=120,
    )
    if run.returncode != 0:
        raise ScratchError(
            f"cannot start a scratch PostgreSQL container of {image}: "
            f"{_scrub(run.stderr.strip(), password) or f'docker run exited {run.returncode}'}"
        )
    container = run.stdout.strip()
    say(f"scratch server: container {name} of {image} started")
    try:
        port = _published_port(container)
        conninfo = pg_conninfo.make_conninfo(
            host="127.0.0.1", port=port, user="postgres", password=password, dbname="postgres",
            connect_timeout=CONNECT_TIMEOUT,
        )
        _wait_for_login(container, conninfo, image, password, startup_timeout)
        say(f"scratch server: {name} accepts logins on 127.0.0.1:{port}")
        yield ScratchServer(conninfo, description=f"container {name} ({image}) on 127.0.0.1:{port}")
    finally:
        removed = _docker("rm", "-f", "-v", container)
        if removed.returncode != 0:
            say(f"scratch server: could not remove container {name}: {_scrub(removed.stderr.strip(), password)}")
        else:
            say(f"scratch server: container {name} removed")


def sweep_containers(*, log: Log | None = None, older_than: float = SWEEP_AGE_SECONDS) -> list[str]:
    """Remove the scratch containers (labelled with their start time) started more than `older_than`
    seconds ago: `--rm` does not stop a container whose process was killed. Returns their names."""
    say = log if log is not None else _noop
    listed = _docker("ps", "-a", "--filter", f"label={CONTAINER_LABEL}",
                     "--format", f'{{{{.Names}}}} {{{{.Label "{CONTAINER_LABEL}"}}}}')
    removed = []
    for line in listed.stdout.splitlines():
        name, _, started = line.strip().partition(" ")
        if not started.isdigit() or time.time() - int(started) < older_than:
            continue
        if _docker("rm", "-f", "-v", name).returncode == 0:
            say(f"scratch server: removed leftover container {name}")
            removed.append(name)
    return removed


def _published_port(container: str) -> int:
    out = _docker("port", container, "5432/tcp")
    for line in out.stdout.splitlines():
        host, _, port = line.strip().rpartition(":")
        if host in ("127.0.0.1", "0.0.0.0") and port.isdigit():
            return int(port)
    raise ScratchError(
        f"the scratch container publishes no port for 5432/tcp: {out.stdout.strip() or out.stderr.strip()}"
    )


def _wait_for_login(container: str, conninfo: str, image: str, password: str, timeout: float) -> None:
    # The image's first-init server listens only on its socket: a TCP login means the real server is up.
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            with psycopg.connect(conninfo, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as e:
            last = str(e).strip()
        state = _docker("inspect", "--format", "{{.State.Running}}", container)
        if state.stdout.strip() != "true":
            logs = _docker("logs", "--tail", "20", container)
            raise ScratchError(
                f"the scratch container of {image} stopped before accepting logins:\n"
                + _scrub((logs.stdout + logs.stderr).strip(), password)
            )
        if time.monotonic() > deadline:
            raise ScratchError(
                f"the scratch container of {image} accepted no login within {timeout:.0f} s: {_scrub(last, password)}"
            )
        time.sleep(0.25)


# ------------------------------------------------------------------------------------------- databases


def sweep_leftovers(
    server: ScratchServer, *, log: Log | None = None, older_than: float = SWEEP_AGE_SECONDS
) -> list[str]:
    """Drop the scratch databases (named `rehearsal_<epoch>_<hex>`) made more than `older_than`
    seconds ago: a killed process leaves them behind. Returns the names dropped."""
    say = log if log is not None else _noop
    dropped = []
    with _connect(server.admin_conninfo()) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'rehearsal\\_%' ORDER BY datname"
        )]
        for name in names:
            m = _NAME_RE.match(name)
            if m is None or time.time() - int(m[1]) < older_than:
                continue
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            except psycopg.Error as e:
                say(f"scratch: could not drop leftover database {name}: {e.diag.message_primary or type(e).__name__}")
                continue
            say(f"scratch: dropped leftover database {name}")
            dropped.append(name)
    return dropped


@contextlib.contextmanager
def scratch_database(
    server: ScratchServer,
    *,
    schema_from: str | None,
    owner: str,
    roles: Sequence[str] = (),
    log: Log | None = None,
    dump_timeout: float = DUMP_TIMEOUT_SECONDS,
    lock_wait_timeout_ms: int = LOCK_WAIT_TIMEOUT_MS,
) -> Iterator[str]:
    """A new database `rehearsal_<epoch>_<hex>` on `server`; yields its superuser conninfo and drops
    it (WITH (FORCE)) when the block ends, also after an error.

    schema_from: the target database's conninfo; its schema (not its rows) is copied with
    `pg_dump --schema-only` (read-only session) and restored, the roles owning or granted its
    objects created NOLOGIN where missing. None: an empty database owned by `owner`. Either way
    `owner` and `roles` exist afterwards (created NOLOGIN where missing)."""
    say = log if log is not None else _noop
    hidden = [*server.secrets(), *([schema_from] if schema_from else [])]
    try:
        sweep_leftovers(server, log=say)
        with _connect(server.admin_conninfo()) as admin:
            _require_superuser(admin, server)
            name = f"{DB_PREFIX}{int(time.time())}_{secrets.token_hex(4)}"
            wanted = [owner, *roles]
            source_roles: list[_Role] = []
            if schema_from is not None:
                source_roles = _target_roles(schema_from, [owner, *roles])
            _ensure_roles(admin, wanted, source_roles, say)
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )
    except psycopg.Error as e:
        raise ScratchError(
            f"cannot make a scratch database on {server.description}: {_scrub(str(e).strip(), *hidden)}"
        ) from e
    say(f"scratch: database {name} created on {server.description}")
    try:
        scratch = server.admin_conninfo(name)
        if schema_from is not None:
            _copy_schema(schema_from, scratch, say, dump_timeout, lock_wait_timeout_ms, hidden)
        yield scratch
    finally:
        try:
            with _connect(server.admin_conninfo()) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            say(f"scratch: database {name} dropped")
        except psycopg.Error as e:
            say(f"scratch: could not drop database {name} (the next rehearsal sweeps it): "
                f"{_scrub(str(e).strip(), *hidden)}")


def _require_superuser(conn: psycopg.Connection[Any], server: ScratchServer) -> None:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not row or not row[0]:
        raise ScratchError(
            f"the scratch server's user on {server.description} is not a superuser: a rehearsal creates "
            "roles and runs migrations as their owner role there; give the superuser of a throwaway server"
        )


class _Role:
    __slots__ = ("flags", "member_of", "name")

    def __init__(self, name: str, flags: list[str], member_of: list[tuple[str, bool]]) -> None:
        self.name = name
        self.flags = flags
        self.member_of = member_of  # (role, admin option)


_ATTRIBUTES = (
    ("rolsuper", "SUPERUSER"), ("rolcreatedb", "CREATEDB"), ("rolcreaterole", "CREATEROLE"),
    ("rolinherit", "INHERIT"), ("rolbypassrls", "BYPASSRLS"),
)


def _target_roles(target: str, extra: Sequence[str]) -> list[_Role]:
    """The roles that own, or are granted, objects of the target database (pg_shdepend), its owner
    and `extra`, with their attributes and their memberships among themselves and predefined roles."""
    options = f"{pg_conninfo.conninfo_to_dict(target).get('options') or ''} -c default_transaction_read_only=on"
    with _connect(target, options=options.strip()) as conn, conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SET LOCAL statement_timeout = 10000")
        names = [r[0] for r in conn.execute(
            """
            SELECT DISTINCT r.rolname
            FROM pg_roles r
            WHERE r.oid IN (
                SELECT refobjid FROM pg_shdepend
                WHERE refclassid = 'pg_authid'::regclass
                  AND (dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                       OR (classid = 'pg_database'::regclass
                           AND objid = (SELECT oid FROM pg_database WHERE datname = current_database())))
                UNION SELECT datdba FROM pg_database WHERE datname = current_database())
               OR r.rolname = ANY(%s)
            """,
            (list(extra),),
        )]
        roles = []
        columns = sql.SQL(", ").join(sql.Identifier(c) for c, _ in _ATTRIBUTES)
        for name in names:
            query = sql.SQL("SELECT {} FROM pg_roles WHERE rolname = %s").format(columns)
            row = conn.execute(query, (name,)).fetchone()
            if row is None:
                continue
            flags = [flag if value else f"NO{flag}" for (_, flag), value in zip(_ATTRIBUTES, row, strict=True)]
            member_of = [(r[0], bool(r[1])) for r in conn.execute(
                """
                SELECT g.rolname, m.admin_option FROM pg_auth_members m
                JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                WHERE u.rolname = %s AND (g.rolname = ANY(%s) OR g.rolname LIKE 'pg\\_%%')
                """,
                (name, names),
            )]
            roles.append(_Role(name, flags, member_of))
        return roles


def _ensure_roles(conn: psycopg.Connection[Any], wanted: Sequence[str], source: Sequence[_Role], say: Log) -> None:
    """Create the missing roles NOLOGIN (with the source's attributes and memberships); an existing
    role is never changed: on the target's own cluster it is the target's role."""
    by_name = {r.name: r for r in source}
    for name in wanted:
        by_name.setdefault(name, _Role(name, [], []))
    existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(by_name),))}
    created = [r for r in by_name.values() if r.name not in existing]
    for role in created:
        flags = sql.SQL(" ").join(sql.SQL(f) for f in ["NOLOGIN", *role.flags])  # flags from a fixed list
        conn.execute(sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(role.name), flags))
    for role in created:
        for group, admin in role.member_of:
            conn.execute(
                sql.SQL("GRANT {} TO {}{}").format(
                    sql.Identifier(group), sql.Identifier(role.name), sql.SQL(" WITH ADMIN OPTION" if admin else "")
                )
            )
    if created:
        say(f"scratch: created role(s) {', '.join(r.name for r in created)} (NOLOGIN)")


# ------------------------------------------------------------------------------------------- dump / restore


def _client_binary(name: str) -> str:
    """The newest PostgreSQL client `name` installed (Debian layout), else the one on PATH: pg_dump
    refuses a server newer than itself."""
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found is None:
        raise ScratchError(
            f"{name} is not installed: install the PostgreSQL client of the target server's major version "
            "(Debian: postgresql-client-NN) to rehearse migrations on a copy of its schema"
        )
    return found


def _libpq_env(conninfo: str, folder: str, name: str) -> tuple[str, dict[str, str]]:
    """(conninfo without its password, environment naming a 0600 password file in `folder`): a password
    is never on a command line nor in a process's environment."""
    params = pg_conninfo.conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    if password:
        passfile = os.path.join(folder, f"{name}.pgpass")
        escaped = str(password).replace("\\", "\\\\").replace(":", "\\:")
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:*:{escaped}\n")
        env["PGPASSFILE"] = passfile
    env.setdefault("PGCONNECT_TIMEOUT", str(CONNECT_TIMEOUT))
    return pg_conninfo.make_conninfo(**{k: str(v) for k, v in params.items()}), env


# Section descriptions of a TOC line of `pg_restore -l` that are more than one word.
_MULTIWORD_DESCS = sorted(
    (
        "FK CONSTRAINT", "CHECK CONSTRAINT", "TABLE DATA", "DEFAULT ACL", "SEQUENCE SET", "SEQUENCE OWNED BY",
        "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "EVENT TRIGGER", "FOREIGN TABLE", "FOREIGN DATA WRAPPER",
        "FOREIGN SERVER", "USER MAPPING", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "ROW SECURITY",
        "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE",
        "SHELL TYPE", "LARGE OBJECT", "ACCESS METHOD", "OPERATOR CLASS", "OPERATOR FAMILY", "TABLE ATTACH",
        "INDEX ATTACH", "PROCEDURAL LANGUAGE", "STATISTICS DATA", "DATABASE PROPERTIES",
    ),
    key=len,
    reverse=True,
)
_TOC_RE = re.compile(r"^\d+; \d+ \d+ (?P<rest>.*)$")


def _is_pg_cron_entry(line: str) -> bool:
    """A TOC line of pg_cron's extension or of an object in its `cron` schema."""
    m = _TOC_RE.match(line)
    if m is None:
        return False
    rest = m["rest"]
    desc = next((d for d in _MULTIWORD_DESCS if rest.startswith(d + " ")), rest.split(" ", 1)[0])
    schema, _, tag = rest[len(desc) + 1 :].partition(" ")
    if desc == "EXTENSION" and tag.split(" ", 1)[0] == "pg_cron":
        return True
    if tag.startswith(("EXTENSION pg_cron", "SCHEMA cron ")) or tag == "SCHEMA cron":
        return True
    return schema == "cron"


def _copy_schema(target: str, scratch: str, say: Log, timeout: float, lock_wait_ms: int, hidden: list[str]) -> None:
    pg_dump, pg_restore = _client_binary("pg_dump"), _client_binary("pg_restore")
    with tempfile.TemporaryDirectory(prefix="rehearsal-") as tmp:
        dump = os.path.join(tmp, "schema.dump")
        source, env = _libpq_env(target, tmp, "target")
        # The whole session is read-only; pg_dump itself only reads, under ACCESS SHARE locks.
        env["PGOPTIONS"] = f"{os.environ.get('PGOPTIONS', '')} -c default_transaction_read_only=on".strip()
        env["PGAPPNAME"] = "migration-rehearsal-dump"
        started = time.monotonic()
        _run_client(
            [pg_dump, "--schema-only", "-Fc", f"--lock-wait-timeout={int(lock_wait_ms)}", "--no-password",
             "-f", dump, "--dbname", source],
            env, timeout, "pg_dump of the target's schema", hidden,
        )
        listing = _run_client([pg_restore, "-l", dump], env, timeout, "pg_restore -l", hidden).stdout
        kept = [line for line in listing.splitlines() if not _is_pg_cron_entry(line)]
        toc = os.path.join(tmp, "schema.list")
        with open(toc, "w") as f:
            f.write("\n".join(kept) + "\n")
        dest, restore_env = _libpq_env(scratch, tmp, "scratch")
        restore_env["PGAPPNAME"] = "migration-rehearsal-restore"
        _run_client(
            [pg_restore, "--exit-on-error", "--single-transaction", "--no-password", "-L", toc,
             "--dbname", dest, dump],
            restore_env, timeout, "pg_restore of the target's schema into the scratch database", hidden,
        )
        say(f"scratch: target schema copied in {time.monotonic() - started:.1f} s (pg_dump --schema-only)")


def _run_client(
    command: list[str], env: dict[str, str], timeout: float, what: str, hidden: list[str]
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise ScratchError(f"{what} did not finish within {timeout:.0f} s; nothing was rehearsed") from e
    if proc.returncode != 0:
        stderr = _scrub(proc.stderr.strip(), *hidden)
        fix = ""
        if "server version mismatch" in stderr:
            fix = (
                f"\n{os.path.basename(command[0])} ({command[0]}) is older than the target server: install the "
                "PostgreSQL client of the server's major version or newer (Debian: postgresql-client-NN) so "
                "that it comes first"
            )
        raise ScratchError(f"{what} failed (exit {proc.returncode}):\n{stderr}{fix}")
    return proc
