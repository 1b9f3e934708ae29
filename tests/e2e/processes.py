"""The processes a test started through the Pulumi CLI, found by session, and reaped.

The CLI starts each plugin (language host, providers, the dynamic-provider host) in a process group
of its own (`setpgid`), so killing the CLI's group leaves them running; they stay in the CLI's
session, though: a session holds everything a command started, however its groups were made.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

# What the CLI runs: itself, its plugins, the dynamic-provider host's Python (`-m pulumi.dynamic`).
PULUMI_MARKERS = ("pulumi-resource-", "pulumi-language-", "pulumi-analyzer-", "pulumi.dynamic")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) of session `sid`, other than this one."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            fields = _stat(int(entry))
            if fields and fields[0] != "Z" and int(fields[3]) == sid:
                found.append(int(entry))
    return found


def is_pulumi(pid: int) -> bool:
    args = cmdline(pid)
    return bool(args) and (Path(args[0]).name == "pulumi" or any(m in a for a in args for m in PULUMI_MARKERS))


def describe(pids: list[int]) -> list[str]:
    return [f"{pid}: {' '.join(cmdline(pid))[:200]}" for pid in pids]


def reap(pids: list[int], timeout: float = 10) -> list[int]:
    """SIGKILLs `pids` and waits until they are gone; returns those still there after `timeout`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if (fields := _stat(p)) is not None and fields[0] != "Z"]
    return left


def pulumi_processes(sid: int) -> list[int]:
    return [pid for pid in session_members(sid) if is_pulumi(pid)]


def wait_for_pulumi_to_exit(sid: int, grace: float = 10) -> list[int]:
    """The Pulumi processes of session `sid` still running after `grace` seconds (a finished CLI
    stops its plugins itself, within moments)."""
    deadline = time.monotonic() + grace
    while (left := pulumi_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
