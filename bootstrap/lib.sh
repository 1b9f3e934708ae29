# Shared helpers for the bootstrap scripts (sourced, not run).
# shellcheck shell=bash

BOOTSTRAP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BOOTSTRAP_DIR/.." && pwd)
# shellcheck source=versions.env
. "$BOOTSTRAP_DIR/versions.env"

CACHE_ROOT=${CUSTOMER_INSIGHTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/customer-insights-pg}
PULUMI_BIN_DIR="$CACHE_ROOT/pulumi-v$PULUMI_CLI_VERSION/bin"
PLUGIN_BIN_DIR="$CACHE_ROOT/plugins"
TOOLS_BIN_DIR="$CACHE_ROOT/tools/bin"
BUILD_DIR="$CACHE_ROOT/build"
STATUS_FILE="$CACHE_ROOT/toolchain-status"
# Upstream sources of the binaries the Go module proxy does not serve (see docs/toolchain.md, "Where the
# binaries come from"). They sit beside the clone, read-only in CI.
THIRD_PARTY_DIR=${CUSTOMER_INSIGHTS_THIRD_PARTY:-$REPO_DIR/../shared/third_party}

# One clock for the whole bootstrap: sub-scripts inherit it, so elapsed times never restart.
export BOOTSTRAP_T0=${BOOTSTRAP_T0:-$(date +%s)}
elapsed() { echo $(( $(date +%s) - BOOTSTRAP_T0 )); }
step() { printf '\n==> [%4ss] %s\n' "$(elapsed)" "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '    WARNING: %s\n' "$*" >&2; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# Runs a long command, printing a line every 30 s so a cold build never looks hung.
with_heartbeat() { # label command...
  local label=$1; shift
  "$@" &
  local pid=$! started; started=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && info "[$(elapsed)s] still $label ($(( $(date +%s) - started ))s so far)"
  done
  wait "$pid"
}

# Nothing the bootstrap prepares may phone home: no update checks, no plugin downloads.
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK=true
