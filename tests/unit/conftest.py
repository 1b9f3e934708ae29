"""Unit tests never reach a Docker engine: the program's container-host preflight is recorded instead."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import infra.components.server


@pytest.fixture(scope="session", autouse=True)
def container_host_preflight() -> Iterator[list[dict[str, Any]]]:
    """The calls `__main__.py` makes to `check_container_host` (which runs docker commands for real).

    Session-scoped: module-scoped fixtures run the program before any function-scoped fixture.
    """
    calls: list[dict[str, Any]] = []

    def record(**kwargs: Any) -> str:
        calls.append(kwargs)
        return infra.components.server.PG_MAJOR

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(infra.components.server, "check_container_host", record)
        yield calls
