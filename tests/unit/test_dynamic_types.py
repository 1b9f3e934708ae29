"""The types the dynamic resources register under are recorded in every stack's state: they never change."""

from __future__ import annotations

import pytest

from devsupport import program_mocks as mocks

pytestmark = pytest.mark.unit

RECORDED = {
    "MIGRATION": "pulumi-python:dynamic/db:Migration",
    "MIGRATION_CHECKPOINT": "pulumi-python:dynamic/db:MigrationCheckpoint",
    "CRON_JOB": "pulumi-python:dynamic/db:CronJob",
    "SERVER_READY": "pulumi-python:dynamic/db:ServerReady",
    "STACK_CLAIM": "pulumi-python:dynamic/db:StackClaim",
    "DATA_VOLUME_CHECK": "pulumi-python:dynamic/db:DataVolumeCheck",
    "ADOPTED_HISTORY": "pulumi-python:dynamic/db:AdoptedHistory",
    "ROLE_PASSWORD": "pulumi-python:dynamic/db:RolePassword",
}


@pytest.mark.parametrize(("constant", "recorded"), RECORDED.items())
def test_every_dynamic_resource_keeps_its_recorded_type(constant: str, recorded: str) -> None:
    assert getattr(mocks, constant) == recorded
