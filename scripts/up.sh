#!/usr/bin/env bash
# README command 1: bootstrap this machine, then `pulumi up` of the dev stack (file backend in
# .pulumi-state/, dev passphrase "customer-insights-dev", no Pulumi Cloud login).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash bootstrap/bootstrap.sh
. bootstrap/env.sh
mkdir -p .pulumi-state
exec python scripts/stack.py up "${1:-dev}"
