# Source me: puts the bootstrap's Pulumi CLI, language host and the project's virtualenv on PATH, sets
# the dev stack's file backend and passphrase, and switches off everything that phones home.
# shellcheck shell=bash
_ci_had_t0=${BOOTSTRAP_T0:-}
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# The bootstrap's clock belongs to the scripts that run it, not to an interactive shell.
[ -n "$_ci_had_t0" ] || unset BOOTSTRAP_T0
unset _ci_had_t0
export PATH="$PULUMI_BIN_DIR:$TOOLS_BIN_DIR:$REPO_DIR/.venv/bin:$PATH"
export PULUMI_BACKEND_URL=${PULUMI_BACKEND_URL:-file://$REPO_DIR/.pulumi-state}
export PULUMI_CONFIG_PASSPHRASE=${PULUMI_CONFIG_PASSPHRASE-customer-insights-dev}
