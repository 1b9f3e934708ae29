#!/usr/bin/env bash
# Bring up a local Docker engine on a machine without systemd. Idempotent:
#   - if `docker info` already answers, say so and exit 0;
#   - otherwise install Debian's docker.io (dockerd + containerd + runc) if dockerd is missing,
#     start dockerd in the background (log + pidfile), and wait until `docker info` answers.
#
# Environment knobs:
#   DOCKERD_LOG           dockerd log file        (default /var/log/dockerd.log)
#   DOCKERD_PIDFILE       dockerd pidfile         (default /var/run/docker.pid)
#   DOCKERD_WAIT_SECONDS  how long to wait        (default 60)
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
PIDFILE=${DOCKERD_PIDFILE:-/var/run/docker.pid}
WAIT_SECONDS=${DOCKERD_WAIT_SECONDS:-60}

say() { echo "[docker-engine] $*"; }
die() {
    echo "[docker-engine] ERROR: $*" >&2
    if [[ -s "$LOG" ]]; then
        echo "[docker-engine] --- last 40 lines of $LOG ---" >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}

engine_summary() {
    local fmt='server {{.ServerVersion}}, storage driver {{.Driver}}, cgroup {{.CgroupDriver}} v{{.CgroupVersion}}'
    say "engine: $(docker info --format "$fmt" 2>/dev/null || echo '?')"
    say "client: $(command -v docker) $(docker version --format \
        'client {{.Client.Version}} (API {{.Client.APIVersion}}) <-> server API {{.Server.APIVersion}}' \
        2>/dev/null || echo '?')"
}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    say "Docker engine already answering; nothing to do."
    engine_summary
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root to install and start dockerd (current uid $(id -u))."

# --- 1. install dockerd (Debian's docker.io) if missing -------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache policy docker.io 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        say "apt package lists do not know docker.io yet: apt-get update"
        apt-get update -q || die "apt-get update failed."
    fi
    say "installing docker.io (dockerd, containerd, runc) with apt-get"
    # Keep maintainer scripts from trying to start services: there is no init system here.
    policy_rc_d_added=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_rc_d_added=1
    fi
    rc=0
    apt-get install -y -q --no-install-recommends docker.io iptables || rc=$?
    [[ $policy_rc_d_added -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $rc -eq 0 ]] || die "apt-get install docker.io failed (exit $rc)."
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but no dockerd on PATH."
fi
say "dockerd: $(dockerd --version)"

# A client may already exist (e.g. a newer static one in /usr/local/bin that shadows Debian's
# /usr/bin/docker); modern clients negotiate the API version down to the daemon's, checked below.
command -v docker >/dev/null 2>&1 || die "no docker client on PATH (expected /usr/bin/docker from docker.io)."
say "docker client on PATH: $(command -v docker) ($(docker --version 2>/dev/null || echo '?'))"

# --- 2. start dockerd unless one is already running -----------------------------------------------
running_pid=""
if [[ -s "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    running_pid=$(cat "$PIDFILE")
    say "dockerd already running (pid $running_pid) but not answering yet; waiting for it."
else
    [[ -e "$PIDFILE" ]] && { say "removing stale pidfile $PIDFILE"; rm -f "$PIDFILE"; }
    mkdir -p "$(dirname "$LOG")"
    say "starting dockerd in the background (log: $LOG, pidfile: $PIDFILE)"
    {
        echo "=== dockerd started by bootstrap/docker-engine.sh at $(date -Is) ==="
    } >>"$LOG"
    # setsid: own session, so the daemon outlives this script and its caller's job control.
    setsid nohup dockerd --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
    running_pid=$!
    say "dockerd pid $running_pid"
fi

# --- 3. wait for the API -----------------------------------------------------------------------
start=$SECONDS
while :; do
    if docker info >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$running_pid" 2>/dev/null; then
        die "dockerd (pid $running_pid) exited before answering."
    fi
    elapsed=$((SECONDS - start))
    if ((elapsed >= WAIT_SECONDS)); then
        # Distinguish "daemon up but client cannot talk to it" from "daemon not up".
        if [[ -S /var/run/docker.sock ]] && [[ -x /usr/bin/docker ]] && /usr/bin/docker info >/dev/null 2>&1; then
            die "dockerd answers Debian's /usr/bin/docker but not $(command -v docker): " \
                "client/daemon API mismatch? try DOCKER_API_VERSION=$(/usr/bin/docker version --format '{{.Server.APIVersion}}') " \
                "or put /usr/bin first on PATH. $(docker info 2>&1 | tail -n 3)"
        fi
        die "dockerd did not answer 'docker info' within ${WAIT_SECONDS}s. Last client error: $(docker info 2>&1 | tail -n 3)"
    fi
    if ((elapsed % 5 == 0)); then
        say "waiting for dockerd to answer... ${elapsed}s/${WAIT_SECONDS}s"
    fi
    sleep 1
done
say "Docker engine is up after $((SECONDS - start))s."
engine_summary
