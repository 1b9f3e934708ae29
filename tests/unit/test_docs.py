"""The documents and the code name the same things: every config key, stack output and component the
README documents exists in the code and the other way round, every class the documents name exists,
and every relative link between the documents resolves (file and heading)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import unicodedata
from pathlib import Path

import pulumi
import pytest

import infra.config
from tests.unit.test_project_config import keys_read as keys_asked_by_load

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
CONFIG_SOURCE = REPO / "infra" / "config.py"
PROGRAM = REPO / "__main__.py"
# Where the documents' class names may come from, besides the Python of this repository.
LIBRARIES = ("builtins", "pulumi", "pulumi_docker", "pulumi_postgresql", "pulumi_random", "psycopg", "psycopg.errors")
CODE_FOLDERS = ("infra", "devsupport", "scripts", "bench")
# Capitalised words in backticks that are no class name, and what they are.
NOT_CODE = {
    "TimeZone": "a PostgreSQL setting",
    "RegisterResource": "the engine's gRPC call",
}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose(text: str) -> str:
    """The text without fenced code blocks (their lines kept empty, so line numbers stay right)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)


def section_tables(path: Path, heading: str) -> list[list[str]]:
    """The cells of every table row (header and separator left out) in the `## heading` section."""
    text = prose(path.read_text())
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert found, f"{rel(path)} has no section '## {heading}'"
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in found.group(1).splitlines() if line.startswith("|")]
    return [row for row in rows if not set("".join(row)) <= set("-: ") and row[0] not in ("key", "output")]


def first_cell_names(path: Path, heading: str, what: str) -> list[str]:
    names = []
    for row in section_tables(path, heading):
        found = re.fullmatch(r"`([A-Za-z_]\w*)`(?: \(secret\))?", row[0])
        assert found, (f"{rel(path)}, section '{heading}': the row starting {row[0]!r} must name one {what} in "
                       f"backticks (optionally followed by ' (secret)'); give each {what} a row of its own")
        names.append(found.group(1))
    return names


# ------------------------------------------------------------------------------------------ config keys


def keys_in_config_source() -> set[str]:
    """Keys infra/config.py passes to a reader (`r.text("key", ...)`, `source.get("key")`, ...) as a literal or
    a module constant: also those read only on a path the introspection below does not take."""
    tree = ast.parse(CONFIG_SOURCE.read_text())
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for target in node.targets if isinstance(target, ast.Name)}
    readers = {name for name, method in vars(infra.config._Reader).items() if inspect.isfunction(method)
               and list(inspect.signature(method).parameters)[1:2] == ["key"] and name != "problem"}
    source_methods = {"get", "get_object"}  # ConfigSource, i.e. pulumi.Config

    def literal(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    def is_source(node: ast.expr) -> bool:
        return (isinstance(node, ast.Name) and node.id == "source") or (
            isinstance(node, ast.Attribute) and node.attr == "source")

    keys = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
            continue
        method = node.func.attr
        if method in readers or (method in source_methods and is_source(node.func.value)):
            key = literal(node.args[0])
            if key is not None:
                keys.add(key)
    return keys


def keys_read(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """What infra/config.py's source names, and what `load` asks for in either mode (test_project_config)."""
    return keys_in_config_source() | set(keys_asked_by_load(monkeypatch))


def test_the_key_readers_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two ways of finding the keys each see the keys everybody knows are there."""
    for found in (keys_in_config_source(), set(keys_asked_by_load(monkeypatch))):
        assert {"mode", "databaseName", "externalHost", "externalAdminPassword", "acceptChecksums",
                "passwordRotation", "protectData"} <= found


def test_every_documented_config_key_is_read_by_infra_config(monkeypatch: pytest.MonkeyPatch) -> None:
    unread = sorted(set(first_cell_names(README, "Configuration", "config key")) - keys_read(monkeypatch))
    assert not unread, (
        f"README.md's Configuration table documents {unread}, which infra/config.py does not read: remove "
        "the row(s) from README.md, or rename them to the key infra/config.py reads now"
    )


def test_every_config_key_infra_config_reads_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    documented = first_cell_names(README, "Configuration", "config key")
    twice = sorted({key for key in documented if documented.count(key) > 1})
    assert not twice, f"README.md's Configuration table has more than one row for {twice}: keep one"
    missing = sorted(keys_read(monkeypatch) - set(documented))
    assert not missing, (
        f"infra/config.py reads {missing}, which README.md's Configuration table does not document: add a row "
        "`| `key` | default | meaning |` for each to the table in README.md"
    )


# ----------------------------------------------------------------------------------------------- outputs


def exported_outputs() -> set[str]:
    """The names of every `pulumi.export("name", ...)` in __main__.py."""
    names = set()
    for node in ast.walk(ast.parse(PROGRAM.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "export"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "pulumi"):
            assert node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str), (
                f"__main__.py, line {node.lineno}: export a stack output under a literal name, so that "
                "tests/unit/test_docs.py can check README.md's Outputs table against it")
            names.add(node.args[0].value)
    return names


def test_every_documented_output_is_exported() -> None:
    gone = sorted(set(first_cell_names(README, "Outputs", "stack output")) - exported_outputs())
    assert not gone, (
        f"README.md's Outputs table documents {gone}, which __main__.py no longer exports (pulumi.export): "
        "remove the row(s) from README.md, or rename them to the current output"
    )


def test_every_exported_output_is_documented() -> None:
    missing = sorted(exported_outputs() - set(first_cell_names(README, "Outputs", "stack output")))
    assert not missing, (
        f"__main__.py exports {missing}, which README.md's Outputs table does not document: add a row "
        "`| `name` | secret? | what |` for each to the table in README.md"
    )


# -------------------------------------------------------------------------------------------- components


def documented_components() -> dict[str, str]:
    """{class name: module} from the README's table of components (column `component`)."""
    text = prose(README.read_text())
    table = re.search(r"^\| concern \| component \|.*?\n((?:\|.*\n)+)", text, flags=re.M)
    assert table, "README.md has no table of components (a header starting `| concern | component |`)"
    components = {}
    for line in table.group(1).splitlines()[1:]:
        cell = [c.strip() for c in line.strip().strip("|").split("|")][1]
        for name, where in re.findall(r"`([A-Z]\w*)`(?: \(`(infra/[\w/]+)\.py`\))?", cell):
            components[name] = where.replace("/", ".") if where else ""
    return components


def component_classes() -> dict[str, type]:
    """Every ComponentResource subclass defined in infra/components/ or infra/*.py, by name."""
    modules = [f"infra.components.{p.stem}" for p in sorted((REPO / "infra" / "components").glob("*.py"))]
    modules += [f"infra.{p.stem}" for p in sorted((REPO / "infra").glob("*.py")) if p.stem != "__init__"]
    classes = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and value.__module__ == module_name
                    and issubclass(value, pulumi.ComponentResource)):
                classes[name] = value
    return classes


def test_every_documented_component_exists() -> None:
    classes = component_classes()
    for name, module in documented_components().items():
        assert name in classes, (
            f"README.md's table of components names `{name}`, which is no ComponentResource of infra/components/ "
            "(or of the infra/ module its row names): rename it in README.md to the current class, or remove it")
        where = module or "infra.components."
        assert classes[name].__module__.startswith(where), (
            f"README.md's table of components places `{name}` in {where}, but it is in "
            f"{classes[name].__module__}: correct the row in README.md")


def test_every_component_is_documented() -> None:
    missing = sorted(set(component_classes()) - set(documented_components()))
    assert not missing, (
        f"{missing} are ComponentResources of infra/ that README.md's table of components does not name: "
        "add each to the table in README.md (a module outside infra/components/ in parentheses)")


def code_names() -> set[str]:
    names = set()
    for folder in CODE_FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            names |= {node.name for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.ClassDef | ast.FunctionDef)}
    return names


