# Source me: puts the bootstrap's Pulumi CLI on PATH and switches off everything that phones home.
# shellcheck shell=bash
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export PATH="$PULUMI_BIN_DIR:$REPO_DIR/.venv/bin:$PATH"
export PULUMI_BACKEND_URL=${PULUMI_BACKEND_URL:-file://$REPO_DIR/.pulumi-state}
export PULUMI_CONFIG_PASSPHRASE=${PULUMI_CONFIG_PASSPHRASE-customer-insights-dev}
