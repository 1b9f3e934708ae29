"""The program's typed grants as SQL, for tests that set up a role the way the program does, without Pulumi."""

from __future__ import annotations

from psycopg import sql

from infra.components.scheduled_job import JobGrant

_OBJECT_KIND = {"table": "TABLE", "column": "TABLE", "sequence": "SEQUENCE", "function": "FUNCTION",
                "procedure": "PROCEDURE"}


def grant_statement(grant: JobGrant, role: str) -> sql.Composed:
    """`GRANT ... TO role` for one JobGrant, as the postgresql provider's Grant runs it."""
    columns = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, grant.columns or ())))
    return sql.SQL("GRANT {privileges}{columns} ON {kind} {objects} TO {role}").format(
        privileges=sql.SQL(", ").join(map(sql.SQL, grant.privileges)),
        columns=columns if grant.columns else sql.SQL(""),
        kind=sql.SQL(_OBJECT_KIND[grant.object_type]),
        objects=sql.SQL(", ").join(sql.Identifier(grant.schema, name) for name in grant.objects),
        role=sql.Identifier(role),
    )
