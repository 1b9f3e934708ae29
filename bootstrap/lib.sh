# Shared helpers for the bootstrap scripts (sourced, not run).
# shellcheck shell=bash

BOOTSTRAP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BOOTSTRAP_DIR/.." && pwd)
# shellcheck source=versions.env
. "$BOOTSTRAP_DIR/versions.env"

CACHE_ROOT=${CUSTOMER_INSIGHTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/customer-insights-pg}
PULUMI_BIN_DIR="$CACHE_ROOT/pulumi-v$PULUMI_CLI_VERSION/bin"
PLUGIN_BIN_DIR="$CACHE_ROOT/plugins"
STATUS_FILE="$CACHE_ROOT/toolchain-status"

_t0=$(date +%s)
step() { printf '\n==> [%3ss] %s\n' "$(( $(date +%s) - _t0 ))" "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '    WARNING: %s\n' "$*" >&2; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# Nothing the bootstrap prepares may phone home: no update checks, no plugin downloads.
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK=true
export GOFLAGS=-mod=mod
