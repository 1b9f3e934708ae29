"""Pulumi.yaml's project config schema and infra/config.py name the same keys, with the same types and
defaults: the CLI types, defaults and describes exactly what the program reads."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import infra.config
from infra.config import DictSource, load

pytestmark = pytest.mark.unit

PROJECT_FILE = Path(__file__).resolve().parents[2] / "Pulumi.yaml"
NAMESPACE = "customer-insights-db"
# What each reader of infra/config.py accepts, as a Pulumi project config type.
READER_TYPES = {"text": "string", "identifier": "string", "integer": "integer", "boolean": "boolean"}
# Defaults the program derives from another key or the stack's name: Pulumi.yaml gives the neutral value
# the program reads as "not set" ("") or the safe one (protectData: true; Pulumi.dev.yaml sets false).
DERIVED_DEFAULTS = {"cleanupJobName": "", "protectData": True}


class _Recorder(DictSource):
    """A config source that notes every key the program asks for, and how (get or get_object)."""

    def __init__(self, values: dict[str, Any], asked: dict[str, dict[str, Any]]) -> None:
        super().__init__(values)
        self.asked = asked

    def get(self, key: str) -> str | None:
        self.asked.setdefault(key, {"type": "string"})
        return super().get(key)

    def get_object(self, key: str) -> Any:
        self.asked.setdefault(key, {"type": "object"})
        return super().get_object(key)


def keys_read(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Every key infra/config.py reads in either mode, with the type and default its reader gives it."""
    asked: dict[str, dict[str, Any]] = {}
    base = infra.config._Reader

    class Reader(base):  # type: ignore[valid-type, misc]
        def _note(self, kind: str, key: str, default: Any) -> None:
            asked[key] = {"type": READER_TYPES[kind], "default": default}

        def text(self, key: str, default: str, check: Any = None) -> str:
            self._note("text", key, default)
            return str(super().text(key, default, check))

        def identifier(self, key: str, default: str) -> str:
            self._note("identifier", key, default)
            return str(base.text(self, key, default, infra.config._identifier_problem))

        def integer(self, key: str, default: int, low: int, high: int, hint: str) -> int:
            self._note("integer", key, default)
            return int(super().integer(key, default, low, high, hint))

        def boolean(self, key: str, default: bool) -> bool:
            self._note("boolean", key, default)
            return bool(super().boolean(key, default))

    monkeypatch.setattr(infra.config, "_Reader", Reader)
    for values in ({"mode": "container"},
                   {"mode": "external", "externalHost": "db.example", "externalAdminPassword": "x"}):
        # A key added by a later change may be required: it was still asked for.
        with contextlib.suppress(infra.config.ConfigError):
            load(_Recorder(values, asked), NAMESPACE, stack="prod")
    return asked


def declared() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROJECT_FILE.read_text())["config"]
    return {key: spec for key, spec in config.items() if not key.startswith("pulumi:")}


def declaration(key: str, spec: dict[str, Any]) -> str:
    """The lines to paste under `config:` in Pulumi.yaml for `key`."""
    lines = [f"  {key}:", f"    type: {spec['type']}"]
    if spec["type"] == "array":
        lines += ["    items:", "      type: string"]
    lines.append("    description: <what it does, as in the README's config table>")
    if "default" in spec:
        lines.append(f"    default: {json.dumps(spec['default'])}")
    return "\n".join(lines)


def test_every_key_the_program_reads_is_declared_in_pulumi_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = {k: v for k, v in keys_read(monkeypatch).items() if k not in declared()}
    assert not missing, (
        f"infra/config.py reads {sorted(missing)}, which {PROJECT_FILE.name} does not declare. Add under "
        "`config:` in Pulumi.yaml (every key needs a default: the CLI makes a key without one required "
        "on every stack):\n" + "\n".join(declaration(k, v) for k, v in missing.items())
    )


def test_every_key_pulumi_yaml_declares_is_read_by_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    unread = sorted(set(declared()) - set(keys_read(monkeypatch)))
    assert not unread, (
        f"Pulumi.yaml declares {unread} under `config:`, but infra/config.py never reads them: remove them "
        "from Pulumi.yaml, or read them in infra/config.load (with their validation)"
    )


def test_types_and_defaults_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = []
    for key, read in keys_read(monkeypatch).items():
        spec = declared().get(key)
        if spec is None:
            continue  # the test above names it
        if "default" not in spec:
            problems.append(f"{key}: Pulumi.yaml gives no default; the CLI then requires the key on every stack")
        expected_type = read["type"]
        if expected_type == "object" and isinstance(spec.get("default"), list):
            expected_type = "array"
        if spec.get("type") != expected_type:
            problems.append(f"{key}: Pulumi.yaml says type {spec.get('type')!r}, infra/config.py reads "
                            f"it as {expected_type!r}")
        if "default" in read and "default" in spec:
            wanted = DERIVED_DEFAULTS.get(key, read["default"])
            if spec["default"] != wanted:
                problems.append(f"{key}: Pulumi.yaml default {spec['default']!r}, infra/config.py default "
                                f"{wanted!r}; set `default: {json.dumps(wanted)}` in Pulumi.yaml")
        if not spec.get("description"):
            problems.append(f"{key}: Pulumi.yaml gives no description")
    assert not problems, "\n".join(problems)


def test_the_defaults_of_pulumi_yaml_load_as_a_valid_config() -> None:
    """What `pulumi config` shows for a stack that sets nothing is a valid container-mode config."""
    values = {k: spec["default"] for k, spec in declared().items() if "default" in spec}
    cfg = load(DictSource(values), NAMESPACE, stack="prod")
    assert cfg.mode == "container" and cfg.cleanup_job.name == "customer_insights-delete-expired-refresh-tokens"
