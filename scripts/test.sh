#!/usr/bin/env bash
# README command 2: bootstrap this machine, lint, type-check, then the whole test suite
# (unit, integration and end-to-end). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export BOOTSTRAP_T0=${BOOTSTRAP_T0:-$(date +%s)}
bash bootstrap/bootstrap.sh
. bootstrap/env.sh

echo "==> ruff"
ruff check .
echo "==> mypy"
mypy infra scripts __main__.py
echo "==> squawk (sql/)"
squawk sql/*.sql
echo "==> actionlint (.github/workflows)"
actionlint -no-color -oneline
echo "==> pytest"
exec python -m pytest -v "$@"
