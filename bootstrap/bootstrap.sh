#!/usr/bin/env bash
# Sets up everything this project needs on a fresh machine, offline, idempotently:
#   1. Debian packages (PostgreSQL 15 + pg_cron for tests and external mode, build tools)
#   2. the Python virtualenv (.venv) with requirements-dev.txt
#   3. the Pulumi toolchain: the CLI from its Go module, the Python language host and the docker,
#      postgresql and random plugins from ../shared/third_party (bootstrap/pulumi-toolchain.sh)
#   4. a running Docker engine (bootstrap/docker-engine.sh)
#   5. the local PostgreSQL + pg_cron image (bootstrap/postgres-image/build.sh)
# Each step caches its result (stamp files keyed by inputs, binaries keyed by version), so a
# second run takes seconds. `source bootstrap/env.sh` afterwards puts the toolchain on PATH.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_DIR"

step "Debian packages"
packages=(postgresql-15 postgresql-15-cron mmdebstrap curl ca-certificates graphviz jq)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  info "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a cluster on install; the tests run their own servers.
  command -v pg_ctlcluster >/dev/null && pg_ctlcluster 15 main stop 2>/dev/null || true
else
  info "cached: ${packages[*]}"
fi

step "Python virtualenv (.venv)"
stamp=".venv/.requirements-$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  info "cached: $stamp"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  rm -f .venv/.requirements-*; touch "$stamp"
  info "installed requirements-dev.txt"
fi

step "Pulumi toolchain"
bash "$BOOTSTRAP_DIR/pulumi-toolchain.sh"

step "actionlint v$ACTIONLINT_VERSION (workflow lint)"
if [ -x "$TOOLS_BIN_DIR/actionlint" ] && "$TOOLS_BIN_DIR/actionlint" -version 2>/dev/null | head -1 | grep -qx "v\?$ACTIONLINT_VERSION"; then
  info "cached: $TOOLS_BIN_DIR/actionlint"
else
  GOFLAGS= GOBIN="$TOOLS_BIN_DIR" go install "github.com/rhysd/actionlint/cmd/actionlint@v$ACTIONLINT_VERSION" \
    || die "go install of actionlint v$ACTIONLINT_VERSION failed (see above)"
  info "built $TOOLS_BIN_DIR/actionlint"
fi

step "Docker engine"
bash "$BOOTSTRAP_DIR/docker-engine.sh"

step "PostgreSQL + pg_cron image"
bash "$BOOTSTRAP_DIR/postgres-image/build.sh"

step "Summary"
while IFS=$'\t' read -r component state detail; do
  printf '    %-22s %-4s %s\n' "$component" "$state" "$detail"
done <"$STATUS_FILE"
info "Go caches: $(du -sh "$(go env GOMODCACHE)" 2>/dev/null | cut -f1) modules, $(du -sh "$(go env GOCACHE)" 2>/dev/null | cut -f1) build cache (README: reclaiming disk)"
info "done in $(elapsed)s"
