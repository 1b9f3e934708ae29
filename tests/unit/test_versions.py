"""The toolchain pins agree: bootstrap/versions.env, requirements.txt and what the venv has installed."""

from __future__ import annotations

import os
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from devsupport.versions import VERSIONS_ENV, pulumi_bin_dir, toolchain_pins

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements.txt"

# requirements.txt package -> versions.env variable
SDK_PINS = {
    "pulumi": "PULUMI_PYTHON_SDK_VERSION",
    "pulumi-docker": "PULUMI_DOCKER_VERSION",
    "pulumi-postgresql": "PULUMI_POSTGRESQL_VERSION",
    "pulumi-random": "PULUMI_RANDOM_VERSION",
}


def version_tuple(text: str) -> tuple[int, ...]:
    """'3.274.1' -> (3, 274, 1); a leading 'v' is allowed, anything else is an error."""
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)", text.strip())
    assert match, f"not a plain release version: {text!r}"
    return tuple(int(part) for part in match[1].split("."))


def read_requirements() -> dict[str, str]:
    """Package name (normalised, extras dropped) -> pinned version."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(REQUIREMENTS.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([0-9][A-Za-z0-9.+-]*)", line)
        assert match, f"{REQUIREMENTS.name}:{number}: every requirement is pinned with ==, got {line!r}"
        pins[normalise(match[1])] = match[2]
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_versions_env_has_every_pin() -> None:
    env = toolchain_pins()
    for key in ("PULUMI_CLI_VERSION", *SDK_PINS.values()):
        assert key in env, f"{VERSIONS_ENV.name} lacks {key}"
        version_tuple(env[key])
    for key in ("PULUMI_DOCKER_COMMIT", "PULUMI_POSTGRESQL_COMMIT", "PULUMI_RANDOM_COMMIT"):
        assert re.fullmatch(r"[0-9a-f]{40}", env.get(key, "")), f"{key} must be a full commit hash"


@pytest.mark.parametrize(("package", "key"), sorted(SDK_PINS.items()))
def test_requirements_pin_the_same_sdk_versions_as_versions_env(package: str, key: str) -> None:
    env, pins = toolchain_pins(), read_requirements()
    assert package in pins, f"{REQUIREMENTS.name} does not pin {package}"
    assert pins[package] == env[key], (
        f"{REQUIREMENTS.name} pins {package}=={pins[package]} but {VERSIONS_ENV.name} has {key}={env[key]}: "
        "change both together (the bootstrap builds the CLI and plugins for versions.env)"
    )


def test_cli_is_at_least_the_python_sdk_version() -> None:
    env = toolchain_pins()
    cli, sdk = version_tuple(env["PULUMI_CLI_VERSION"]), version_tuple(env["PULUMI_PYTHON_SDK_VERSION"])
    assert cli >= sdk, f"Pulumi CLI {env['PULUMI_CLI_VERSION']} is older than the Python SDK {sdk}"


def test_version_tuples_compare_numerically() -> None:
    # '3.274.1' > '3.28.0' as versions, not as strings: the check above must not compare text.
    assert version_tuple("3.274.1") > version_tuple("3.28.0")
    assert version_tuple("v3.272.0") == (3, 272, 0)
    with pytest.raises(AssertionError):
        version_tuple("3.272.0-rc1")


def test_installed_packages_match_the_requirements_pins() -> None:
    mismatches = []
    for package, pinned in sorted(read_requirements().items()):
        try:
            installed = version(package)
        except PackageNotFoundError:
            mismatches.append(f"{package}: not installed (pinned {pinned})")
            continue
        if installed != pinned:
            mismatches.append(f"{package}: installed {installed}, pinned {pinned}")
    assert not mismatches, "the venv does not match requirements.txt (pip install -r requirements-dev.txt):\n" + (
        "\n".join(mismatches)
    )


@pytest.mark.parametrize(("package", "key"), sorted(SDK_PINS.items()))
def test_installed_sdks_match_versions_env(package: str, key: str) -> None:
    assert version(package) == toolchain_pins()[key]


def bootstrap_cli() -> Path:
    return pulumi_bin_dir() / "pulumi"


def test_bootstrapped_cli_reports_the_pinned_version() -> None:
    cli = bootstrap_cli()
    if not cli.is_file():
        pytest.skip(f"no bootstrapped Pulumi CLI at {cli} (bootstrap/bootstrap.sh installs it)")
    env = {**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"}
    result = subprocess.run(  # a fixed local binary, no shell
        [str(cli), "version"], capture_output=True, text=True, timeout=30, env=env, check=True
    )
    assert version_tuple(result.stdout) == version_tuple(toolchain_pins()["PULUMI_CLI_VERSION"])


@pytest.mark.parametrize(("text", "problem"), [
    ('PULUMI_CLI_VERSION="3.274.1"\n', r"versions.env:1: expected KEY=value"),
    ("A=1\n# comment\nA=2\n", r"versions.env:3: A is set twice"),
])
def test_the_pins_reader_refuses_what_bash_would_read_differently(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "versions.env"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        toolchain_pins(path)


WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
_WORKFLOW_CLI_PIN = re.compile(r"^\s*pulumi-version:\s*[\"']?([^\"'\s]+)", re.MULTILINE)


def test_there_are_workflows_to_check() -> None:
    assert WORKFLOWS, "no .github/workflows/*.yml found: the CLI pin check below would check nothing"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_pin_the_cli_of_versions_env(workflow: Path) -> None:
    pins = _WORKFLOW_CLI_PIN.findall(workflow.read_text(encoding="utf-8"))
    expected = toolchain_pins()["PULUMI_CLI_VERSION"]
    assert pins, f"{workflow.name} sets no `pulumi-version:`: pin the CLI there to {expected} ({VERSIONS_ENV.name})"
    for pin in pins:
        assert pin == expected, (
            f"{workflow.name} pins the Pulumi CLI at {pin}, {VERSIONS_ENV.name} at {expected}: "
            f"set `pulumi-version: \"{expected}\"` in the workflow (or change both together)"
        )
