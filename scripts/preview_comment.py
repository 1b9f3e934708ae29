"""Turn `pulumi preview --json` into the markdown of a pull-request comment.

    pulumi preview --json --stack staging > preview.json
    python scripts/preview_comment.py preview.json --stack staging > comment.md

The comment starts with a one-line verdict, then the migrations that will run with the review the
program logged on each during the preview (what it does, squawk's destructive or blocking
findings), then every other resource change. It prints names of changed properties, never values
(`pulumi preview --json` masks secrets, and a comment is no place for the rest either).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIGRATION_TYPE = "pulumi-python:dynamic/db:Migration"
# Steps of one replacement: "replace" plus its create-replacement/delete-replaced halves.
_OP_ALIASES = {"create-replacement": "replace", "delete-replaced": "replace", "discard": "delete"}
_QUIET_OPS = {"same", "read", "refresh"}
_OP_ORDER = ["delete", "replace", "update", "create", "import"]
_MARK = {"destructive": "🛑", "blocking": "🔒"}
# Lets the workflow find and edit its own comment instead of adding one per push.
COMMENT_MARKER = "<!-- preview_comment.py -->"


@dataclass
class Change:
    urn: str
    op: str
    reasons: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[1]

    @property
    def type(self) -> str:
        return self.urn.split("::")[2].split("$")[-1]


@dataclass
class MigrationReview:
    name: str
    op: str
    does: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _changes(steps: Iterable[dict[str, Any]]) -> dict[str, Change]:
    changes: dict[str, Change] = {}
    for step in steps:
        op = _OP_ALIASES.get(step.get("op", ""), step.get("op", ""))
        urn = step.get("urn", "")
        if not urn or op in _QUIET_OPS or urn.split("::")[2].endswith("pulumi:pulumi:Stack"):
            continue
        reasons = _changed_inputs(step)
        known = changes.get(urn)
        if known is None or _OP_ORDER.index(op) < _OP_ORDER.index(known.op):
            changes[urn] = Change(urn, op, sorted(set(reasons) | set(known.reasons if known else [])))
        else:
            known.reasons = sorted(set(known.reasons) | set(reasons))
    return changes


def _changed_inputs(step: dict[str, Any]) -> list[str]:
    """Names of the inputs that differ (top-level keys; secrets compare as their mask)."""
    names = set(step.get("replaceReasons") or []) | set(step.get("diffReasons") or [])
    names |= {key.split(".")[0].split("[")[0] for key in step.get("detailedDiff") or {}}
    old = (step.get("oldState") or {}).get("inputs") or {}
    new = (step.get("newState") or {}).get("inputs") or {}
    if old and new:
        names |= {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
    return sorted(names - {"__provider"})


def _message(diag: dict[str, Any]) -> str:
    """The diagnostic on one line, without the "warning: " the CLI prefixes."""
    message = " ".join(str(diag.get("message", "")).split())
    severity = diag.get("severity") or ""
    return message.removeprefix(f"{severity}: ") if severity else message


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(preview: dict[str, Any], stack: str | None = None) -> str:
    changes = _changes(preview.get("steps") or [])
    diagnostics = preview.get("diagnostics") or []
    by_urn: dict[str, list[dict[str, Any]]] = {}
    for diag in diagnostics:
        by_urn.setdefault(diag.get("urn") or "", []).append(diag)

    migrations: list[MigrationReview] = []
    others: list[Change] = []
    for change in changes.values():
        if change.type != MIGRATION_TYPE:
            others.append(change)
            continue
        review = MigrationReview(change.name, change.op)
        for diag in by_urn.get(change.urn, []):
            message = _message(diag)
            if message.startswith("will run: "):
                review.does = message.removeprefix("will run: ")
            elif diag.get("severity") == "warning":
                review.warnings.append(message)
            elif diag.get("severity") != "error":
                review.notes.append(message)
        migrations.append(review)
    migrations.sort(key=lambda r: r.name)
    others.sort(key=lambda c: (_OP_ORDER.index(c.op), c.type, c.name))
    errors = [_message(d) for d in diagnostics if d.get("severity") == "error"]
    unchanged = int((preview.get("changeSummary") or {}).get("same", 0))

    heading = f"### `pulumi preview`{f' of stack `{stack}`' if stack else ''}"
    lines = [heading, "", f"**{_verdict(migrations, others, errors)}**", ""]
    if errors:
        lines += ["#### Errors", ""] + [f"- {e}" for e in errors] + [""]
    if migrations:
        lines += [f"#### Migrations ({len(migrations)})", ""]
        for review in migrations:
            lines += _migration_lines(review)
    if others:
        lines += [f"#### Other changes ({len(others)})", "", "| change | type | name | changed |", "|---|---|---|---|"]
        lines += [f"| {c.op} | `{c.type}` | `{c.name}` | {_cell(', '.join(c.reasons)) or '-'} |" for c in others]
        lines.append("")
    lines.append(f"<sub>{unchanged} resources unchanged. Generated by `scripts/preview_comment.py` from "
                 "`pulumi preview --json`.</sub>")
    lines.append(COMMENT_MARKER)
    return "\n".join(lines) + "\n"


def _migration_lines(review: MigrationReview) -> list[str]:
    if review.op == "delete":
        return [f"- **`{review.name}`**: its file left `sql/` while applied; `pulumi up` will **refuse** "
                "(its down script does not run): restore the file, or revert it on purpose with "
                "`pulumi destroy --target`", ""]
    verb = "will run" if review.op in ("create", "replace") else f"{review.op}: state only, runs nothing"
    lines = [f"- **`{review.name}`** {verb}" + (f": {review.does}" if review.does else "")]
    for warning in review.warnings:
        kind = warning.split(":", 1)[0]
        lines.append(f"  - {_MARK.get(kind, '⚠️')} {warning}")
    lines += [f"  - <sub>{note}</sub>" for note in review.notes]
    return [*lines, ""]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _verdict(migrations: list[MigrationReview], others: list[Change], errors: list[str]) -> str:
    if errors:
        return f"❌ The preview failed: {errors[0][:300]}"
    running = [m for m in migrations if m.op in ("create", "replace")]
    reverted = [m for m in migrations if m.op == "delete"]
    kinds = [w.split(":", 1)[0] for m in migrations for w in m.warnings]
    destructive, blocking = kinds.count("destructive"), kinds.count("blocking")
    lost = [c for c in others if c.op in ("delete", "replace")]
    if not running and not reverted and not others and not migrations:
        return "✅ No changes."
    parts = []
    if running:
        parts.append(f"{_count(len(running), 'migration')} will run")
    if reverted:
        parts.append(f"{_count(len(reverted), 'migration file')} removed while applied")
    if others:
        parts.append(_count(len(others), "other resource change"))
    summary = ", ".join(parts)
    risks = []
    if destructive:
        risks.append(_count(destructive, "destructive statement"))
    if blocking:
        risks.append(_count(blocking, "blocking statement"))
    if reverted:
        risks.append("an applied migration file was removed (`pulumi up` refuses it)")
    if lost:
        risks.append(f"{_count(len(lost), 'resource')} replaced or deleted")
    if risks:
        return f"⚠️ Review needed: {summary}; " + ", ".join(risks) + "."
    return f"✅ {summary}; nothing destructive or blocking found."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preview_json", help="output of `pulumi preview --json` ('-' for stdin)")
    parser.add_argument("--stack", help="stack name for the heading")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.preview_json == "-" else Path(args.preview_json).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{args.preview_json}: cannot read it ({exc}); pass the file `pulumi preview --json` wrote",
              file=sys.stderr)
        return 2
    try:
        preview = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"{args.preview_json}: not the JSON of `pulumi preview --json` ({exc}); "
              "run the preview with --json and pass its standard output", file=sys.stderr)
        return 2
    sys.stdout.write(render(preview, args.stack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
