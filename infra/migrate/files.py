"""Migration files: naming, loading, validation and checksums.

A migration is `NNN_snake_name.sql` (the "up" script, required) plus, optionally,
`NNN_snake_name.down.sql` (the script that reverts it). `NNN` is the version: 3 or more digits,
unique by value, in the order the migrations are applied. Files are read as UTF-8 text (a BOM is
dropped, line endings are normalised to `\\n` so a checkout with CRLF line endings has the same
checksum). Other files of the directory (README.md, ...) are ignored; a `.sql` file with another name is
an error, so a typo never silently skips a migration.

A script runs in one transaction unless its leading comment lines (the comment or blank lines before
its first statement) contain `-- migrate:no-transaction`; then each statement runs on its own, in
autocommit (needed by `CREATE INDEX CONCURRENTLY`, `ALTER TYPE ... ADD VALUE` before use, ...). A
transactional script must not contain BEGIN/COMMIT/ROLLBACK: the runner owns the transaction.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import MigrationFileError
from .statements import Statement, split_statements, transaction_control

NO_TRANSACTION_MARKER = "-- migrate:no-transaction"

_NAME = r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_NAME}$")
_FILE_RE = re.compile(rf"^(?P<version>\d{{3,}})_(?P<name>{_NAME})(?P<down>\.down)?\.sql$")
_MARKER_RE = re.compile(r"^--\s*migrate:no-transaction\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MigrationFile:
    version: str  # "001" (3+ digits, from the file name)
    name: str  # "create_organizations"
    filename: str  # "001_create_organizations.sql"
    up_sql: str
    down_sql: str | None
    checksum: str  # checksum_of(up_sql)
    transactional: bool  # False iff the up file's leading comment lines contain `-- migrate:no-transaction`

    @property
    def down_filename(self) -> str:
        return f"{self.version}_{self.name}.down.sql"

    @property
    def down_transactional(self) -> bool:
        """Same rule as `transactional`, applied to the down script's own header."""
        return self.down_sql is None or is_transactional(self.down_sql)


def checksum_of(sql: str) -> str:
    """`"sha256:"` + the hex SHA-256 of the UTF-8 bytes of `sql`."""
    return "sha256:" + hashlib.sha256(sql.encode("utf-8")).hexdigest()


def is_transactional(sql: str) -> bool:
    """False iff a leading comment line (before the first non-comment, non-blank line) is
    `-- migrate:no-transaction`."""
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        if _MARKER_RE.match(stripped):
            return False
    return True


def validate_script(filename: str, sql: str, transactional: bool) -> list[Statement]:
    """The script's statements; MigrationFileError if it has none, or (transactional) controls the
    transaction itself."""
    statements = split_statements(sql)
    if not statements:
        if filename.endswith(".down.sql"):
            fix = "write the SQL that reverts the migration, or delete the file if it cannot be reverted"
        else:
            fix = "write the migration's SQL, or delete the file"
        raise MigrationFileError(f"{filename}: the file has no SQL statement (empty or only comments): {fix}")
    if transactional:
        for st in statements:
            command = transaction_control(st)
            if command is not None:
                raise MigrationFileError(
                    f"{filename}, line {st.line}: explicit {command}: the migration already runs in one "
                    "transaction that the runner begins and commits. Remove the statement, or, if the "
                    f"script must manage transactions itself, put `{NO_TRANSACTION_MARKER}` in its "
                    "header (its statements then run one by one, in autocommit)."
                )
    return statements


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MigrationFileError(f"{path.name}: cannot read the file: {e}") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MigrationFileError(f"{path.name}: not valid UTF-8 ({e}): save the file as UTF-8") from e
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_migrations(
    directory: str | os.PathLike[str], validated: Mapping[str, str] | None = None
) -> list[MigrationFile]:
    """The migrations of `directory`, sorted by version. Raises MigrationFileError (naming the file
    and the fix) for a badly named .sql file, a duplicate version, a .down.sql without its up file, an
    empty script, or BEGIN/COMMIT/ROLLBACK in a transactional script.

    `validated`: checksums by version of up scripts already validated and applied (a checkpoint's);
    a file with that checksum is not parsed again (reverting one still validates its down script)."""
    root = Path(directory)
    if not root.is_dir():
        raise MigrationFileError(f"{root}: not a directory of migrations (NNN_name.sql files)")
    ups: dict[int, tuple[str, str, Path]] = {}  # int(version) -> (version, name, path)
    downs: dict[int, tuple[str, str, Path]] = {}
    for path in sorted(root.iterdir()):
        if not path.name.lower().endswith(".sql") or path.name.startswith("."):
            continue
        if not path.is_file():
            raise MigrationFileError(f"{path.name}: not a regular file; migrations are files NNN_name.sql")
        m = _FILE_RE.match(path.name)
        if m is None:
            raise MigrationFileError(
                f"{path.name}: not a valid migration file name: expected NNN_snake_name.sql or "
                "NNN_snake_name.down.sql (NNN: 3 or more digits; name: lowercase letters, digits and "
                "single underscores, starting with a letter), e.g. 001_create_organizations.sql; "
                "rename the file"
            )
        version, name, is_down = m["version"], m["name"], m["down"] is not None
        target = downs if is_down else ups
        key = int(version)
        if key in target:
            other = target[key][2].name
            raise MigrationFileError(
                f"{path.name}: duplicate version {version}, also used by {other}: every migration needs "
                "its own number; renumber the newer one after the highest existing version"
            )
        target[key] = (version, name, path)

    for key, (version, name, path) in downs.items():
        up = ups.get(key)
        if up is None or up[0] != version or up[1] != name:
            expected = f"{version}_{name}.sql"
            hint = f" (version {version}'s up file is {up[2].name})" if up else ""
            raise MigrationFileError(
                f"{path.name}: a down script without its up file {expected}{hint}: rename it to match "
                "its up file (NNN_name.down.sql next to NNN_name.sql), or delete it"
            )

    migrations: list[MigrationFile] = []
    for key in sorted(ups):
        version, name, path = ups[key]
        up_sql = _read(path)
        transactional = is_transactional(up_sql)
        checksum = checksum_of(up_sql)
        trusted = validated is not None and validated.get(version) == checksum
        if not trusted:
            validate_script(path.name, up_sql, transactional)
        down_sql: str | None = None
        if key in downs:
            down_path = downs[key][2]
            down_sql = _read(down_path)
            if not trusted:
                validate_script(down_path.name, down_sql, is_transactional(down_sql))
        migrations.append(
            MigrationFile(
                version=version,
                name=name,
                filename=path.name,
                up_sql=up_sql,
                down_sql=down_sql,
                checksum=checksum,
                transactional=transactional,
            )
        )
    return migrations


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise MigrationFileError(
            f"{name!r}: not a valid migration name: use lowercase snake_case starting with a letter "
            "(letters, digits, single underscores), e.g. add_customer_segments"
        )
    return name


def next_migration_paths(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """(up, down) paths of the next migration called `name` in `directory`: the highest existing
    version + 1 (1 if there is none), zero-padded to 3 digits. Creates nothing."""
    validate_name(name)
    root = Path(directory)
    highest = 0
    if root.is_dir():
        for path in root.iterdir():
            m = re.match(r"^(\d+)_", path.name)
            if m and path.name.lower().endswith(".sql"):
                highest = max(highest, int(m[1]))
    version = f"{highest + 1:03d}"
    return root / f"{version}_{name}.sql", root / f"{version}_{name}.down.sql"
