#!/usr/bin/env bash
# Entrypoint of customer-insights/postgres-cron:15 -- our own, small implementation of the official
# `postgres` image's contract (see README.md next to this file):
#   POSTGRES_PASSWORD | POSTGRES_PASSWORD_FILE (exactly one, unless POSTGRES_HOST_AUTH_METHOD=trust),
#   POSTGRES_USER (default postgres), POSTGRES_DB (default $POSTGRES_USER), PGDATA, POSTGRES_INITDB_ARGS,
#   POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), /docker-entrypoint-initdb.d/*.sql|*.sh on first init.
# First arg `postgres` or an option (`-c ...`) runs the server as the postgres user; anything else is
# exec'd as-is. pg_cron is preloaded (cron.database_name = POSTGRES_DB) unless the caller's own
# `-c shared_preload_libraries=...` / `-c cron.database_name=...` override it.
set -Eeuo pipefail

log() { echo "entrypoint: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- arguments --------------------------------------------------------------------------------------
if [[ $# -eq 0 || "${1:0:1}" == '-' ]]; then
    set -- postgres "$@"
fi
if [[ "$1" != postgres ]]; then
    exec "$@"
fi

# --- environment (resolved as root, before dropping privileges, so a root-only secret file works) ---
if [[ -n "${POSTGRES_PASSWORD:-}" && -n "${POSTGRES_PASSWORD_FILE:-}" ]]; then
    die "both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are set; set only one of them."
fi
if [[ -n "${POSTGRES_PASSWORD_FILE:-}" ]]; then
    [[ -r "$POSTGRES_PASSWORD_FILE" ]] || die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is not readable."
    POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE")
    # the root half's hand-over file (below): read once, then gone
    [[ -n "${ENTRYPOINT_PASSWORD_HANDOFF:-}" ]] && rm -f -- "$POSTGRES_PASSWORD_FILE"
    unset POSTGRES_PASSWORD_FILE ENTRYPOINT_PASSWORD_HANDOFF
fi
# Not exported: initdb, pg_ctl and the temporary server must not carry the superuser password in
# their environment (readable in /proc/<pid>/environ and `ps e` on the host); executable init
# scripts get it explicitly, sourced ones see the shell variable.
POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-}
export -n POSTGRES_PASSWORD
export POSTGRES_USER=${POSTGRES_USER:-postgres}
export POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
export POSTGRES_HOST_AUTH_METHOD=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
export PGDATA=${PGDATA:-/var/lib/postgresql/data}

# --- as root: prepare directories, then re-run this script as the postgres user ----------------------
if [[ $(id -u) -eq 0 ]]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    chmod 2775 /var/run/postgresql
    # The password crosses to the postgres-user half in a private file, not in the environment,
    # and only when initdb still needs it.
    if [[ -n "$POSTGRES_PASSWORD" && ! -s "$PGDATA/PG_VERSION" ]]; then
        handoff=$(mktemp /var/run/postgresql/.superuser-password.XXXXXX)
        printf '%s' "$POSTGRES_PASSWORD" >"$handoff"
        chown postgres:postgres "$handoff"
        export POSTGRES_PASSWORD_FILE=$handoff ENTRYPOINT_PASSWORD_HANDOFF=1
    fi
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

# --- first start: initdb + initial configuration ------------------------------------------------------
psql_local() { psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" "$@"; }

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
        die "the database is uninitialized and no superuser password is set: set POSTGRES_PASSWORD or
       POSTGRES_PASSWORD_FILE (or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without one)."
    fi
    log "initializing a new cluster in $PGDATA (superuser $POSTGRES_USER)"
    initdb_args=(--username="$POSTGRES_USER" --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust
                 --auth-host="$POSTGRES_HOST_AUTH_METHOD")
    # shellcheck disable=SC2206  # POSTGRES_INITDB_ARGS is a word-split option string, like upstream.
    initdb_args+=(${POSTGRES_INITDB_ARGS:-})
    if [[ -n "$POSTGRES_PASSWORD" ]]; then
        initdb --pwfile=<(printf '%s' "$POSTGRES_PASSWORD") "${initdb_args[@]}" >/dev/null
    else
        initdb "${initdb_args[@]}" >/dev/null
    fi

    case "$POSTGRES_HOST_AUTH_METHOD" in
        scram-sha-256) ;;
        trust) log "WARNING: POSTGRES_HOST_AUTH_METHOD=trust: every host connection is accepted without a password." ;;
        *) log "WARNING: POSTGRES_HOST_AUTH_METHOD=$POSTGRES_HOST_AUTH_METHOD: network logins not limited to SCRAM-SHA-256." ;;
    esac
    printf '\n# added by docker-entrypoint.sh\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" \
        >>"$PGDATA/pg_hba.conf"
    cat >>"$PGDATA/postgresql.conf" <<EOF

# added by docker-entrypoint.sh (command-line -c options take precedence)
listen_addresses = '*'
port = 5432
shared_preload_libraries = 'pg_cron'
cron.database_name = '$POSTGRES_DB'
# SCRAM verifiers only: a password set with ALTER ROLE ... PASSWORD is never stored as md5.
password_encryption = 'scram-sha-256'
EOF

    # Temporary server on the Unix socket only, for POSTGRES_DB and the init scripts.
    # (it gets the caller's server options too, so init scripts see the same settings, e.g. pg_cron).
    server_opts=""
    if [[ $# -gt 1 ]]; then server_opts=$(printf '%q ' "${@:2}"); fi
    pg_ctl -D "$PGDATA" -w -t 60 -o "$server_opts -c listen_addresses=''" start \
        || die "the temporary server for initialization did not start."
    if [[ "$POSTGRES_DB" != postgres ]]; then
        psql_local --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >/dev/null
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        # shellcheck disable=SC1090  # init scripts are the caller's
        case "$f" in
            *.sh) log "running $f"; if [[ -x "$f" ]]; then POSTGRES_PASSWORD=$POSTGRES_PASSWORD "$f"; else . "$f"; fi ;;
            *.sql) log "running $f"; psql_local --dbname "$POSTGRES_DB" -f "$f" >/dev/null ;;
            *) if [[ -e "$f" ]]; then log "ignoring $f"; fi ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    log "initialization complete."
else
    log "$PGDATA already holds a cluster (PG_VERSION $(<"$PGDATA/PG_VERSION")): skipping initialization."
fi

unset POSTGRES_PASSWORD
exec "$@"
