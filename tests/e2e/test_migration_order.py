"""A migration file added below the highest applied version, through the real engine and PostgreSQL.

The program is wired as `__main__.py` wires it: the stack config (`infra.config`) gives the switch
`allowOutOfOrder`, and `migration_fixes` words the refusal in the project's own config keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi import automation as auto

from infra import config as stack_config
from infra.components.migrations import Migrations, MigrationsArgs
from tests.e2e.conftest import PROJECT, program_connection
from tests.e2e.test_migrations_engine import recorded, tables

pytestmark = pytest.mark.e2e


def configured_program(connection: dict[str, Any]):
    def program() -> None:
        cfg = stack_config.load(pulumi.Config(), namespace=pulumi.get_project(), stack=pulumi.get_stack())
        directory = Path(cfg.migrations.directory)
        chain = Migrations("schema", MigrationsArgs(
            migrations=stack_config.checked_migrations(directory, cfg.migrations, pulumi.get_project()),
            directory=str(directory), connection=program_connection(connection),
            accept_checksums=cfg.migrations.accept_checksums,
            keep_data_on_destroy=cfg.keep_data_on_destroy,
            allow_out_of_order=cfg.migrations.allow_out_of_order,
            fixes=stack_config.migration_fixes(pulumi.get_project()),
        ))
        pulumi.export("versions", chain.versions)
    return program


def add(directory: Path, filename: str, up: str, down: str) -> None:
    (directory / filename).write_text(up)
    (directory / filename.replace(".sql", ".down.sql")).write_text(down)


def test_a_file_added_below_the_last_applied_one_is_refused_until_the_config_allows_it(
    owner_role_db: dict[str, Any], new_stack: Any, sql_copy: Path
) -> None:
    stack = new_stack(configured_program(owner_role_db),
                      config={"migrationsDir": auto.ConfigValue(str(sql_copy))})
    add(sql_copy, "900_add_customer_notes.sql", "ALTER TABLE customers ADD COLUMN notes text;\n",
        "ALTER TABLE customers DROP COLUMN notes;\n")
    stack.up(color="never")
    before = recorded(owner_role_db)
    assert max(before, key=int) == "900"

    # A branch merged after 900 was applied brings 050.
    add(sql_copy, "050_create_customer_segments.sql", "CREATE TABLE customer_segments (id bigint PRIMARY KEY);\n",
        "DROP TABLE customer_segments;\n")
    for operation in (stack.preview, stack.up):
        with pytest.raises(auto.errors.CommandError) as failure:
            operation(color="never")
        message = str(failure.value)
        for needle in (
            "050_create_customer_segments.sql (version 050) is not applied, but a later version already is: "
            "900 (add_customer_notes).",
            "Refused; nothing ran.",
            "rename it to 901_create_customer_segments.sql",
            f"apply it out of order: set the stack config `{PROJECT}:allowOutOfOrder` to true",
        ):
            assert needle in message, (operation.__name__, needle, message)
        assert "Traceback" not in message
        assert recorded(owner_role_db) == before
        assert "customer_segments" not in tables(owner_role_db)

    # The documented way: allow it for one `up`, then remove the key; the file is history from then on.
    stack.set_config("allowOutOfOrder", auto.ConfigValue("true"))
    result = stack.up(color="never")
    assert result.summary.resource_changes == {"create": 1, "same": len(before) + 2}  # + stack + component
    assert set(recorded(owner_role_db)) == set(before) | {"050"}
    assert "customer_segments" in tables(owner_role_db)
    stack.remove_config("allowOutOfOrder")
    stack.preview(expect_no_changes=True, color="never")
