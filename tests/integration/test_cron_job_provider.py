"""The CronJob provider against real PostgreSQL with pg_cron: what a failed create leaves behind."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from devsupport.local_postgres import LocalPostgres
from infra.dynamic.base import ProviderFailure
from infra.dynamic.cron_job import HISTORY_SCHEMA, CronJobProvider

pytestmark = pytest.mark.integration


def cron_database(server: LocalPostgres) -> str:
    """The session server's pg_cron database, with the extension."""
    with psycopg.connect(server.address.dsn(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (server.cron_database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(server.cron_database)))
    with psycopg.connect(server.address.dsn(server.cron_database), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    return server.cron_database


def test_a_create_whose_history_grant_fails_leaves_no_job_scheduled(local_postgres: LocalPostgres) -> None:
    database, a = cron_database(local_postgres), local_postgres.address
    job_name = f"job-{uuid.uuid4().hex[:8]}"
    props: dict[str, Any] = {
        "host": a.host, "port": a.port, "dbname": database, "user": a.user, "password": a.password,
        "sslmode": "disable", "job_name": job_name, "schedule": "*/5 * * * *", "command": "SELECT 1",
        "database": database, "run_as": a.user, "active": True, "history_readers": ["no_such_reader"],
    }
    with pytest.raises(ProviderFailure, match="no_such_reader"):
        CronJobProvider().create(props)
    with psycopg.connect(a.dsn(database)) as conn:
        assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = %s", (job_name,)).fetchone() == (0,)
        assert conn.execute("SELECT to_regproc(format('%%I.%%I', %s::text, %s::text))",
                            (HISTORY_SCHEMA, job_name)).fetchone() == (None,)
