"""Turn `pulumi preview --json` into the markdown of a pull-request comment.

    pulumi preview --json --stack staging > preview.json
    python scripts/preview_comment.py preview.json --stack staging > comment.md

The comment starts with a one-line verdict, then the migrations that will run with the review the
program logged on each during the preview (what it does, squawk's destructive or blocking
findings, and the rehearsal's table: per statement the lock, the objects, the rewrite, the estimated
time at the target's size and the data check), then every other resource change. It prints names
of changed properties, never values (`pulumi preview --json` masks secrets, and a comment is no
place for the rest either).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.dynamic.base import type_token
from infra.dynamic.migration import Migration
from infra.migrate.rehearsal import duration_text
from infra.rehearsal import REHEARSAL_JSON

MIGRATION_TYPE = type_token(Migration)
# Steps of one replacement: "replace" plus its create-replacement/delete-replaced halves.
_OP_ALIASES = {"create-replacement": "replace", "delete-replaced": "replace", "discard": "delete"}
_QUIET_OPS = {"same", "read", "refresh"}
_OP_ORDER = ["delete", "replace", "update", "create", "import"]
_MARK = {"destructive": "🛑", "blocking": "🔒"}
_LINE = re.compile(r"\(line (\d+)\)")
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
    rehearsal: dict[str, Any] | None = None  # the rehearsal-json line's object

    @property
    def statements(self) -> list[dict[str, Any]]:
        return list(((self.rehearsal or {}).get("migration") or {}).get("statements") or [])

    def blocking_lines(self) -> set[int]:
        """Statements that block an existing table: the rehearsal's, and squawk's where not rehearsed."""
        lines = {int(st["line"]) for st in self.statements if st.get("blocking")}
        if self.rehearsal is None:
            lines |= {int(m[1]) for w in self.warnings if w.startswith("blocking:") and (m := _LINE.search(w))}
        return lines

    def failing(self) -> int:
        migration = (self.rehearsal or {}).get("migration") or {}
        failing = sum(1 for st in self.statements if st.get("failing"))
        return failing or (1 if migration.get("error") else 0)


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
            if message.startswith(REHEARSAL_JSON):
                review.rehearsal = json.loads(message.removeprefix(REHEARSAL_JSON))
            elif message.startswith("will run: "):
                review.does = message.removeprefix("will run: ")
            elif message.startswith(("rehearsal: ", "rehearsal estimates: ", "rehearsal ran on ")) or (
                    diag.get("severity") == "error" and message.startswith(review.name)):
                continue  # the rehearsal's own lines: the table shows them
            elif diag.get("severity") == "warning":
                review.warnings.append(message)
            elif diag.get("severity") != "error":
                review.notes.append(message)
        migrations.append(review)
    migrations.sort(key=lambda r: r.name)
    others.sort(key=lambda c: (_OP_ORDER.index(c.op), c.type, c.name))
    tabled = {c.urn for c in changes.values() if c.type == MIGRATION_TYPE}
    errors = [_message(d) for d in diagnostics if d.get("severity") == "error"
              and not (d.get("urn") in tabled and _message(d).startswith(d["urn"].rsplit("::", 1)[1]))]
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
    if review.rehearsal is not None:
        lines += ["", *_rehearsal_table(review)]
    return [*lines, ""]


def _rehearsal_table(review: MigrationReview) -> list[str]:
    migration = review.rehearsal.get("migration") or {} if review.rehearsal else {}
    status = {"passes": "✅ passes", "fails": "❌ fails"}.get(migration.get("status", ""), "⏭️ not rehearsed")
    how = "one transaction" if migration.get("transactional") else "no transaction: statement by statement"
    head = f"  Rehearsal of `{migration.get('filename', review.name)}` ({how}): **{status}**"
    if not migration.get("rehearsed"):
        return [f"{head}: {migration.get('reason') or ''}".rstrip(": ")]
    rows = ["  | line | statement | lock | objects | rewrite | est. time at target size | data check |",
            "  |---:|---|---|---|---|---|---|"]
    for st in review.statements:
        rows.append("  | " + " | ".join(_cell(c) for c in (
            str(st.get("line", "")), f"`{st.get('summary', '')}`", _lock(st), _objects(st), _rewrite(st),
            _estimate(st), _check(st))) + " |")
    if migration.get("error") and not any(st.get("error") for st in review.statements):
        rows.append(f"  | | | | | | | ❌ {_cell(_failure_text(migration['error']))} |")
    notes = []
    if scratch := (review.rehearsal or {}).get("scratch"):
        notes.append(f"ran on an empty database on {scratch} (no target database yet)"
                     if (review.rehearsal or {}).get("from_files_alone") else
                     f"ran on a copy of the target's schema on {scratch}; the target was only read")
    if calibration := (review.rehearsal or {}).get("calibration"):
        notes.append(f"estimates: {calibration.get('text', '')}")
    if not (review.rehearsal or {}).get("target_read"):
        notes.append(f"target not read: {(review.rehearsal or {}).get('target_note') or 'unknown'}")
    timeouts = {(st.get("lock_timeout"), st.get("statement_timeout")) for st in review.statements}
    if len(timeouts) == 1 and (limits := timeouts.pop()) != (None, None):
        notes.append(f"ran under lock_timeout {limits[0]}, statement_timeout {limits[1]}")
    return [head, "", *rows, *([f"  <sub>{'; '.join(notes)}</sub>"] if notes else [])]


_BLOCKING_MODES = ("SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")
_STRENGTH = ["ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", *_BLOCKING_MODES]


def _lock(st: dict[str, Any]) -> str:
    if st.get("error"):
        return "-"
    modes = [lk["mode"] for lk in st.get("locks") or [] if lk.get("on_target")]
    if not modes:
        return "none on an existing object"
    strongest = max(modes, key=lambda m: _STRENGTH.index(m) if m in _STRENGTH else -1)
    return f"🔒 {strongest}" if st.get("blocking") else strongest


def _objects(st: dict[str, Any]) -> str:
    sizes = {s["relation"]: s for s in st.get("sizes") or []}
    names: list[str] = []
    indexes = 0
    for lk in st.get("locks") or []:
        if not lk.get("on_target"):
            continue
        if lk.get("kind") in ("index", "partitioned index"):
            indexes += 1
        elif lk["relation"] not in names:
            names.append(lk["relation"])
    texts = []
    for name in names:
        size = sizes.get(name) or {}
        rows = size.get("rows")
        texts.append(f"{name} ({'~' if size.get('rows_source') == 'estimate' else ''}{rows:,} rows)"
                     if isinstance(rows, int) else name)
    if indexes:
        texts.append(_count(indexes, "index").replace("indexs", "indexes"))
    return ", ".join(texts) or "-"


def _rewrite(st: dict[str, Any]) -> str:
    rewrites = [r for r in st.get("rewrites") or [] if r.get("on_target")]
    if not rewrites:
        return "no"
    tables = [("TRUNCATE " if r.get("truncate") else "") + r["relation"] for r in rewrites
              if r.get("kind") not in ("index", "partitioned index")]
    indexes = len(rewrites) - len(tables)
    rebuilt = _count(indexes, "index").replace("indexs", "indexes")
    if not tables:
        return f"**yes**: {rebuilt} rebuilt"
    return "**yes**: " + ", ".join(tables) + (f" (+{rebuilt})" if indexes else "")


def _estimate(st: dict[str, Any]) -> str:
    ms = st.get("estimate_ms")
    if st.get("error") or ms is None:
        return "unknown"
    return duration_text(float(ms))


def _check(st: dict[str, Any]) -> str:
    if st.get("error"):
        return f"❌ {_failure_text(st['error'])}"
    texts = []
    for check in st.get("checks") or []:
        subject = f"{check.get('check')} {check.get('relation')}.{check.get('subject')}"
        if check.get("status") == "failed":
            texts.append(f"❌ FAILS: {check.get('count'):,} {_CHECK_NOUNS.get(check.get('check'), 'rows')} "
                         f"({subject})")
        elif check.get("status") == "passed":
            texts.append(f"✅ {subject}")
        else:
            texts.append(f"❔ unknown ({subject}): {check.get('reason') or ''}")
    return "; ".join(texts) or "-"


_CHECK_NOUNS = {"unique": "duplicate groups", "rows": "rows", "not_null": "NULL rows", "check": "violating rows",
                "foreign_key": "orphan rows", "exclusion": "conflicting rows"}


def _failure_text(error: dict[str, Any]) -> str:
    where = f"line {error['line']}: " if error.get("line") else ""
    state = f" (SQLSTATE {error['sqlstate']})" if error.get("sqlstate") else ""
    return f"{where}{error.get('message', '')}{state}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _verdict(migrations: list[MigrationReview], others: list[Change], errors: list[str]) -> str:
    failing = sum(m.failing() for m in migrations)
    blocking = sum(len(m.blocking_lines()) for m in migrations)
    if failing:
        found = _count(failing, "failing statement") + (f", {_count(blocking, 'blocking statement')}"
                                                        if blocking else "")
        return f"❌ The rehearsal failed: {found}; nothing was applied."
    if errors:
        return f"❌ The preview failed: {errors[0][:300]}"
    running = [m for m in migrations if m.op in ("create", "replace")]
    reverted = [m for m in migrations if m.op == "delete"]
    destructive = sum(1 for m in migrations for w in m.warnings if w.startswith("destructive:"))
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
    files = sum(1 for m in migrations if (m.rehearsal or {}).get("migration", {}).get("rehearsed"))
    checked = f" (rehearsed: {files} of {len(running)}, 0 failing statements)" if files else ""
    if risks:
        return f"⚠️ Review needed: {summary}{checked}; " + ", ".join(risks) + "."
    return f"✅ {summary}{checked}; nothing destructive or blocking found."


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
