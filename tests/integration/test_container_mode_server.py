"""The container exactly as PostgresServer declares it (command, environment, password file,
healthcheck), run with the docker CLI on the real image.

pulumi-docker cannot run here (README, "Blocked here"), so this proves the container-mode server
configuration itself: healthy only once it accepts connections, pg_cron's jobs kept in an
application database that is created after the server started, and a job running as a
non-superuser role with no password (background workers).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from devsupport.local_postgres import free_port
from infra.components.server import PASSWORD_FILE, healthcheck_test, server_command, server_envs
from tests.helpers import docker_output

pytestmark = pytest.mark.integration

IMAGE = "customer-insights/postgres-cron:15"
APP_DATABASE = "customer_insights"


def test_declared_container_is_healthy_and_runs_cron_jobs_as_the_app_roles(tmp_path: Path) -> None:
    name, port, password = f"ci-server-{uuid.uuid4().hex[:8]}", free_port(), uuid.uuid4().hex
    password_file = tmp_path / "password"
    password_file.write_text(password)
    test = healthcheck_test("postgres")
    assert test[0] == "CMD"
    run = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5432",
           "-v", f"{password_file}:{PASSWORD_FILE}:ro",
           "--health-cmd", " ".join(test[1:]), "--health-interval", "1s", "--health-retries", "60"]
    for env in server_envs("postgres"):
        run += ["-e", env]
    docker_output(*run, IMAGE, *server_command(APP_DATABASE))
    try:
        deadline = time.monotonic() + 90
        while (health := docker_output("inspect", "-f", "{{.State.Health.Status}}", name)) != "healthy":
            assert health in ("starting", "unhealthy") and time.monotonic() < deadline, docker_output("logs", name)
            time.sleep(0.5)
        # Healthy means connectable (ServerReady waits for this login itself, without the health polling).
        admin = psycopg.conninfo.make_conninfo(host="127.0.0.1", port=port, user="postgres", password=password,
                                               dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            assert "pg_cron" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(APP_DATABASE)))
            conn.execute("CREATE ROLE job_runner LOGIN")  # no password: background workers need none
        with psycopg.connect(admin.replace("dbname=postgres", f"dbname={APP_DATABASE}"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_cron")
            conn.execute("CREATE TABLE ticks (at timestamptz NOT NULL DEFAULT now())")
            conn.execute("GRANT INSERT ON ticks TO job_runner")
            job = conn.execute(
                "SELECT cron.schedule_in_database('tick', '* * * * *', 'INSERT INTO ticks DEFAULT VALUES', %s,"
                " 'job_runner')", (APP_DATABASE,)).fetchone()[0]
            deadline = time.monotonic() + 150
            while True:
                run_row = conn.execute(
                    "SELECT status, return_message FROM cron.job_run_details WHERE jobid = %s"
                    " AND status IN ('succeeded', 'failed')", (job,)).fetchone()
                if run_row or time.monotonic() > deadline:
                    break
                time.sleep(2)
            assert run_row == ("succeeded", "INSERT 0 1"), (run_row, docker_output("logs", name))
            assert conn.execute("SELECT count(*) FROM ticks").fetchone()[0] >= 1
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)
