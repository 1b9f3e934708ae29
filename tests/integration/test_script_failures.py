"""The project's scripts on a bad input: a message naming what to fix, a non-zero exit, no traceback.

(`python -m infra.migrate`: tests/integration/test_migrate_cli.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Nothing listens on port 1 of loopback: the connection is refused at once.
NOWHERE = "host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2"


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("name", "args", "says"), [
    ("cleanup_history.py", ["--database-url", NOWHERE], "Check --database-url"),
    ("preview_comment.py", ["/nonexistent/preview.json"], "pass the file `pulumi preview --json` wrote"),
    ("preview_pictures.py", ["er", "--database-url", NOWHERE, "--out", "/tmp/never-written.dot"],
     "Check --database-url"),
    ("preview_pictures.py", ["graph", "/nonexistent/g.dot"], "pass the file `pulumi stack graph FILE` wrote"),
    ("stack.py", ["output", "any", "--backend-url", "file:///proc/no-state-here"], "Pass a writable --backend-url"),
])
def test_a_script_failing_on_its_input_prints_the_fix_without_a_traceback(name: str, args: list[str],
                                                                         says: str) -> None:
    done = script(name, *args)
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
