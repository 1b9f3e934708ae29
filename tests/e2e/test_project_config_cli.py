"""The real CLI reads Pulumi.yaml's config schema: `pulumi config` lists every key with its default, and a
value of the wrong type is refused before the program runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from devsupport.versions import pulumi_bin_dir
from scripts.stack import workspace_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def pulumi(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = pulumi_bin_dir() / "pulumi"
    if not binary.exists():
        pytest.fail(f"No Pulumi CLI at {binary}: run `bash bootstrap/bootstrap.sh` first", pytrace=False)
    env = {**os.environ, **workspace_env(f"file://{project / 'state'}"),
           "PULUMI_CONFIG_PASSPHRASE": "customer-insights-dev"}
    return subprocess.run([str(binary), *args, "--non-interactive"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_pulumi_config_shows_every_key_with_its_default_and_refuses_a_wrong_type(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "state").mkdir()
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml"):
        shutil.copy(REPO / name, project / name)
    assert pulumi(project, "stack", "init", "dev").returncode == 0
    shown = pulumi(project, "config", "--json")
    assert shown.returncode == 0, shown.stderr
    values = {k.split(":", 1)[1]: v["value"] for k, v in json.loads(shown.stdout).items()
              if k.startswith("customer-insights-db:")}
    declared = {k: spec for k, spec in yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"].items()
                if not k.startswith("pulumi:")}
    assert set(values) == set(declared)
    assert values["hostPort"] == "55432" and values["mode"] == "container" and values["protectData"] == "false"
    assert values["cleanupBatchSize"] == "5000" and values["adoptFrom"] == ""

    assert pulumi(project, "config", "set", "hostPort", "fifty").returncode == 0
    refused = pulumi(project, "preview")
    assert refused.returncode != 0
    assert "configuration key 'hostPort' must be of type 'integer'" in refused.stdout + refused.stderr
