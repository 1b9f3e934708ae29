"""The local image customer-insights/postgres-cron:15 against the official `postgres` image's contract.

Real Docker engine, real image, no mocks: containers are driven with the docker CLI. Prerequisites
(CI runs them first): `bash bootstrap/docker-engine.sh` and `bash bootstrap/postgres-image/build.sh`.
Every container and volume a test creates has a unique name and is removed afterwards.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.helpers import docker

pytestmark = pytest.mark.integration

IMAGE = os.environ.get("POSTGRES_CRON_IMAGE", "customer-insights/postgres-cron:15")
READY_TIMEOUT = 60.0


@functools.cache
def engine_problem() -> str | None:
    """Why the engine or the image is unusable, or None. Checked once per session."""
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    except FileNotFoundError:
        return "no `docker` client on PATH: run `bash bootstrap/docker-engine.sh` first."
    if info.returncode != 0:
        return (
            "`docker info` failed, no Docker engine is reachable: run `bash bootstrap/docker-engine.sh` "
            f"(then `bash bootstrap/postgres-image/build.sh`).\n{info.stderr.strip()}"
        )
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        return f"image {IMAGE} not found: run `bash bootstrap/postgres-image/build.sh` first."
    return None


def require_engine_and_image() -> None:
    """Fail (never skip) without the engine or the image: CI bootstraps both first.

    Called at the top of each test body, not in a fixture, so that pytest reports FAILED (not ERROR).
    """
    problem = engine_problem()
    if problem:
        pytest.fail(problem)


@dataclass
class PgContainer:
    name: str
    user: str
    password: str
    db: str
    port: int = 0

    def connect(self, password: str | None = None) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password if password is None else password,
            dbname=self.db,
            connect_timeout=5,
            autocommit=True,
        )

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr


class Docker:
    """Creates uniquely named containers/volumes and removes all of them at teardown."""

    def __init__(self) -> None:
        self.prefix = "ci-pgimg-" + uuid.uuid4().hex[:8]
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def unique(self, what: str) -> str:
        return f"{self.prefix}-{what}-{uuid.uuid4().hex[:6]}"

    def volume(self) -> str:
        name = self.unique("data")
        docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def run(
        self, *args: str, detach: bool = True, timeout: float = 120
    ) -> tuple[str, subprocess.CompletedProcess[str]]:
        """`docker run` with a unique --name; detached by default (then checks it started)."""
        name = self.unique("pg")
        self.containers.append(name)
        cmd = ["run", "--name", name, *(["-d"] if detach else []), *args]
        return name, docker(*cmd, check=detach, timeout=timeout)

    def start_postgres(
        self,
        *,
        user: str = "postgres",
        db: str | None = None,
        password: str | None = None,
        env: dict[str, str] | None = None,
        mounts: Sequence[str] = (),
        server_args: Sequence[str] = (),
    ) -> PgContainer:
        password = password if password is not None else "pw-" + uuid.uuid4().hex
        env = {"POSTGRES_USER": user, **({"POSTGRES_DB": db} if db else {}), **(env or {})}
        if "POSTGRES_PASSWORD_FILE" not in env:
            env["POSTGRES_PASSWORD"] = password
        args = ["-p", "127.0.0.1::5432"]  # loopback only; Docker picks a free host port
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        for mount in mounts:
            args += ["-v", mount]
        name, _ = self.run(*args, IMAGE, *server_args)
        pg = PgContainer(name=name, user=user, password=password, db=db or user)
        pg.port = published_port(name)
        wait_ready(pg)
        return pg

    def remove(self, name: str) -> None:
        docker("rm", "-f", "-v", name, check=False)

    def cleanup(self) -> None:
        for name in self.containers:
            self.remove(name)
        for volume in self.volumes:
            docker("volume", "rm", "-f", volume, check=False)


@pytest.fixture
def dk() -> Iterator[Docker]:
    d = Docker()
    try:
        yield d
    finally:
        d.cleanup()


def published_port(name: str) -> int:
    out = docker("port", name, "5432/tcp").stdout.split()
    host, _, port = out[0].rpartition(":")
    assert host == "127.0.0.1", f"port published on {host}, expected loopback only: {out}"
    return int(port)


def container_state(name: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)


def wait_ready(pg: PgContainer, timeout: float = READY_TIMEOUT) -> None:
    """pg_isready inside the container (the healthcheck), then a real psycopg connection."""
    deadline = time.monotonic() + timeout
    while True:
        state = container_state(pg.name)
        if not state["Running"]:
            pytest.fail(f"container {pg.name} exited ({state['ExitCode']}) before ready:\n{pg.logs()}")
        ready = docker(
            "exec", pg.name, "pg_isready", "-U", pg.user, "-d", pg.db, "-h", "127.0.0.1", check=False
        )
        if ready.returncode == 0:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"pg_isready never succeeded in {pg.name} ({ready.stdout.strip()}):\n{pg.logs()}")
        time.sleep(0.3)
    while True:
        try:
            with pg.connect() as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"no psycopg connection to {pg.name} on port {pg.port}: {exc}\n{pg.logs()}")
            time.sleep(0.3)


def test_password_file_user_db_and_pg_cron(dk: Docker, tmp_path: Path) -> None:
    require_engine_and_image()
    password = "s3cret-" + uuid.uuid4().hex
    secret = tmp_path / "pg_password"
    secret.write_text(password + "\n")  # trailing newline, as `echo > file` leaves; must be tolerated
    secret.chmod(0o600)  # root-only on the host: the entrypoint reads it before dropping privileges
    pg = dk.start_postgres(
        user="insights_admin",
        db="insights",
        password=password,
        env={"POSTGRES_PASSWORD_FILE": "/run/secrets/pg_password"},
        mounts=[f"{secret}:/run/secrets/pg_password:ro"],
    )
    with pg.connect() as conn:
        row = conn.execute("SELECT current_user, current_database(), current_setting('port')").fetchone()
        assert row == ("insights_admin", "insights", "5432")
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)

        conn.execute("CREATE EXTENSION pg_cron")
        job_id = conn.execute(
            "SELECT cron.schedule('ci-image-job', '*/5 * * * *', 'SELECT 1')"
        ).fetchone()[0]
        job = conn.execute(
            "SELECT jobid, schedule, command, database, username FROM cron.job WHERE jobname = 'ci-image-job'"
        ).fetchone()
        assert job == (job_id, "*/5 * * * *", "SELECT 1", "insights", "insights_admin")

        assert conn.execute("SELECT cron.unschedule('ci-image-job')").fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = 'ci-image-job'").fetchone() == (0,)

    # Host connections use scram-sha-256: a wrong password is refused.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect(password="wrong-" + password).close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"POSTGRES_PASSWORD": "a", "POSTGRES_PASSWORD_FILE": "/etc/hostname"},
            "both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set",
        ),
        ({}, "no superuser password is set"),
    ],
    ids=["password-and-file", "no-password"],
)
def test_refuses_to_start_with_bad_password_settings(dk: Docker, env: dict[str, str], message: str) -> None:
    require_engine_and_image()
    args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    _, proc = dk.run(*args, IMAGE, detach=False, timeout=60)
    assert proc.returncode != 0, f"container should have failed:\n{proc.stdout}\n{proc.stderr}"
    assert message in proc.stderr, proc.stderr


def test_data_persists_across_container_recreation(dk: Docker) -> None:
    require_engine_and_image()
    volume = dk.volume()
    mount = f"{volume}:/var/lib/postgresql/data"
    first = dk.start_postgres(db="insights", mounts=[mount])
    with first.connect() as conn:
        conn.execute("CREATE TABLE survivor (note text)")
        conn.execute("INSERT INTO survivor VALUES ('still here')")
    docker("stop", first.name, timeout=60)
    dk.remove(first.name)

    # Same volume, new container: no re-initialization, the old password and data are still there.
    second = dk.start_postgres(db="insights", password=first.password, mounts=[mount])
    with second.connect() as conn:
        assert conn.execute("SELECT note FROM survivor").fetchall() == [("still here",)]
    logs = second.logs()
    assert "skipping initialization" in logs
    assert "initializing a new cluster" not in logs


def test_extra_server_options_are_honoured(dk: Docker) -> None:
    require_engine_and_image()
    pg = dk.start_postgres(db="insights", server_args=["postgres", "-c", "work_mem=7MB"])
    with pg.connect() as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("7MB",)
        # The default pg_cron settings still apply next to the caller's own options.
        assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("pg_cron",)
        assert conn.execute("SHOW cron.database_name").fetchone() == ("insights",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("*",)
