"""The toolchain pins: `bootstrap/versions.env` is the one place they are set (bash sources it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERSIONS_ENV = REPO / "bootstrap" / "versions.env"
_ASSIGNMENT = re.compile(r"([A-Z][A-Z0-9_]*)=([^\s#'\"$`]+)")


def toolchain_pins(path: Path = VERSIONS_ENV) -> dict[str, str]:
    """The variables of versions.env. ValueError naming the line for anything but a plain `KEY=value`
    (what both bash and this reader understand the same way) or a key set twice."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ASSIGNMENT.fullmatch(line)
        if match is None:
            raise ValueError(f"{path.name}:{number}: expected KEY=value (sourced by bash), got {line!r}")
        if match[1] in values:
            raise ValueError(f"{path.name}:{number}: {match[1]} is set twice")
        values[match[1]] = match[2]
    return values


def pulumi_bin_dir() -> Path:
    """Where bootstrap/lib.sh installs the pinned Pulumi CLI and the dynamic-provider host."""
    cache = os.environ.get("CUSTOMER_INSIGHTS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "customer-insights-pg"
    )
    return Path(cache) / f"pulumi-v{toolchain_pins()['PULUMI_CLI_VERSION']}" / "bin"
