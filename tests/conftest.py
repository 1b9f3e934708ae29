from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devsupport.local_postgres import LocalPostgres, ServerAddress


@pytest.fixture(scope="session")
def local_postgres() -> Iterator[LocalPostgres]:
    """One PostgreSQL server (Debian's binaries, pg_cron preloaded) for the whole session."""
    server = LocalPostgres(cron_database="cron_tests").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server(local_postgres: LocalPostgres) -> ServerAddress:
    """Superuser address of the session's server."""
    return local_postgres.address


@pytest.fixture
def fresh_db(local_postgres: LocalPostgres) -> Iterator[str]:
    """Superuser DSN of a brand-new, empty database, dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    with local_postgres.database(name) as dsn:
        yield dsn


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A skipped test is a failed test here: every test of this suite runs on a bootstrapped machine,
    and a skip (a missing tool, a missing plugin) would hide exactly what CI must catch."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped, which this suite counts as a failure: {reason}"
