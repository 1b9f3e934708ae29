"""The `docker` command line, as the program's checks run it (preflight and the data-volume record).

Plain subprocess calls rather than the docker provider: they run before any resource is declared,
and inside the dynamic-provider host, where the provider plugin is not available.
"""

from __future__ import annotations

import subprocess

DOCKER_TIMEOUT = 30  # seconds for each command: an engine that does not answer is reported, not waited on


def run_docker(docker_host: str | None, *args: str,
               timeout: float = DOCKER_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`docker [--host H] ARGS...`, output captured, never raising on a non-zero exit.

    Raises FileNotFoundError without the docker CLI, subprocess.TimeoutExpired past `timeout` seconds:
    the caller says what that means where it is.
    """
    command = ["docker", *(["--host", docker_host] if docker_host else []), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
