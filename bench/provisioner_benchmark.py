#!/usr/bin/env python3
"""Provisioner benchmark: the real `pulumi` CLI on this program, next to the same work done by hand.

    source bootstrap/env.sh && python bench/provisioner_benchmark.py

Each run (default 3, `--runs`), on the local image, with a fresh file backend and stack:

  hand        the same work without Pulumi: `docker volume create`, `docker create`, the
              password file copied in, `docker start`, wait until `pg_isready` answers (polled every
              50 ms), one `psql` creating the roles, the database and its grants, each migration with
              `psql -1 -f` as the owner, one `psql` creating pg_cron, the cleanup grants and the job.
  cold_up     `pulumi up --yes --skip-preview` of a fresh stack (9 migrations: sql/ as committed)
  noop_*      no-change `pulumi preview`, `pulumi up --yes` (preview + update, the user's command)
              and `pulumi up --yes --skip-preview`, at 9, 300 and 999 migrations (trivial generated
              files added to a temp copy of sql/, config key `migrationsDir`; `--counts`)
  refresh_N   `pulumi refresh --yes --skip-preview` at 9 and at 300
  destroy_9   `pulumi destroy --yes` at 9; then `cold_up_preview` (`pulumi up --yes` of the emptied stack)
  up_one_more_9  `pulumi up --yes` adding one file on top of the 9 (the same-run base of the others)
  add_N       `pulumi up --yes --skip-preview` adding the files up to N (setup, recorded too)
  one_more    at the top count + 1 file: `pulumi preview` (one pending) and `pulumi up --yes`
  checkpoint  (`--checkpoint-keep K`, default 10; 0 skips) `python -m infra.migrations_cli checkpoint` folds
              all but the last K files (990 of 1,000), `checkpoint_move_N` is the `up` that moves the
              stack onto it, then the no-change preview and up on it, and `up_one_more_checkpoint_N`
  destroy     `pulumi destroy --yes` of everything at the end
  rehearsal_N at 9 and at 300 applied migrations, one pending file (an ALTER TABLE of an existing
              table, never applied): `pulumi preview` with the rehearsal (the default) and with
              `rehearseMigrations: false`, alternated `--rehearsal-reps` times (default 3); the
              rehearsal's share of the preview is (with - without) / with, medians of the same run

`--rehearsal-only` runs just the rehearsal steps (cold up, rehearsal at 8, up to 300, rehearsal at
300, destroy) `--runs` times.

Every Pulumi command is timed from process start to exit. Database sessions opened by each command
are counted on the server (`pg_stat_database.sessions`, client backends only, read through
`docker exec psql` over the Unix socket; the reading session itself is subtracted), and broken down
by role and application_name from `log_connections` (turned on with ALTER SYSTEM after the cold up).

`--profile` (default on; `--no-profile`) adds an instrumented pass at 8 and 300 migrations (not
part of the timed runs): PULUMI_DEBUG_GRPC (every gRPC call the engine makes or serves, with
timestamps and durations) and a timing wrapper around the dynamic-provider host's handlers. The
gRPC log holds property values, including secrets: it is reduced to timings in memory and deleted.

The program measured is a snapshot taken when a run starts: a git revision (`--source`, default
HEAD; e.g. the commit before a change, for a before/after) or, with `--source worktree`, the
working tree as it is then.

Results: bench/results/provisioner_<tag>.json (raw) and a markdown summary on stdout
(`--summarize FILE...` prints it again). Nothing is left behind: stacks are destroyed, the hand
baseline's container, volume and network removed, temp dirs deleted (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.components.server import DATA_DIR, PASSWORD_FILE, server_command, server_envs

REPO = Path(__file__).resolve().parent.parent

PROJECT = "customer-insights-db"
IMAGE = "customer-insights/postgres-cron:15"
DATABASE = "customer_insights"
SUPERUSER = "postgres"
ROLE_PREFIX = "ci"
PASSPHRASE = "provisioner-benchmark"
DEFAULT_COUNTS = (300, 999)
# A schedule that never fires while the benchmark runs (1 January, 03:07): no job session in the counts.
CLEANUP_SCHEDULE = "7 3 1 1 *"
CLEANUP_COMMAND = "CALL delete_expired_refresh_tokens(batch_size => 5000)"

# ------------------------------------------------------------------------------------------------
# pure helpers (tests/unit/test_provisioner_benchmark.py)


def generated_migration(version: int) -> dict[str, str]:
    """A trivial migration file pair, as a long-lived project accumulates them."""
    stem = f"{version:03d}_bench_history_{version:03d}"
    table = f"bench_history_{version:03d}"
    return {
        f"{stem}.sql": f"-- {stem}: generated by bench/provisioner_benchmark.py\n"
                       f"CREATE TABLE {table} (id bigint PRIMARY KEY);\n",
        f"{stem}.down.sql": f"-- reverts {stem}.sql\nDROP TABLE {table};\n",
    }


def write_generated(directory: Path, first: int, last: int) -> list[str]:
    """Writes generated migrations first..last (inclusive) into `directory`; returns the up files."""
    written = []
    for version in range(first, last + 1):
        for name, text in generated_migration(version).items():
            (directory / name).write_text(text)
            if not name.endswith(".down.sql"):
                written.append(name)
    return written


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and spread ((max - min) / median) of a sample."""
    if not values:
        raise ValueError("no values")
    med = statistics.median(values)
    return {"n": len(values), "median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else 0.0}


_AUTHORIZED = re.compile(
    r"connection authorized: user=(?P<user>\S+) database=(?P<db>\S+)(?: application_name=(?P<app>.*?))?\s*$"
)


def connection_breakdown(log_lines: Iterable[str], exclude_app: str = "") -> dict[str, int]:
    """Counts `log_connections` "connection authorized" lines by `user/database/application_name`."""
    counts: dict[str, int] = {}
    for line in log_lines:
        m = _AUTHORIZED.search(line)
        if not m:
            continue
        app = (m["app"] or "").strip()
        if exclude_app and app == exclude_app:
            continue
        key = f"{m['user']}/{m['db']}/{app or '-'}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _parse_ts(text: str) -> float:
    # Go writes RFC 3339 with nanoseconds; Python's fromisoformat takes at most microseconds.
    m = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    frac = (m[2] or ".0")[:7]
    zone = "+00:00" if m[3] == "Z" else m[3]
    return dt.datetime.fromisoformat(f"{m[1]}{frac}{zone}").timestamp()


def _duration_s(value: Any) -> float:
    # time.Duration is marshalled as integer nanoseconds.
    return float(value or 0) / 1e9


def _is_dynamic(type_or_urn: str) -> bool:
    return "pulumi-python:dynamic" in type_or_urn


def _med_ms(values: Sequence[float]) -> float | None:
    return round(statistics.median(values) * 1000, 2) if values else None


def breakdown(grpc: Iterable[dict[str, Any]], probe: Iterable[dict[str, Any]], started: float,
              ended: float) -> dict[str, Any]:
    """Where one Pulumi command's time goes.

    `grpc`: its PULUMI_DEBUG_GRPC entries (the engine's calls to plugins: one entry at the request,
    one with `duration` at the response; the engine's own server side logs no start time, so only
    client-side calls are timed). `probe`: the instrumented Python processes' records (`side`
    "host": the dynamic-provider host's handlers; "sdk": the program's RegisterResource round trips).
    `started`/`ended`: the command's process start and exit (epoch seconds).
    """
    methods: dict[str, list[float]] = {}
    by_urn: dict[str, dict[str, float]] = {}
    first_call = None
    for e in grpc:
        if e.get("progress") != "response_completed" or (e.get("metadata") or {}).get("mode") == "server":
            continue
        end = _parse_ts(e["timestamp"])
        dur = _duration_s(e.get("duration"))
        method = "/".join(e.get("method", "").rsplit("/", 2)[-2:])
        methods.setdefault(method, []).append(dur)
        first_call = end - dur if first_call is None else min(first_call, end - dur)
        urn = str((e.get("request") or {}).get("urn", ""))
        kind = method.rsplit("/", 1)[-1]
        if urn and _is_dynamic(urn) and kind in ("Check", "Diff", "Create", "Update", "Delete", "Read"):
            by_urn.setdefault(urn, {})[kind] = dur
    host: dict[str, list[float]] = {}
    sdk: list[tuple[float, float, str]] = []
    for r in probe:
        if r.get("side") == "host":
            host.setdefault(r["method"], []).append(float(r["dur"]))
        elif r.get("side") == "sdk":
            sdk.append((float(r["start"]), float(r["start"]) + float(r["dur"]), str(r.get("key", ""))))
    sdk.sort()
    chain = [x for x in sdk if _is_dynamic(x[2])]
    out: dict[str, Any] = {
        "wall_s": round(ended - started, 3),
        "engine_calls": {m: {"calls": len(d), "total_s": round(sum(d), 3), "median_ms": _med_ms(d)}
                         for m, d in sorted(methods.items(), key=lambda kv: -sum(kv[1]))},
        "host_handlers": {m: {"calls": len(d), "total_s": round(sum(d), 3), "median_ms": _med_ms(d)}
                          for m, d in sorted(host.items())},
    }
    if first_call is not None:
        out["until_first_plugin_call_s"] = round(first_call - started, 3)
    if sdk:
        out["registrations"] = len(sdk)
        # The registrations that kept the program waiting longest (engine step included).
        out["slowest_registrations_ms"] = {
            k.split("::", 1)[-1] + f" ({k.split('::', 1)[0].rsplit(':', 1)[-1]})": round((e - s_) * 1000, 1)
            for s_, e, k in sorted(sdk, key=lambda x: x[0] - x[1])[:8]
        }
        out["until_first_registration_s"] = round(sdk[0][0] - started, 3)
        out["after_last_registration_s"] = round(ended - max(e for _, e, _ in sdk), 3)
    if chain:
        rtt = [e - s for s, e, _ in chain]
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(chain)]
        checks = [v["Check"] for v in by_urn.values() if "Check" in v]
        diffs = [v["Diff"] for v in by_urn.values() if "Diff" in v]
        per = (chain[-1][1] - chain[0][0]) / len(chain)
        check_ms, diff_ms, rtt_ms = _med_ms(checks) or 0.0, _med_ms(diffs) or 0.0, _med_ms(rtt) or 0.0
        out["dynamic_chain"] = {
            "resources": len(chain),
            "span_s": round(chain[-1][1] - chain[0][0], 3),
            "per_resource_ms": round(per * 1000, 2),
            "register_round_trip_median_ms": rtt_ms,
            "engine_check_median_ms": _med_ms(checks),
            "engine_diff_median_ms": _med_ms(diffs),
            "host_check_median_ms": _med_ms(host.get("Check", [])),
            "host_diff_median_ms": _med_ms(host.get("Diff", [])),
            "engine_rest_median_ms": round(rtt_ms - check_ms - diff_ms, 2),
            "program_gap_median_ms": _med_ms(gaps),
        }
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# ------------------------------------------------------------------------------------------------
# the instrumented dynamic-provider host (written into a temp dir put first on PYTHONPATH)

SITECUSTOMIZE = textwrap.dedent('''\
    """Bench probe (bench/provisioner_benchmark.py): times the dynamic-provider host's gRPC handlers and
    the program's RegisterResource calls, one JSON object a line into $BENCH_PROBE_LOG.<pid>."""
    import importlib.abc, importlib.util, json, os, sys, threading, time

    _OUT = os.environ.get("BENCH_PROBE_LOG")
    _lock = threading.Lock()

    def _write(rec):
        with _lock, open(f"{_OUT}.{os.getpid()}", "a") as f:
            f.write(json.dumps(rec) + "\\n")

    def _timed(fn, side, method, key_of):
        def timed(*args):
            t0 = time.time(); p0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                try:
                    key = key_of(args)
                except Exception:
                    key = ""
                _write({"side": side, "method": method, "start": t0, "dur": time.perf_counter() - p0, "key": key})
        return timed

    def _patch_provider(module):
        add = module.add_ResourceProviderServicer_to_server
        def patched(servicer, server):
            cls = type(servicer)
            for name in ("Check", "Diff", "Create", "Update", "Delete", "Read"):
                if hasattr(cls, name):
                    setattr(cls, name, _timed(getattr(cls, name), "host", name, lambda a: a[1].urn))
            return add(servicer, server)
        module.add_ResourceProviderServicer_to_server = patched

    def _patch_monitor(module):
        init = module.ResourceMonitorStub.__init__
        def patched(self, channel):
            init(self, channel)
            self.RegisterResource = _timed(self.RegisterResource, "sdk", "RegisterResource",
                                           lambda a: f"{a[0].type}::{a[0].name}")
        module.ResourceMonitorStub.__init__ = patched

    _PATCHES = {"pulumi.runtime.proto.provider_pb2_grpc": _patch_provider,
                "pulumi.runtime.proto.resource_pb2_grpc": _patch_monitor}

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in _PATCHES:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            orig = spec.loader.exec_module
            def exec_module(module):
                orig(module)
                _PATCHES[fullname](module)
            spec.loader.exec_module = exec_module
            return spec

    if _OUT:
        sys.meta_path.insert(0, _Finder())
''')


# ------------------------------------------------------------------------------------------------
# running things


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sh(args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
       check: bool = True, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), env=env, cwd=cwd, input=input_, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}... exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def require_tools() -> None:
    """Fails loudly (names the fix) when the toolchain, Docker or the image is missing."""
    problems = []
    if shutil.which("pulumi") is None:
        problems.append("no `pulumi` on PATH: run `bash bootstrap/bootstrap.sh`, then `source bootstrap/env.sh`")
    for tool in ("docker", "psql", "pg_isready"):
        if shutil.which(tool) is None:
            problems.append(f"no `{tool}` on PATH (the bootstrap installs it)")
    if not problems:
        if sh(["docker", "image", "inspect", IMAGE], check=False).returncode != 0:
            problems.append(f"image {IMAGE} missing: run `bash bootstrap/bootstrap.sh`")
        plugins = json.loads(sh(["pulumi", "plugin", "ls", "--json"]).stdout or "[]") or []
        have = {p["name"] for p in plugins if p.get("kind") == "resource"}
        missing = {"docker", "postgresql", "random"} - have
        if missing:
            problems.append(f"provider plugins missing: {sorted(missing)} (bootstrap/bootstrap.sh installs them)")
    if problems:
        sys.exit("provisioner benchmark cannot run:\n  " + "\n  ".join(problems))


@dataclass
class Timing:
    label: str
    seconds: float
    sessions: int | None = None
    by_connection: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    summary: str = ""


class Server:
    """Reads the session counters of a container's server over its Unix socket (trust, local)."""

    READER = "bench-session-reader"

    def __init__(self, container: str) -> None:
        self.container = container

    def psql(self, query: str, database: str = "postgres") -> str:
        env = ["-e", f"PGAPPNAME={self.READER}"]
        return sh(["docker", "exec", *env, self.container, "psql", "-X", "-qAt", "-U", SUPERUSER, "-d", database,
                   "-c", query]).stdout.strip()

    def sessions(self) -> int:
        # Counted at backend start (client backends only) and flushed at backend exit; our own
        # session is counted by the next read, so each read adds exactly one.
        return int(self.psql("SELECT sum(sessions) FROM pg_stat_database") or 0)

    def enable_log_connections(self) -> None:
        self.psql("ALTER SYSTEM SET log_connections = on")
        self.psql("SELECT pg_reload_conf()")

    def log_since(self, since: float) -> list[str]:
        stamp = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        proc = sh(["docker", "logs", "--since", stamp, self.container], check=False)
        return (proc.stdout + proc.stderr).splitlines()


class Project:
    """A temp project dir holding a snapshot of this repository's program (`__main__.py`, `infra/`,
    `sql/`: committed HEAD or the working tree), its own file backend and stack config, and a
    writable copy of sql/ that `migrationsDir` points at."""

    def __init__(self, root: Path, source: str) -> None:
        self.root = root
        self.dir = root / "project"
        self.backend = root / "state"
        self.sql = root / "sql"
        self.dir.mkdir()
        self.backend.mkdir()
        # A snapshot of the program: other people edit the shared working tree while this runs.
        if source != "worktree":
            archive = subprocess.run(["git", "-C", str(REPO), "archive", source, "__main__.py", "infra", "sql"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(self.dir)], input=archive, check=True)
        else:
            shutil.copy(REPO / "__main__.py", self.dir)
            for sub in ("infra", "sql"):
                shutil.copytree(REPO / sub, self.dir / sub, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(self.dir / "sql", self.sql)
        (self.dir / "Pulumi.yaml").write_text(
            f"name: {PROJECT}\nruntime:\n  name: python\n  options:\n    toolchain: pip\n"
            f"    virtualenv: {REPO / '.venv'}\n"
        )
        self.probe_dir = root / "probe"
        self.probe_dir.mkdir()
        (self.probe_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PULUMI_BACKEND_URL": f"file://{self.backend}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            # The dynamic-provider host unpickles the providers' classes from the snapshot's infra/.
            "PYTHONPATH": str(self.dir),
        })
        env.pop("PULUMI_DEBUG_GRPC", None)
        env.update(extra or {})
        return env

    def migrations(self) -> int:
        return len([p for p in self.sql.glob("*.sql") if not p.name.endswith(".down.sql")])


class Stack:
    def __init__(self, project: Project, name: str, port: int) -> None:
        self.project = project
        self.name = name
        self.port = port
        self.container = f"postgres-{name}"
        self.server = Server(self.container)
        self.log_connections = False
        self.live = False

    def cli(self, *args: str, extra_env: dict[str, str] | None = None, check: bool = True,
            ) -> tuple[subprocess.CompletedProcess[str], float, float]:
        cmd = ["pulumi", *args, "--stack", self.name, "--non-interactive", "--color", "never",
               "--cwd", str(self.project.dir)]
        started = time.time()
        proc = sh(cmd, env=self.project.env(extra_env), check=check)
        return proc, started, time.time()

    def init(self) -> None:
        self.cli("stack", "init", "--secrets-provider", "passphrase")
        values = {
            "mode": "container", "databaseName": DATABASE, "rolePrefix": ROLE_PREFIX, "hostPort": str(self.port),
            "migrationsDir": str(self.project.sql), "cleanupSchedule": CLEANUP_SCHEDULE,
            "keepDataOnDestroy": "false", "protectData": "false",
        }
        self.cli("config", "set-all", *[a for k, v in values.items() for a in ("--plaintext", f"{PROJECT}:{k}={v}")])

    def timed(self, label: str, *args: str, extra_env: dict[str, str] | None = None) -> Timing:
        was_live = self.live
        before = self.server.sessions() if was_live else 0
        proc, started, ended = self.cli(*args, extra_env=extra_env)
        t = Timing(label, ended - started, started=started, ended=ended)
        m = re.findall(r"^Resources:\n((?:[ \t]+.*\n?)+)", proc.stdout, re.M)
        t.summary = " ".join(m[-1].split()) if m else ""
        self.live = args[0] == "up" or (was_live and args[0] != "destroy")
        if self.live:
            # Backends flush their counters when they exit, a moment after the client is gone.
            time.sleep(0.3)
            # The previous read's own session is counted now (there was none before a fresh server).
            t.sessions = self.server.sessions() - before - (1 if was_live else 0)
            if self.log_connections:
                t.by_connection = connection_breakdown(self.server.log_since(started), exclude_app=Server.READER)
        return t

    def destroy_everything(self) -> None:
        with contextlib.suppress(Exception):
            self.cli("destroy", "--yes", "--skip-preview", check=False)
        with contextlib.suppress(Exception):
            self.cli("stack", "rm", "--yes", "--force", check=False)
        # Belt and braces: nothing of this stack may outlive the benchmark.
        sh(["docker", "rm", "-f", "-v", self.container], check=False)
        sh(["docker", "volume", "rm", f"postgres-{self.name}-data"], check=False)
        sh(["docker", "network", "rm", f"postgres-{self.name}"], check=False)


# ------------------------------------------------------------------------------------------------
# the hand baseline


