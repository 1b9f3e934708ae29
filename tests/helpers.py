"""Helpers every kind of test uses: migration files written to a folder, the docker command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from infra.docker_cli import run_docker


def write_files(directory: Path, files: dict[str, str]) -> Path:
    """Writes `files` (name -> text) into `directory`, created if needed; returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`docker ARGS...` on the default engine; with `check`, a failure fails the test with the command's output."""
    proc = run_docker(None, *args, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def docker_output(*args: str, check: bool = True, timeout: float = 120) -> str:
    """The stripped standard output of `docker ARGS...` (see `docker`)."""
    return docker(*args, check=check, timeout=timeout).stdout.strip()
