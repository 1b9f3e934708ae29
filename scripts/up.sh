#!/usr/bin/env bash
# README command 1: bootstrap this machine, then the real `pulumi up --yes` of the dev stack (the CLI
# runs __main__.py through the Python language host). State in a local file backend
# (.pulumi-state/), secrets under the documented dev passphrase "customer-insights-dev", no Pulumi
# Cloud login. Another stack name may be given: `bash scripts/up.sh staging`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stack=${1:-dev}
export BOOTSTRAP_T0=${BOOTSTRAP_T0:-$(date +%s)}  # one clock for the bootstrap and the up
bash bootstrap/bootstrap.sh
. bootstrap/env.sh
mkdir -p .pulumi-state
printf '\n==> [%4ss] pulumi up --yes --stack %s (backend %s)\n' "$(elapsed)" "$stack" "$PULUMI_BACKEND_URL"
pulumi stack select --create "$stack" >/dev/null
pulumi up --yes --stack "$stack" --color never
cat <<MSG

==> [$(elapsed)s] stack '$stack' is up. Next:
    source bootstrap/env.sh
    pulumi stack output                               # host, port, database, roles, migrations, cleanup job
    pulumi stack output --show-secrets env --json     # POSTGRES_* and DATABASE_URL of the app role
    pulumi preview --expect-no-changes                # nothing to do
    pulumi destroy --yes                              # removes the container, volume and network
MSG
