"""The provisioner benchmark's pure helpers (the benchmark itself runs only when invoked)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.migrate import load_migrations

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("provisioner_benchmark", REPO / "bench" / "provisioner_benchmark.py")
assert _spec and _spec.loader
bench = importlib.util.module_from_spec(_spec)
sys.modules["provisioner_benchmark"] = bench
_spec.loader.exec_module(bench)


def test_generated_migrations_are_valid_files_that_follow_the_committed_ones(tmp_path: Path) -> None:
    shutil.copytree(REPO / "sql", tmp_path / "sql")
    committed = len(load_migrations(str(tmp_path / "sql")))
    written = bench.write_generated(tmp_path / "sql", committed + 1, 300)
    assert len(written) == 300 - committed
    files = load_migrations(str(tmp_path / "sql"))
    assert [int(f.version) for f in files] == list(range(1, 301))
    last = files[-1]
    assert last.filename == "300_bench_history_300.sql"
    assert "CREATE TABLE bench_history_300" in last.up_sql
    assert last.down_sql is not None and "DROP TABLE bench_history_300" in last.down_sql
    assert last.transactional


def test_summary_median_and_spread() -> None:
    s = bench.summary([2.0, 4.0, 3.0])
    assert (s["n"], s["median"], s["min"], s["max"]) == (3, 3.0, 2.0, 4.0)
    assert s["spread"] == pytest.approx(2.0 / 3.0)
    with pytest.raises(ValueError):
        bench.summary([])


def test_ratio_none_when_a_side_is_missing() -> None:
    assert bench.ratio(3.0, 2.0) == 1.5
    assert bench.ratio(None, 2.0) is None
    assert bench.ratio(3.0, None) is None


def test_connection_breakdown_counts_authorized_sessions_by_role_and_application() -> None:
    lines = [
        "2026-01-01 LOG:  connection received: host=172.17.0.1 port=1",
        "2026-01-01 LOG:  connection authorized: user=ci_owner database=customer_insights "
        "application_name=pulumi-migrations",
        "2026-01-01 LOG:  connection authorized: user=ci_owner database=customer_insights "
        "application_name=pulumi-migrations",
        "2026-01-01 LOG:  connection authorized: user=postgres database=postgres application_name=bench-session-reader",
        "2026-01-01 LOG:  connection authorized: user=postgres database=postgres",
    ]
    assert bench.connection_breakdown(lines, exclude_app="bench-session-reader") == {
        "ci_owner/customer_insights/pulumi-migrations": 2,
        "postgres/postgres/-": 1,
    }


def test_parse_ts_accepts_go_nanoseconds_and_offsets() -> None:
    assert bench._parse_ts("2026-01-01T00:00:01.123456789Z") == pytest.approx(1767225601.123456)
    assert bench._parse_ts("2026-01-01T01:00:01+01:00") == pytest.approx(1767225601.0)
    with pytest.raises(ValueError):
        bench._parse_ts("yesterday")


def test_breakdown_splits_a_dynamic_chain_into_engine_host_and_program_time() -> None:
    urn = "urn:pulumi:s::p::customer-insights:db:Migrations$pulumi-python:dynamic:Resource::{}"
    grpc: list[dict[str, Any]] = []
    probe: list[dict[str, Any]] = []
    t = 1000.0
    for i in range(3):
        # program sends RegisterResource at t, engine calls Check (10 ms) and Diff (20 ms), returns at t+0.05
        probe.append({"side": "sdk", "method": "RegisterResource", "start": t, "dur": 0.05,
                      "key": f"pulumi-python:dynamic:Resource::m{i}"})
        for method, offset, dur in (("Check", 0.005, 0.010), ("Diff", 0.02, 0.020)):
            end = t + offset + dur
            stamp = f"1970-01-01T00:{int(end // 60):02d}:{end % 60:09.6f}Z"
            grpc.append({"method": f"/pulumirpc.ResourceProvider/{method}", "progress": "request_started",
                         "request": {"urn": urn.format(i)}, "timestamp": "0001-01-01T00:00:00Z"})
            grpc.append({"method": f"/pulumirpc.ResourceProvider/{method}", "progress": "response_completed",
                         "request": {"urn": urn.format(i)}, "timestamp": stamp, "duration": int(dur * 1e9)})
            probe.append({"side": "host", "method": method, "start": t + offset, "dur": dur / 2, "key": urn.format(i)})
        t += 0.06  # 10 ms of program time between one response and the next registration
    out = bench.breakdown(grpc, probe, started=999.0, ended=1001.0)
    chain = out["dynamic_chain"]
    assert chain["resources"] == 3
    assert chain["register_round_trip_median_ms"] == pytest.approx(50.0)
    assert chain["engine_check_median_ms"] == pytest.approx(10.0, abs=0.01)
    assert chain["engine_diff_median_ms"] == pytest.approx(20.0, abs=0.01)
    assert chain["host_diff_median_ms"] == pytest.approx(10.0)
    assert chain["engine_rest_median_ms"] == pytest.approx(20.0, abs=0.02)
    assert chain["program_gap_median_ms"] == pytest.approx(10.0)
    assert chain["per_resource_ms"] == pytest.approx(56.67, abs=0.01)
    assert out["until_first_registration_s"] == pytest.approx(1.0)
    assert out["engine_calls"]["pulumirpc.ResourceProvider/Diff"]["calls"] == 3


def test_rehearsal_share_and_ratios_from_the_same_run() -> None:
    results = {"rehearsal_9": {"with_s": 8.0, "without_s": 6.0, "share": 0.25},
               "rehearsal_300": {"with_s": 20.0, "without_s": 12.0, "share": 0.4}}
    assert bench.rehearsal_ratios(results, 9, 300) == {
        "rehearsal_share_of_preview_9": 0.25, "preview_with_vs_without_rehearsal_9": 1.333,
        "rehearsal_share_of_preview_300": 0.4, "preview_with_vs_without_rehearsal_300": 1.667,
        "rehearsal_preview_300_vs_9": 2.5,
    }
    assert bench.rehearsal_ratios({}, 9, 300) == {}
