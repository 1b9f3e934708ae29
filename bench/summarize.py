#!/usr/bin/env python3
"""Markdown tables from cleanup benchmark results (bench/results/cleanup.md is made with it).

    python bench/summarize.py bench/results/raw/cleanup_1000000.json [...]
"""

from __future__ import annotations

import json
import sys


def f(v: float | None, nd: int = 1) -> str:
    return "—" if v is None else f"{v:,.{nd}f}"


def table(path: str) -> str:
    with open(path) as handle:
        d = json.load(handle)
    res = d["results"]
    plain = res.get("plain", {}).get("total_s")
    ref = res.get("reference", {}).get("insert_latency", {}).get("service_ms", {})
    out = [
        f"#### {d['data']['tokens']:,} tokens ({d['data']['expired']:,} expired) — `{path}`",
        "",
        "| variant | total s | × plain | rows deleted | txns | longest txn ms | txn p50 / p99 ms | txns > 100 ms "
        "| insert p50 / p99 / max ms | insert p99 from schedule ms | WAL MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res.items():
        il = r["insert_latency"]
        s, sc = il["service_ms"], il["from_schedule_ms"]
        ts = r["txn_stats"]
        total = r["total_s"]
        if name == "reference":
            out.append(
                f"| reference (no cleanup, {total:.0f} s) | — | — | — | — | — | — | — | "
                f"{f(s.get('p50'), 2)} / {f(s.get('p99'), 2)} / {f(s.get('max'), 2)} | {f(sc.get('p99'), 2)} | "
                f"{r['wal_bytes'] / 2**20:,.0f} |"
            )
            continue
        label = name + ("" if r.get("complete") else f" (capped at {r.get('cap_s'):.0f} s, incomplete)")
        out.append(
            f"| {label} | {f(total, 2)} | {f(total / plain if plain else None, 2)} | {r['rows_deleted']:,} | "
            f"{r['batches']:,} | {f(r['longest_txn_ms'])} | {f(ts.get('p50'))} / {f(ts.get('p99'))} | "
            f"{ts.get('over_100ms', 0)} | {f(s.get('p50'), 2)} / {f(s.get('p99'), 2)} / {f(s.get('max'), 2)} | "
            f"{f(sc.get('p99'), 2)} | {r['wal_bytes'] / 2**20:,.0f} |"
        )
    if ref:
        out.append("")
        out.append(f"Reference insert latency (no cleanup): p50 {ref['p50']:.2f} ms, p99 {ref['p99']:.2f} ms "
                   f"({ref['n']:,} inserts).")
    return "\n".join(out)


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: python bench/summarize.py RESULT.json [...] (files written by bench/cleanup_benchmark.py)",
              file=sys.stderr)
        return 2
    for p in paths:
        try:
            print(table(p))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{p}: not a cleanup benchmark result ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 1
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
