"""`stop_waiting_on_property_outputs`: what a Migration leaves in the set the Python SDK waits on at exit.

The SDK awaits every tracked Output after the program returns, re-arming a callback on each pending
one at every wake-up; a Migration's ~20 property outputs made that quadratic in the number of
migrations (bench/README.md, "Provisioner"). Its `urn`/`id` stay tracked, its properties do not, and
they still resolve (from the RegisterResource call).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pulumi
import pytest
from pulumi.runtime.settings import SETTINGS

from infra.connection import Connection
from infra.dynamic.base import stop_waiting_on_property_outputs
from infra.dynamic.migration import Migration
from infra.migrate import MigrationFile, checksum_of

pytestmark = pytest.mark.unit

UP = "CREATE TABLE t (id int);\n"


class EchoMocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


@pytest.fixture(autouse=True)
def mocks() -> None:
    pulumi.runtime.set_mocks(EchoMocks(), project="p", stack="s", preview=False)


@pulumi.runtime.test
def test_migration_properties_are_not_waited_on_but_still_resolve() -> pulumi.Output[Any]:
    m = Migration(
        "001_t",
        migration=MigrationFile(version="001", name="t", filename="001_t.sql", up_sql=UP, down_sql=None,
                                checksum=checksum_of(UP), transactional=True),
        connection=Connection(host="127.0.0.1", port=5432, database="d", user="u", password="pw-0123456789"),
        accept_checksum=False,
        keep_on_destroy=False,
    )
    with SETTINGS.lock:
        tracked = set(SETTINGS.outputs)
    for name in ("version", "filename", "checksum", "up_sql", "password", "applied_at", "__provider"):
        assert getattr(m, name)._data not in tracked, f"{name} is still waited on at exit"
    assert m.urn._data in tracked or m.urn._data.done()

    def check(values: list[Any]) -> None:
        assert values == ["001", "001_t.sql", checksum_of(UP)]

    return pulumi.Output.all(m.version, m.filename, m.checksum).apply(check)


def test_a_failed_output_is_marked_retrieved() -> None:
    loop = asyncio.new_event_loop()
    try:
        future: asyncio.Future[Any] = loop.create_future()

        class FakeOutput:
            _data = future
            untracked = False

            def _untrack(self) -> None:
                FakeOutput.untracked = True

        class FakeResource:
            prop = FakeOutput()

        stop_waiting_on_property_outputs(FakeResource(), ["prop", "missing"])  # type: ignore[arg-type]
        assert FakeOutput.untracked
        future.set_exception(RuntimeError("registration failed"))
        loop.run_until_complete(asyncio.sleep(0))
        assert future._log_traceback is False  # type: ignore[attr-defined]  # asyncio's "never retrieved" flag
    finally:
        loop.close()
