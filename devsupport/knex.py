"""The real knex (npm packages `knex` and `pg`, run with Node) for tests that build a database as a
knex team does: installed once with npm into the project's cache, keyed by the pinned versions."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

KNEX_VERSION = "3.1.0"
PG_VERSION = "8.13.1"
INSTALL_TIMEOUT_SECONDS = 300


class KnexUnavailable(RuntimeError):
    """knex could not be installed or run; the message says what to do."""


def cache_dir() -> Path:
    root = os.environ.get("CUSTOMER_INSIGHTS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "customer-insights-pg")
    return Path(root) / "node" / f"knex-{KNEX_VERSION}-pg-{PG_VERSION}"


def knex_bin() -> Path:
    """The knex CLI, installed with npm into the cache on first use."""
    folder = cache_dir()
    binary = folder / "node_modules" / ".bin" / "knex"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise KnexUnavailable("node and npm are needed to build a database with knex: "
                              "`apt-get install nodejs npm` (the bootstrap's Debian packages)")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder),
                               f"knex@{KNEX_VERSION}", f"pg@{PG_VERSION}"],
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as e:
        raise KnexUnavailable(f"npm install of knex did not finish in {INSTALL_TIMEOUT_SECONDS} s: "
                              "is the npm registry reachable (npm config get registry)?") from e
    if done.returncode != 0 or not binary.exists():
        raise KnexUnavailable(f"npm install knex@{KNEX_VERSION} pg@{PG_VERSION} failed ({done.returncode}); "
                              f"check npm's registry setting and the network:\n{done.stderr[-2000:]}")
    return binary


def migrate_latest(project: Path, database_url: str) -> str:
    """`knex migrate:latest` in `project` (its knexfile.js reads DATABASE_URL); its output. The CLI runs
    only with knex installed beside the knexfile: `project` gets a node_modules link to the cached install."""
    binary = knex_bin()
    modules = project / "node_modules"
    if not modules.exists():
        modules.symlink_to(binary.parents[1], target_is_directory=True)
    done = subprocess.run([str(binary), "migrate:latest", "--knexfile", str(project / "knexfile.js")],
                          cwd=project, env={**os.environ, "DATABASE_URL": database_url},
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"knex migrate:latest failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout
