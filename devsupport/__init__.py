"""Development support shared by the tests, `scripts/` and `bench/`; never imported by the program.

- `local_postgres`: a throwaway PostgreSQL 15 + pg_cron cluster from Debian's binaries (`LocalPostgres`),
  `ServerAddress`, `free_port`.
- `versions`: the toolchain pins of `bootstrap/versions.env` and where the bootstrap installs the CLI.
- `program_mocks`: the real `__main__.py` run under Pulumi's mocks, every registration recorded
  (`ProgramHarness`), for the unit tests of the resource graph.
- `smoke_provider`: a minimal dynamic provider for the toolchain smoke test.

Outside `infra/` because the program and its dynamic-provider host import `infra/` on every `pulumi up`;
outside `tests/` because scripts and benchmarks are no test modules. Installed into the dev venv with
the project (`-e .` in requirements-dev.txt), so every entry point imports it without touching sys.path.
"""
