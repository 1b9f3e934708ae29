"""One `pulumi up` of an existing e2e stack, in a process of its own.

The failure drills SIGKILL the Pulumi CLI under it, or run two at once: an inline program's SDK state
is process-wide, so each concurrent `up` needs its own process. Reads a JSON spec on stdin (passwords
stay out of the process list), streams the engine's output, and ends with one line
`DRILL-RESULT {"ok": ..., ...}`.

    {"backend": "/tmp/.../state", "stack": "t0123", "project": "...", "program": "migrations" | "main",
     "work_dir": "/tmp/...",                                # the stack's workspace: its config files
     "directory": "/tmp/.../sql", "connection": {...}}      # directory/connection: migrations only
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pulumi import automation as auto

from scripts.stack import workspace_env
from tests.e2e.conftest import PASSPHRASE, pulumi_bin_dir

RESULT = "DRILL-RESULT "


def main() -> int:
    spec = json.load(sys.stdin)
    if spec["program"] == "migrations":
        from tests.e2e.test_migrations_engine import migrations_program

        program = migrations_program(Path(spec["directory"]), spec["connection"])
    else:
        from tests.e2e.test_full_stack import program
    backend = f"file://{spec['backend']}"
    env = workspace_env(backend)
    env["PULUMI_CONFIG_PASSPHRASE"] = PASSPHRASE
    opts = auto.LocalWorkspaceOptions(
        work_dir=spec.get("work_dir"),
        env_vars=env,
        pulumi_command=auto.PulumiCommand(root=str(pulumi_bin_dir().parent), skip_version_check=True),
        project_settings=auto.ProjectSettings(name=spec["project"], runtime="python",
                                              backend=auto.ProjectBackend(url=backend)),
    )
    stack = auto.select_stack(spec["stack"], project_name=spec["project"], program=program, opts=opts)
    try:
        result = stack.up(color="never", on_output=lambda line: print(line, end="", flush=True))
    except auto.errors.CommandError as exc:
        print("\n" + RESULT + json.dumps({"ok": False, "error": str(exc)}), flush=True)
        return 1
    print("\n" + RESULT + json.dumps({"ok": True, "changes": result.summary.resource_changes}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
