"""Pictures of the environment, generated: the ER diagram from the live catalog, the resource graph
from a stack. Each writes a Graphviz source (committed, compared in CI) and, with `--png`, renders it
with Graphviz's `dot` (Debian package `graphviz`).

    python scripts/preview_pictures.py er --database-url "$OWNER_URL"        # docs/er-diagram.dot
    pulumi stack graph graph.dot && python scripts/preview_pictures.py graph graph.dot   # docs/resource-graph.dot
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

DOCS = Path(__file__).resolve().parent.parent / "docs"

_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       EXISTS (SELECT 1 FROM pg_constraint p WHERE p.conrelid = c.oid AND p.contype = 'p' AND a.attnum = ANY (p.conkey))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'schema_migrations'
ORDER BY c.relname, a.attnum
"""
_FOREIGN_KEYS = """
SELECT c.conrelid::regclass::text, c.confrelid::regclass::text, c.conname,
       (SELECT string_agg(a.attname, ', ' ORDER BY k.i) FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n)
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
WHERE c.contype = 'f' AND n.nspname = 'public'
ORDER BY 1, 3
"""


def er_dot(database_url: str) -> str:
    """The tables of schema public (but the tracking table), their columns and foreign keys."""
    with psycopg.connect(database_url) as conn:
        columns = conn.execute(_COLUMNS).fetchall()
        keys = conn.execute(_FOREIGN_KEYS).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column, type_, not_null, primary in columns:
        mark = "PK " if primary else ""
        nullable = "" if not_null else " NULL"
        tables.setdefault(table, []).append(f'<tr><td align="left">{mark}{column}</td>'
                                            f'<td align="left">{_html(type_)}{nullable}</td></tr>')
    lines = ["digraph er {", '  graph [rankdir=LR, fontname="Helvetica"];',
             '  node [shape=plaintext, fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for table, rows in tables.items():
        lines.append(f'  "{table}" [label=<<table border="1" cellborder="0" cellspacing="0">'
                     f'<tr><td colspan="2" bgcolor="lightgrey"><b>{table}</b></td></tr>{"".join(rows)}</table>>];')
    for child, parent, _name, cols in keys:
        lines.append(f'  "{child}" -> "{parent}" [label="{cols}"];')
    return "\n".join([*lines, "}"]) + "\n"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def graph_dot(stack_graph: str) -> str:
    """`pulumi stack graph` output without what changes from stack to stack (URNs, ids, order)."""
    labels = dict(re.findall(r'(Resource\d+) \[label="([^"]+)"\]', stack_graph))

    def short(urn: str) -> str:
        parts = urn.split("::")
        if len(parts) < 4:
            return urn
        type_ = parts[2].split("$")[-1]
        # The root's name is "<project>-<stack>": one picture for every stack
        return type_ if type_ == "pulumi:pulumi:Stack" else f"{type_}::{parts[-1]}"

    nodes = sorted({short(label) for label in labels.values() if "pulumi:providers:" not in label})
    edges = sorted({(short(labels[a]), short(labels[b]), style)
                    for a, b, style in re.findall(r'(Resource\d+) -> (Resource\d+)(?: \[([^\]]*)\])?', stack_graph)
                    if a in labels and b in labels and "pulumi:providers:" not in labels[a] + labels[b]})
    lines = ["strict digraph resources {", "  graph [rankdir=TB, fontname=\"Helvetica\"];",
             "  node [shape=box, fontname=\"Helvetica\", fontsize=9];"]
    lines += [f'  "{n}";' for n in nodes]
    lines += [f'  "{a}" -> "{b}"{" [" + s + "]" if s else ""};' for a, b, s in edges]
    return "\n".join([*lines, "}"]) + "\n"


def render_png(dot_source: Path, *, reduce: bool = False) -> Path:
    """`reduce`: an edge only where no longer path implies it (Graphviz's `tred`), so the chains of
    migrations and grants read as chains instead of a fan of every transitive dependency."""
    dot, tred = shutil.which("dot"), shutil.which("tred")
    if dot is None or tred is None:
        raise SystemExit("Graphviz's `dot` and `tred` are not installed: `apt-get install graphviz`")
    png = dot_source.with_suffix(".png")
    source = dot_source.read_text()
    if reduce:
        source = subprocess.run([tred], input=source, capture_output=True, text=True, check=True).stdout
    subprocess.run([dot, "-Tpng", "-Gsize=16,30", "-Gdpi=80", "-o", str(png)], input=source, text=True, check=True)
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="picture", required=True)
    er = sub.add_parser("er", help="ER diagram from the live catalog")
    er.add_argument("--database-url", required=True)
    er.add_argument("--out", type=Path, default=DOCS / "er-diagram.dot")
    graph = sub.add_parser("graph", help="resource graph from `pulumi stack graph FILE`")
    graph.add_argument("stack_graph", type=Path)
    graph.add_argument("--out", type=Path, default=DOCS / "resource-graph.dot")
    for p in (er, graph):
        p.add_argument("--png", action="store_true", help="also render OUT.png with Graphviz")
    args = parser.parse_args(argv)
    try:
        source: Any = er_dot(args.database_url) if args.picture == "er" else graph_dot(args.stack_graph.read_text())
    except psycopg.Error as exc:  # a wrong URL, a refused login, an unreachable server
        print(f"preview_pictures: cannot read the catalog: {str(exc).strip()}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"preview_pictures: cannot read {args.stack_graph}: {exc.strerror} "
              "(write it with `pulumi stack graph FILE`)", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(source)
    print(args.out)
    if args.png:
        print(render_png(args.out, reduce=args.picture == "graph"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