def library_has(name: str) -> bool:
    return any(hasattr(importlib.import_module(library), name) for library in LIBRARIES)


def test_every_class_the_documents_name_exists() -> None:
    known = code_names()
    problems = []
    for path in DOCUMENTS:
        for number, line in enumerate(prose(path.read_text()).splitlines(), 1):
            for name in re.findall(r"`([A-Z][a-z][A-Za-z0-9]*)`", line):
                if name not in known and name not in NOT_CODE and not library_has(name):
                    problems.append(f"{rel(path)}:{number}: `{name}`")
    assert not problems, (
        "These documents name classes that no longer exist (no class of " + ", ".join(CODE_FOLDERS)
        + " nor of " + ", ".join(LIBRARIES) + "): name the current class in that file, or, if the word is no "
        "code name, add it to NOT_CODE in tests/unit/test_docs.py:\n" + "\n".join(problems)
    )


# ------------------------------------------------------------------------------------------------- links


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces to hyphens."""
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", prose(path.read_text()), flags=re.M):
        slug = "".join(c for c in heading.lower() if c in " -_" or unicodedata.category(c)[0] in "LN")
        slug = slug.replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every markdown link and image outside code."""
    found = []
    for number, line in enumerate(prose(path.read_text()).splitlines(), 1):
        line = re.sub(r"`[^`]*`", "", line)
        found += [(number, target) for target in re.findall(r"\]\(([^)\s]+)\)", line)]
    return found


def test_the_anchor_rule_is_githubs() -> None:
    assert "failure-drills-what-you-see-and-what-to-do" in anchors(REPO / "docs" / "operations.md")
    assert "pq-tuple-concurrently-updated-xx000-from-a-grant-or-defaultprivileges" in anchors(
        REPO / "docs" / "operations.md")


def test_every_relative_link_of_the_documents_resolves() -> None:
    problems = []
    for path in DOCUMENTS:
        for number, target in links(path):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{rel(path)}:{number}: {target}: no file {file_part}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{rel(path)}:{number}: {target}: {rel(linked)} has no heading with anchor #{anchor}")
    assert not problems, "Broken links; correct them in the file named:\n" + "\n".join(problems)