def hand_baseline(sql_dir: Path, workdir: Path) -> dict[str, Any]:
    """The same work as the cold `up`, by hand with docker and psql; returns timings."""
    tag = f"bench-hand-{uuid.uuid4().hex[:8]}"
    port = free_port()
    superuser_pw = secrets.token_urlsafe(24)
    passwords = {r: secrets.token_urlsafe(24) for r in ("owner", "app", "readonly", "token_cleanup")}
    roles = {r: f"{ROLE_PREFIX}_{r}" for r in passwords}
    secret_dir = workdir / f"{tag}-secret" / "postgresql-secrets"
    secret_dir.mkdir(parents=True)
    (secret_dir / Path(PASSWORD_FILE).name).write_text(superuser_pw)
    env = dict(os.environ, PGPASSWORD=superuser_pw, PGHOST="127.0.0.1", PGPORT=str(port), PGCONNECT_TIMEOUT="10")
    marks: dict[str, float] = {}
    files = sorted((p for p in sql_dir.glob("*.sql") if not p.name.endswith(".down.sql")),
                   key=lambda p: int(p.name.split("_", 1)[0]))
    t0 = time.perf_counter()
    try:
        sh(["docker", "volume", "create", f"{tag}-data"])
        create = ["docker", "create", "--name", tag, "-v", f"{tag}-data:{DATA_DIR}",
                  "-p", f"127.0.0.1:{port}:5432"]
        for e in server_envs(SUPERUSER):
            create += ["-e", e]
        sh([*create, IMAGE, *server_command(DATABASE)])
        sh(["docker", "cp", str(secret_dir), f"{tag}:{Path(PASSWORD_FILE).parent.parent}"])
        sh(["docker", "start", tag])
        marks["container_started"] = time.perf_counter() - t0
        deadline = time.monotonic() + 120
        while sh(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-d", "postgres"],
                 check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("hand baseline: server not ready after 120 s")
            time.sleep(0.05)
        marks["ready"] = time.perf_counter() - t0
        db, owner = DATABASE, roles["owner"]
        setup = [f"CREATE ROLE {roles[r]} LOGIN PASSWORD '{pw}' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                 for r, pw in passwords.items()]
        setup.append(f"CREATE DATABASE {db} OWNER {owner} ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'"
                     " TEMPLATE template0 CONNECTION LIMIT -1")
        setup.append(f"\\connect {db}")
        setup.append(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
        for r in ("app", "readonly", "token_cleanup"):
            setup.append(f"GRANT CONNECT ON DATABASE {db} TO {roles[r]}")
            setup.append(f"GRANT USAGE ON SCHEMA public TO {roles[r]}")
        for r, kind, privs in (("app", "TABLES", "SELECT, INSERT, UPDATE, DELETE"), ("app", "SEQUENCES", "USAGE, SELECT"),
                               ("readonly", "TABLES", "SELECT"), ("readonly", "SEQUENCES", "SELECT")):
            setup.append(f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT {privs} ON {kind} TO {roles[r]}")
        sh(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", SUPERUSER, "-d", "postgres"], env=env,
           input_="\n".join(s if s.startswith("\\") else s + ";" for s in setup) + "\n")
        marks["database_and_roles"] = time.perf_counter() - t0
        owner_env = dict(env, PGPASSWORD=passwords["owner"])
        for f in files:
            single = [] if "migrate:no-transaction" in f.read_text().split("\n\n", 1)[0] else ["-1"]
            sh(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *single, "-U", owner, "-d", db, "-f", str(f)],
               env=owner_env)
        marks["migrations"] = time.perf_counter() - t0
        cleanup = roles["token_cleanup"]
        job = [
            "CREATE EXTENSION IF NOT EXISTS pg_cron",
            f"GRANT DELETE ON public.refresh_tokens TO {cleanup}",
            f"GRANT SELECT (id, expires_at) ON public.refresh_tokens TO {cleanup}",
            f"GRANT INSERT ON public.refresh_token_cleanup_runs TO {cleanup}",
            f"GRANT EXECUTE ON PROCEDURE public.delete_expired_refresh_tokens TO {cleanup}",
            f"SELECT cron.schedule_in_database('bench-hand', '{CLEANUP_SCHEDULE}', '{CLEANUP_COMMAND}', '{db}',"
            f" '{cleanup}', true)",
        ]
        sh(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", SUPERUSER, "-d", db], env=env,
           input_=";\n".join(job) + ";\n")
        total = time.perf_counter() - t0
        marks["job"] = total
        return {"seconds": total, "marks": {k: round(v, 3) for k, v in marks.items()}, "migrations": len(files)}
    finally:
        sh(["docker", "rm", "-f", "-v", tag], check=False)
        sh(["docker", "volume", "rm", f"{tag}-data"], check=False)
        shutil.rmtree(secret_dir.parent, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# one run


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record(results: dict[str, Any], t: Timing) -> None:
    results[t.label] = {"seconds": round(t.seconds, 3), "sessions": t.sessions, "by_connection": t.by_connection,
                        "resources": t.summary}
    log(f"  {t.label:<28} {t.seconds:7.2f} s  sessions={t.sessions}  {t.summary}")


def noop_set(stack: Stack, n: int, results: dict[str, Any], *, skip_preview: bool = True) -> None:
    record(results, stack.timed(f"noop_preview_{n}", "preview", "--expect-no-changes"))
    record(results, stack.timed(f"noop_up_{n}", "up", "--yes", "--expect-no-changes"))
    if skip_preview:
        record(results, stack.timed(f"noop_up_skip_preview_{n}", "up", "--yes", "--skip-preview",
                                    "--expect-no-changes"))


PENDING_SQL = "ALTER TABLE customers ADD COLUMN bench_note text;\n"


def rehearsal_set(stack: Stack, n: int, results: dict[str, Any], reps: int) -> None:
    """One pending file on top of `n` applied: previews with and without the rehearsal, alternated."""
    pending = stack.project.sql / f"{n + 1:03d}_bench_pending.sql"
    pending.write_text(PENDING_SQL)
    with_: list[float] = []
    without: list[float] = []
    try:
        for rep in range(reps):
            for enabled in ((True, False) if rep % 2 == 0 else (False, True)):
                stack.cli("config", "set", "--plaintext", f"{PROJECT}:rehearseMigrations", str(enabled).lower())
                t = stack.timed(f"rehearsal_{n}_{'on' if enabled else 'off'}_{rep + 1}", "preview")
                record(results, t)
                (with_ if enabled else without).append(t.seconds)
    finally:
        pending.unlink()
        stack.cli("config", "rm", f"{PROJECT}:rehearseMigrations")
    on, off = statistics.median(with_), statistics.median(without)
    results[f"rehearsal_{n}"] = {"with_s": round(on, 3), "without_s": round(off, 3), "reps": reps,
                                 "share": round((on - off) / on, 3) if on else None}
    log(f"  rehearsal at {n}: with {on:.2f} s, without {off:.2f} s, share {results[f'rehearsal_{n}']['share']}")


def rehearsal_run(index: int, counts: Sequence[int], workroot: Path, source: str, reps: int) -> dict[str, Any]:
    """Only the rehearsal's cost: at the base count and at the largest count."""
    results: dict[str, Any] = {}
    project = Project(Path(tempfile.mkdtemp(prefix="proj-", dir=workroot)), source)
    stack = Stack(project, f"bench-{uuid.uuid4().hex[:8]}", free_port())
    try:
        stack.init()
        base = project.migrations()
        log(f"run {index}: rehearsal cost at {base} and {max(counts)}")
        record(results, stack.timed("cold_up", "up", "--yes", "--skip-preview"))
        stack.server.enable_log_connections()
        stack.log_connections = True
        rehearsal_set(stack, base, results, reps)
        top = max(counts)
        if top > base:
            write_generated(project.sql, base + 1, top)
            record(results, stack.timed(f"add_{top - base}_to_{base}", "up", "--yes", "--skip-preview"))
            rehearsal_set(stack, top, results, reps)
        record(results, stack.timed(f"destroy_{project.migrations()}", "destroy", "--yes", "--skip-preview"))
        stack.live = False
    finally:
        stack.destroy_everything()
        shutil.rmtree(project.root, ignore_errors=True)
    results["ratios"] = rehearsal_ratios(results, base, top)
    log(f"  ratios: {results['ratios']}")
    return results


def rehearsal_ratios(r: dict[str, Any], base: int, top: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for n in (base, top):
        if f"rehearsal_{n}" in r:
            out[f"rehearsal_share_of_preview_{n}"] = r[f"rehearsal_{n}"]["share"]
            out[f"preview_with_vs_without_rehearsal_{n}"] = ratio(r[f"rehearsal_{n}"]["with_s"],
                                                                  r[f"rehearsal_{n}"]["without_s"])
    if f"rehearsal_{base}" in r and f"rehearsal_{top}" in r and top != base:
        out[f"rehearsal_preview_{top}_vs_{base}"] = ratio(r[f"rehearsal_{top}"]["with_s"],
                                                          r[f"rehearsal_{base}"]["with_s"])
    return out


def snapshot_sql(workroot: Path, rev: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="sql-", dir=workroot))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "sql"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "sql"


def owner_url(stack: Stack) -> str:
    proc, _, _ = stack.cli("stack", "output", "connection_urls", "--show-secrets", "--json")
    return str(json.loads(proc.stdout)["owner"])


def one_run(index: int, counts: Sequence[int], workroot: Path, source: str, checkpoint_keep: int, reps: int = 3) -> dict[str, Any]:
    results: dict[str, Any] = {}
    log(f"run {index}: hand baseline")
    hand = hand_baseline(REPO / "sql" if source == "worktree" else snapshot_sql(workroot, source), workroot)
    results["hand"] = {"seconds": round(hand["seconds"], 3), "marks": hand["marks"]}
    log(f"  hand                         {hand['seconds']:7.2f} s  {hand['marks']}")

    project = Project(Path(tempfile.mkdtemp(prefix="proj-", dir=workroot)), source)
    stack = Stack(project, f"bench-{uuid.uuid4().hex[:8]}", free_port())
    try:
        stack.init()
        base = project.migrations()
        record(results, stack.timed("cold_up", "up", "--yes", "--skip-preview"))
        stack.server.enable_log_connections()
        stack.log_connections = True
        noop_set(stack, base, results)
        rehearsal_set(stack, base, results, reps)
        record(results, stack.timed(f"refresh_{base}", "refresh", "--yes", "--skip-preview"))
        record(results, stack.timed(f"destroy_{base}", "destroy", "--yes", "--skip-preview"))
        stack.live = False
        record(results, stack.timed("cold_up_preview", "up", "--yes"))
        stack.server.enable_log_connections()
        write_generated(project.sql, base + 1, base + 1)
        record(results, stack.timed(f"up_one_more_{base}", "up", "--yes"))
        current = base + 1
        for n in counts:
            if n <= current:
                continue
            write_generated(project.sql, current + 1, n)
            record(results, stack.timed(f"add_{n - current}_to_{current}", "up", "--yes", "--skip-preview"))
            current = n
            noop_set(stack, n, results, skip_preview=n < max(counts))
            if n == 300:
                record(results, stack.timed(f"refresh_{n}", "refresh", "--yes", "--skip-preview"))
        rehearsal_set(stack, current, results, reps)
        write_generated(project.sql, current + 1, current + 1)
        record(results, stack.timed(f"preview_one_more_{current}", "preview"))
        record(results, stack.timed(f"up_one_more_{current}", "up", "--yes"))
        current += 1
        if checkpoint_keep:
            # Fold all but the last `checkpoint_keep` files into sql/checkpoint.json, move the stack to it.
            through = f"{current - checkpoint_keep:03d}"
            sh([sys.executable, "-m", "infra.migrations_cli", "--database-url", owner_url(stack), "--dir", str(project.sql),
                "checkpoint", "--through", through], cwd=project.dir, env=project.env())
            record(results, stack.timed(f"checkpoint_move_{current}", "up", "--yes", "--skip-preview"))
            label = f"checkpoint_{current}"
            record(results, stack.timed(f"noop_preview_{label}", "preview", "--expect-no-changes"))
            record(results, stack.timed(f"noop_up_{label}", "up", "--yes", "--expect-no-changes"))
            write_generated(project.sql, current + 1, current + 1)
            record(results, stack.timed(f"up_one_more_{label}", "up", "--yes"))
            current += 1
        record(results, stack.timed(f"destroy_{current}", "destroy", "--yes", "--skip-preview"))
        stack.live = False
    finally:
        stack.destroy_everything()
        shutil.rmtree(project.root, ignore_errors=True)
    results["ratios"] = {**run_ratios(results, base, counts), **rehearsal_ratios(results, base, max(counts))}
    log(f"  ratios: {results['ratios']}")
    return results


def run_ratios(r: dict[str, Any], base: int, counts: Sequence[int]) -> dict[str, float | None]:
    def s(key: str) -> float | None:
        return r[key]["seconds"] if key in r else None

    top = max(counts)
    moved = next((k.removeprefix("noop_preview_") for k in r if k.startswith("noop_preview_checkpoint_")), "")
    return {
        "cold_up_vs_hand": ratio(s("cold_up"), s("hand")),
        "cold_up_preview_vs_hand": ratio(s("cold_up_preview"), s("hand")),
        f"noop_preview_{top}_vs_{base}": ratio(s(f"noop_preview_{top}"), s(f"noop_preview_{base}")),
        f"noop_up_{top}_vs_{base}": ratio(s(f"noop_up_{top}"), s(f"noop_up_{base}")),
        f"noop_up_skip_preview_{top}_vs_{base}": ratio(s(f"noop_up_skip_preview_{top}"),
                                                        s(f"noop_up_skip_preview_{base}")),
        f"up_one_more_{top}_vs_{base}": ratio(s(f"up_one_more_{top}"), s(f"up_one_more_{base}")),
        f"refresh_300_vs_{base}": ratio(s("refresh_300"), s(f"refresh_{base}")),
        f"noop_preview_{moved}_vs_{base}": ratio(s(f"noop_preview_{moved}"), s(f"noop_preview_{base}")),
        f"noop_up_{moved}_vs_{base}": ratio(s(f"noop_up_{moved}"), s(f"noop_up_{base}")),
        f"up_one_more_{moved}_vs_{base}": ratio(s(f"up_one_more_{moved}"), s(f"up_one_more_{base}")),
    }


def paired_run(workroot: Path, source: str, total: int, keep: int, repeats: int) -> dict[str, Any]:
    """The targets' comparisons with both sides measured alternately, a few seconds apart (the machine
    is shared: load moves within one long run): hand against cold `up`, and a stack of the shipped
    files against one of `total` files whose first `total - keep` a checkpoint holds (written from
    the files, for a fresh database)."""
    from infra.migrate import Checkpoint, CheckpointEntry, load_migrations, write_checkpoint

    r: dict[str, Any] = {}
    small = Stack(Project(Path(tempfile.mkdtemp(prefix="pa-", dir=workroot)), source), f"bench-{uuid.uuid4().hex[:8]}",
                  free_port())
    big = Stack(Project(Path(tempfile.mkdtemp(prefix="pb-", dir=workroot)), source), f"bench-{uuid.uuid4().hex[:8]}",
                free_port())
    try:
        small.init()
        big.init()
        base = small.project.migrations()
        sql_dir = REPO / "sql" if source == "worktree" else snapshot_sql(workroot, source)
        for i in range(repeats):
            hand = hand_baseline(sql_dir, workroot)
            r[f"hand#{i}"] = {"seconds": round(hand["seconds"], 3), "marks": hand["marks"]}
            log(f"  hand#{i}                        {hand['seconds']:7.2f} s  {hand['marks']}")
            record(r, small.timed(f"cold_up#{i}", "up", "--yes", "--skip-preview"))
            if i < repeats - 1:
                record(r, small.timed(f"destroy_{base}#{i}", "destroy", "--yes", "--skip-preview"))
                small.live = False
        write_generated(big.project.sql, base + 1, total)
        files = load_migrations(big.project.sql)
        held = files[: total - keep]
        write_checkpoint(big.project.sql, Checkpoint(held[-1].version, tuple(
            CheckpointEntry(f.version, f.name, f.checksum) for f in held)))
        record(r, big.timed(f"cold_up_checkpoint_{total}", "up", "--yes", "--skip-preview"))
        for i in range(repeats):
            for stack, label in ((small, str(base)), (big, f"checkpoint_{total}")):
                record(r, stack.timed(f"noop_preview_{label}#{i}", "preview", "--expect-no-changes"))
            for stack, label in ((small, str(base)), (big, f"checkpoint_{total}")):
                record(r, stack.timed(f"noop_up_{label}#{i}", "up", "--yes", "--expect-no-changes"))
        for i in range(repeats):
            for stack, label in ((small, str(base)), (big, f"checkpoint_{total}")):
                count = stack.project.migrations()
                write_generated(stack.project.sql, count + 1, count + 1)
                record(r, stack.timed(f"up_one_more_{label}#{i}", "up", "--yes"))
    finally:
        for stack in (small, big):
            stack.destroy_everything()
            shutil.rmtree(stack.project.root, ignore_errors=True)

    def med(prefix: str) -> float | None:
        vals = [v["seconds"] for k, v in r.items() if k.split("#")[0] == prefix]
        return statistics.median(vals) if vals else None

    r["ratios"] = {
        "cold_up_vs_hand": ratio(med("cold_up"), med("hand")),
        f"noop_preview_checkpoint_{total}_vs_{base}": ratio(med(f"noop_preview_checkpoint_{total}"),
                                                             med(f"noop_preview_{base}")),
        f"noop_up_checkpoint_{total}_vs_{base}": ratio(med(f"noop_up_checkpoint_{total}"), med(f"noop_up_{base}")),
        f"up_one_more_checkpoint_{total}_vs_{base}": ratio(med(f"up_one_more_checkpoint_{total}"),
                                                            med(f"up_one_more_{base}")),
    }
    log(f"  paired ratios (medians of {repeats}): {r['ratios']}")
    return r


# ------------------------------------------------------------------------------------------------
# the instrumented pass


def read_jsonl(paths: Iterable[Path]) -> list[dict[str, Any]]:
    entries = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
    return entries


def probed(stack: Stack, label: str, args: Sequence[str], out: dict[str, Any]) -> None:
    """Runs one command with PULUMI_DEBUG_GRPC and the probe; keeps only the timings."""
    root = stack.project.root
    grpc_log = root / f"{label}.grpc.jsonl"
    probe_log = root / f"{label}.probe.jsonl"
    env = {"PULUMI_DEBUG_GRPC": str(grpc_log), "BENCH_PROBE_LOG": str(probe_log),
           "PYTHONPATH": os.pathsep.join([str(stack.project.probe_dir), str(stack.project.dir)])}
    try:
        _, started, ended = stack.cli(*args, extra_env=env)
        out[label] = breakdown(read_jsonl([grpc_log]), read_jsonl(root.glob(f"{probe_log.name}.*")), started, ended)
    finally:
        # The gRPC log holds property values, secrets included: only timings are kept.
        for f in [grpc_log, *root.glob(f"{probe_log.name}.*")]:
            f.unlink(missing_ok=True)
    log(f"  profile {label}: {out[label]['wall_s']} s, chain {json.dumps(out[label].get('dynamic_chain'))}")


def profile_pass(counts: Sequence[int], workroot: Path, source: str) -> dict[str, Any]:
    """Cold up, no-change preview and up at the smallest and largest count, and one more file on top,
    with gRPC and host timings."""
    out: dict[str, Any] = {}
    project = Project(Path(tempfile.mkdtemp(prefix="prof-", dir=workroot)), source)
    stack = Stack(project, f"bench-{uuid.uuid4().hex[:8]}", free_port())
    try:
        stack.init()
        base = project.migrations()
        probed(stack, "cold_up", ("up", "--yes", "--skip-preview"), out)
        for n in (base, max(counts)):
            if n > project.migrations():
                write_generated(project.sql, project.migrations() + 1, n)
                stack.cli("up", "--yes", "--skip-preview")
            for label, args in ((f"noop_preview_{n}", ("preview", "--expect-no-changes")),
                                (f"noop_up_skip_preview_{n}", ("up", "--yes", "--skip-preview",
                                                               "--expect-no-changes"))):
                probed(stack, label, args, out)
        top = project.migrations()
        write_generated(project.sql, top + 1, top + 1)
        probed(stack, f"up_one_more_{top}", ("up", "--yes", "--skip-preview"), out)
    finally:
        stack.destroy_everything()
        shutil.rmtree(project.root, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------
# summary


def profile_markdown(profile: dict[str, Any]) -> str:
    cols = ["per_resource_ms", "register_round_trip_median_ms", "engine_check_median_ms", "engine_diff_median_ms",
            "host_check_median_ms", "host_diff_median_ms", "engine_rest_median_ms", "program_gap_median_ms"]
    lines = ["| instrumented command | wall s | until 1st registration s | after last s | chain resources | "
             + " | ".join(c.removesuffix("_ms").replace("_median", "") + " ms" for c in cols) + " |",
             "|---|" + "---:|" * (4 + len(cols))]
    for label, p in profile.items():
        chain = p.get("dynamic_chain") or {}
        lines.append(f"| {label} | {p['wall_s']:.2f} | {p.get('until_first_registration_s', '—')} | "
                     f"{p.get('after_last_registration_s', '—')} | {chain.get('resources', '—')} | "
                     + " | ".join(str(chain.get(c, "—")) for c in cols) + " |")
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    runs = doc["runs"]
    if not runs:
        return profile_markdown(doc.get("profile", {}))
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r if k not in keys and k != "ratios" and "seconds" in r[k]]
    lines = ["| step | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median | spread | sessions |",
             "|---|" + "---:|" * (len(runs) + 3)]
    for k in keys:
        vals = [r[k]["seconds"] for r in runs if k in r]
        sess = sorted({r[k].get("sessions") for r in runs if k in r and r[k].get("sessions") is not None})
        st = summary(vals)
        cells = [f"{r[k]['seconds']:.2f}" if k in r else "—" for r in runs]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {st['median']:.2f} | {st['spread'] * 100:.0f} % | "
                     + ("/".join(str(s) for s in sess) if sess else "—") + " |")
    lines += ["", "| ratio (same run) | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |",
              "|---|" + "---:|" * (len(runs) + 1)]
    for k in runs[0]["ratios"]:
        vals = [r["ratios"].get(k) for r in runs]
        good = [v for v in vals if v is not None]
        lines.append(f"| {k} | " + " | ".join(f"{v:.2f}" if v is not None else "—" for v in vals)
                     + (f" | {statistics.median(good):.2f} |" if good else " | — |"))
    if doc.get("profile"):
        lines += ["", profile_markdown(doc["profile"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)),
                        help="migration counts for the no-change measurements (default 300,999: 1,000 with the one more)")
    parser.add_argument("--pause", type=float, default=20.0, help="seconds between runs (the machine is shared)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--checkpoint-keep", type=int, default=10,
                        help="after the series: fold all but this many files into a checkpoint and measure "
                             "on it (0: skip)")
    parser.add_argument("--source", default="HEAD",
                        help="program to measure: a git revision (default HEAD: the shared tree changes while this "
                             "runs) or `worktree` (the working tree as it is at the start)")
    parser.add_argument("--paired", type=int, default=0, metavar="REPEATS",
                        help="instead of the series: the target comparisons measured alternately, REPEATS times "
                             "each (hand / cold up; 9 files / 1,000 behind a checkpoint)")
    parser.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--rehearsal-reps", type=int, default=3,
                        help="previews with and without the rehearsal at each count (alternated)")
    parser.add_argument("--rehearsal-only", action="store_true", help="measure only the rehearsal's cost")
    parser.add_argument("--summarize", nargs="+", metavar="JSON", help="print the summary of result files")
    args = parser.parse_args(argv)
    if args.summarize:
        for path in args.summarize:
            print(f"## {path}\n\n{markdown(json.loads(Path(path).read_text()))}\n")
        return 0

    counts = sorted(int(c) for c in args.counts.split(","))
    require_tools()
    out_path = REPO / "bench" / "results" / f"provisioner_{args.tag}.json"
    doc: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "pulumi": sh(["pulumi", "version"]).stdout.strip(),
                    "load_avg_at_start": os.getloadavg()},
        "counts": counts, "runs": [], "source": args.source,
        "commit": sh(["git", "-C", str(REPO), "rev-parse", "HEAD" if args.source == "worktree" else args.source]
                     ).stdout.strip(),
    }
    workroot = Path(tempfile.mkdtemp(prefix="provisioner-bench-"))
    try:
        if args.paired:
            doc["paired"] = paired_run(workroot, args.source, 1000, args.checkpoint_keep or 10, args.paired)
            out_path.write_text(json.dumps(doc, indent=1))
            print(json.dumps(doc["paired"]["ratios"], indent=1))
            return 0
        for i in range(args.runs):
            if i:
                time.sleep(args.pause)
            if args.rehearsal_only:
                doc["runs"].append(rehearsal_run(i + 1, counts, workroot, args.source, args.rehearsal_reps))
            else:
                doc["runs"].append(one_run(i + 1, counts, workroot, args.source, args.checkpoint_keep, args.rehearsal_reps))
            out_path.write_text(json.dumps(doc, indent=1))
        if args.profile and not args.rehearsal_only:
            log("instrumented pass")
            doc["profile"] = profile_pass(counts, workroot, args.source)
        doc["machine"]["load_avg_at_end"] = os.getloadavg()
        out_path.write_text(json.dumps(doc, indent=1))
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    print(f"\n{markdown(doc)}\n\nraw: {out_path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
