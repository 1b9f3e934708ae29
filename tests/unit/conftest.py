"""Unit tests never reach a Docker engine or an external server: the program's preflights are recorded instead."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import infra.preflight
from devsupport.program_mocks import FakePreflight
from infra.preflight import ServerFacts


@pytest.fixture(scope="session", autouse=True)
def container_host_preflight() -> Iterator[list[dict[str, Any]]]:
    """The calls `__main__.py` makes to `check_container_host` (which runs docker commands for real).

    Session-scoped: module-scoped fixtures run the program before any function-scoped fixture.
    """
    calls: list[dict[str, Any]] = []

    def record(**kwargs: Any) -> str:
        calls.append(kwargs)
        return infra.preflight.PG_MAJOR

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(infra.preflight, "check_container_host", record)
        yield calls


@pytest.fixture
def preflight(monkeypatch: pytest.MonkeyPatch) -> FakePreflight:
    """infra.preflight.check_external_server connects to the server: never for real here."""
    fake = FakePreflight(ServerFacts(cron_database="cron_db"))
    monkeypatch.setattr(infra.preflight, "check_external_server", fake)
    return fake
