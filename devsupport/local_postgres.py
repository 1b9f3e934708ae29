"""A throwaway PostgreSQL cluster run from Debian's server binaries.

Integration tests use it as "a PostgreSQL server started directly on the machine": it is also
what external mode is tested against. PostgreSQL refuses to run as root, so when the tests run as
root the server runs as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import psycopg
from psycopg import sql

from infra.migrate import CONNECT_TIMEOUT


def find_pg_bindir() -> str:
    """The newest installed PostgreSQL server's bin directory (Debian layout)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(p.split("/")[4]),
    )
    if not candidates:
        raise RuntimeError(
            "No PostgreSQL server binaries under /usr/lib/postgresql/*/bin: "
            "install them with `apt-get install postgresql-15 postgresql-15-cron` "
            "(bootstrap/bootstrap.sh does this)."
        )
    return os.path.dirname(candidates[-1])


def _ephemeral_ports() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range.

    Tests keep a port for later (a stack's hostPort across several up/destroy cycles, a server
    restarted on its port). A port of the ephemeral range may meanwhile become the local end of any
    outgoing connection, and the next bind fails; ports below it are only ever taken on purpose.
    """
    low = 20000
    high = _ephemeral_ports()[0] - 1
    for _ in range(1000):
        port = random.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port between {low} and {high} on 127.0.0.1")


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    user: str
    password: str

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            dbname=dbname,
            user=user or self.user,
            password=password if password is not None else self.password,
            connect_timeout=CONNECT_TIMEOUT,
        )

    def url(self, dbname: str = "postgres") -> str:
        """The postgresql:// form (what the config's scratch URLs and node-postgres take)."""
        return f"postgresql://{quote(self.user)}:{quote(self.password)}@{self.host}:{self.port}/{dbname}"


class LocalPostgres:
    """initdb + pg_ctl start/stop of a cluster in a temporary directory on 127.0.0.1."""

    superuser = "postgres"

    def __init__(self, *, cron_database: str = "postgres", extra_settings: dict[str, str] | None = None):
        self.bindir = find_pg_bindir()
        self.port = free_port()
        self.password = "local-test-" + os.urandom(8).hex()
        self.cron_database = cron_database
        self.extra_settings = extra_settings or {}
        self.workdir = tempfile.mkdtemp(prefix="pgtest-")
        self.datadir = os.path.join(self.workdir, "data")
        self.logfile = os.path.join(self.workdir, "server.log")
        self._as_postgres = os.geteuid() == 0

    @property
    def address(self) -> ServerAddress:
        return ServerAddress("127.0.0.1", self.port, self.superuser, self.password)

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def start(self) -> LocalPostgres:
        if self._as_postgres:
            shutil.chown(self.workdir, "postgres", "postgres")
        pwfile = os.path.join(self.workdir, "pwfile")
        with open(pwfile, "w") as f:
            f.write(self.password)
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            f"{self.bindir}/initdb", "-D", self.datadir, "-U", self.superuser,
            "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C.UTF-8",
        )
        os.unlink(pwfile)
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": self.workdir,
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": self.cron_database,
            # Jobs run in background workers, as on managed services: no libpq login, no password.
            "cron.use_background_workers": "on",
            "max_worker_processes": "32",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **self.extra_settings,
        }
        with open(os.path.join(self.datadir, "postgresql.auto.conf"), "a") as f:
            for key, value in settings.items():
                f.write(f"{key} = '{value}'\n")
        self._run(f"{self.bindir}/pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "start")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.address.dsn()):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run(f"{self.bindir}/pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)

    @contextlib.contextmanager
    def database(self, name: str) -> Iterator[str]:
        """A fresh database for one test; dropped afterwards. Yields its superuser DSN."""
        with psycopg.connect(self.address.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.address.dsn(name)
        finally:
            with psycopg.connect(self.address.dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
