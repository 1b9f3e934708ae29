"""ServerReady's wait against the real image's first start: it returns only once the final server
accepts a password login over TCP, never during the image's initialisation (the temporary server
it runs then listens on its Unix socket only)."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from devsupport.local_postgres import free_port
from infra.components.server import PASSWORD_FILE, server_command, server_envs
from infra.dynamic.server_ready import ServerReadyProvider, wait_for_login

pytestmark = pytest.mark.integration

IMAGE = "customer-insights/postgres-cron:15"


def props(port: int, password: str, timeout_s: int = 90) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "dbname": "postgres", "user": "postgres", "password": password,
            "sslmode": "disable", "container_id": "c", "container": "c", "timeout_s": timeout_s}


def test_ready_means_the_final_server_accepts_the_login(tmp_path: Path) -> None:
    name, port, password = f"ci-ready-{uuid.uuid4().hex[:8]}", free_port(), uuid.uuid4().hex
    (tmp_path / "password").write_text(password)
    run = ["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5432",
           "-v", f"{tmp_path / 'password'}:{PASSWORD_FILE}:ro"]
    for env in server_envs("postgres"):
        run += ["-e", env]
    subprocess.run([*run, IMAGE, *server_command("postgres")], check=True, capture_output=True)
    try:
        ServerReadyProvider().create(props(port, password))  # a fresh data directory: initdb first
        dsn = psycopg.conninfo.make_conninfo(host="127.0.0.1", port=port, user="postgres", password=password,
                                             dbname="postgres")
        with psycopg.connect(dsn) as conn:
            started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
            assert "pg_cron" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        time.sleep(3)  # had that been the initialisation's temporary server, it would be gone by now
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT pg_postmaster_start_time()").fetchone() == started
        with pytest.raises(RuntimeError, match="did not accept a login within 1 s"):
            wait_for_login(props(port, "wrong-password", timeout_s=1))
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)
