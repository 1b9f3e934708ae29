"""The bootstrap's toolchain step, run for real against this machine's cache."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devsupport.versions import pulumi_bin_dir, toolchain_pins

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOOLCHAIN = REPO / "bootstrap" / "pulumi-toolchain.sh"


def run_toolchain(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(TOOLCHAIN)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_without_third_party_sources_it_stops_at_once_naming_what_is_missing(tmp_path: Path) -> None:
    partial = tmp_path / "third_party"
    (partial / "pulumi-random" / "provider").mkdir(parents=True)
    done = run_toolchain(CUSTOMER_INSIGHTS_THIRD_PARTY=str(partial), CUSTOMER_INSIGHTS_CACHE=str(tmp_path / "cache"))
    assert done.returncode != 0
    message = done.stderr
    assert f"expected in {partial}" in message
    for missing in ("pulumi-language-python/sdk/python/cmd/pulumi-language-python", "pulumi-docker/upstream",
                    "pulumi-postgresql/patches", "pulumi-yaml"):
        assert missing in message
    assert "pulumi-random/provider\n" not in message  # present, so not listed
    assert "get.pulumi.com" in message and "pulumi plugin install resource docker" in message
    # at once: before the CLI, nothing built, nothing downloaded
    assert "Pulumi CLI" not in done.stdout
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != "toolchain-status"] == []


def test_a_warm_run_only_checks_and_labels_each_binary_truthfully() -> None:
    done = run_toolchain()
    assert done.returncode == 0, done.stderr
    assert "compiling" not in done.stdout and "resolving" not in done.stdout
    for name in ("random", "postgresql", "docker"):
        assert f"Provider plugin {name}" in done.stdout
    assert done.stdout.count("cached and installed (sources ") == 3
    pins = toolchain_pins()
    home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
    for name in ("random", "postgresql", "docker"):
        version = pins[f"PULUMI_{name.upper()}_VERSION"]
        assert (home / "plugins" / f"resource-{name}-v{version}" / f"pulumi-resource-{name}").is_file()
    status = (pulumi_bin_dir().parents[1] / "toolchain-status").read_text()  # <cache>/pulumi-vX/bin
    language_host = f"v{pins['PULUMI_LANGUAGE_PYTHON_SOURCE_VERSION']}+sdk{pins['PULUMI_CLI_VERSION']}"
    assert f"language-host\tok\t{language_host}" in status
