"""`pulumi up/preview/destroy/output` of a stack of this project through the Automation API.

The everyday path is the CLI itself (`source bootstrap/env.sh; pulumi up`). This runs the same
`__main__.py` as an Automation API inline program (Pulumi's Python SDK serves it to the engine),
for tools and tests that drive stacks from Python. State lives in a local file backend (default:
.pulumi-state/ in the repository).

    python scripts/stack.py up dev
    python scripts/stack.py preview dev
    python scripts/stack.py output dev --show-secrets
    python scripts/stack.py destroy dev
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

from pulumi import automation as auto

from devsupport.versions import toolchain_pins

REPO = Path(__file__).resolve().parent.parent
DEV_PASSPHRASE = "customer-insights-dev"


def program() -> None:
    runpy.run_path(str(REPO / "__main__.py"), run_name="__main__")


def workspace_env(backend_url: str) -> dict[str, str]:
    env = {
        "PULUMI_BACKEND_URL": backend_url,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
        # The dynamic-provider host runs this interpreter, which has the program's packages.
        "PULUMI_PYTHON_CMD": sys.executable,
        # ... and imports the pickled providers' classes from infra/.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env["PULUMI_CONFIG_PASSPHRASE"] = os.environ.get("PULUMI_CONFIG_PASSPHRASE", DEV_PASSPHRASE)
    return env


def required_plugins() -> dict[str, str]:
    """Provider plugins of the program, at their pinned versions."""
    pins = toolchain_pins()
    return {name: pins[f"PULUMI_{name.upper()}_VERSION"] for name in ("docker", "postgresql", "random")}


def missing_plugins() -> list[str]:
    pulumi_cli = shutil.which("pulumi")
    if pulumi_cli is None:
        return ["the pulumi CLI itself (run `bash bootstrap/bootstrap.sh`, then `source bootstrap/env.sh`)"]
    listing = subprocess.run([pulumi_cli, "plugin", "ls", "--json"], capture_output=True, text=True, check=False)
    installed = {(p["name"], p["version"]) for p in json.loads(listing.stdout or "[]") or [] if p["kind"] == "resource"}
    return [f"{name} {version}" for name, version in required_plugins().items() if (name, version) not in installed]


def select_stack(name: str, backend_url: str) -> auto.Stack:
    Path(backend_url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    opts = auto.LocalWorkspaceOptions(work_dir=str(REPO), env_vars=workspace_env(backend_url))
    return auto.create_or_select_stack(stack_name=name, project_name="customer-insights-db",
                                       program=program, opts=opts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "preview", "destroy", "refresh", "output"])
    parser.add_argument("stack", nargs="?", default="dev")
    parser.add_argument("--backend-url", default=os.environ.get("PULUMI_BACKEND_URL", f"file://{REPO}/.pulumi-state"))
    parser.add_argument("--show-secrets", action="store_true", help="output: print secret values")
    parser.add_argument("--expect-no-changes", action="store_true", help="preview: fail if anything would change")
    args = parser.parse_args(argv)

    if args.command != "output" and (missing := missing_plugins()):
        print(
            "Cannot run `pulumi " + args.command + "`: these provider plugins are not installed: "
            + ", ".join(missing) + ".\n"
            "Run `bash bootstrap/bootstrap.sh`: it builds and installs them from ../shared/third_party.\n"
            "With internet: `pulumi plugin install resource NAME VERSION` (or the official installer).",
            file=sys.stderr,
        )
        return 2
    try:
        stack = select_stack(args.stack, args.backend_url)
    except OSError as exc:
        print(f"Cannot use the state backend {args.backend_url}: {exc}. Pass a writable --backend-url "
              "(or set PULUMI_BACKEND_URL)", file=sys.stderr)
        return 1
    except auto.errors.CommandError as exc:
        print(f"Cannot select stack {args.stack!r}:", str(exc).split("stderr:", 1)[-1].strip(), file=sys.stderr)
        return 1
    try:
        if args.command == "up":
            stack.up(on_output=print, color="never")
        elif args.command == "preview":
            stack.preview(on_output=print, color="never", expect_no_changes=args.expect_no_changes, diff=True)
        elif args.command == "refresh":
            stack.refresh(on_output=print, color="never")
        elif args.command == "destroy":
            stack.destroy(on_output=print, color="never")
        else:
            outputs = stack.outputs()
            print(json.dumps({k: (v.value if args.show_secrets or not v.secret else "[secret]")
                              for k, v in outputs.items()}, indent=2))
    except auto.errors.CommandError as exc:
        print(f"\n`pulumi {args.command}` of stack {args.stack!r} failed; the engine's output is above.",
              file=sys.stderr)
        print(str(exc).split("stderr:", 1)[-1].strip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
