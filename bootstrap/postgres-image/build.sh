#!/usr/bin/env bash
# Build customer-insights/postgres-cron:15 offline, in two steps:
#   1. base: a Debian bookworm rootfs made by mmdebstrap from the machine's own apt mirror (read from
#      its apt sources at run time) with postgresql-15 + postgresql-15-cron, turned into an image by
#      `docker import` (tagged customer-insights/postgres-cron-rootfs:15-<sha12>);
#   2. final: `docker build` FROM that base, adding docker-entrypoint.sh and the image config (ENV,
#      VOLUME, EXPOSE, ENTRYPOINT, CMD, STOPSIGNAL: `docker import --change` cannot set STOPSIGNAL).
# Each is tagged with a hash of its inputs and skipped ("cached") when that tag already exists, so
# editing only the entrypoint rebuilds only the thin final layer. FORCE_REBUILD=1 builds anyway.
# WITH_JIT=1 keeps PostgreSQL's LLVM JIT (libLLVM, z3, bitcode: ~150 MB); by default it is left out
# and the server simply reports pg_jit_available() = false.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE=${IMAGE:-customer-insights/postgres-cron}
BASE_IMAGE=${BASE_IMAGE:-$IMAGE-rootfs}
PG_MAJOR=15
SUITE=bookworm
PACKAGES=("postgresql-$PG_MAJOR" "postgresql-$PG_MAJOR-cron")
LABEL_KEY=customer-insights.build-inputs-sha256
WITH_JIT=${WITH_JIT:-0}

step() { echo "[postgres-image] $*"; }
die() { echo "[postgres-image] ERROR: $*" >&2; exit 1; }
t0=$SECONDS

# --- 0. engine ---------------------------------------------------------------------------------------
step "checking the Docker engine"
docker info >/dev/null 2>&1 || die "'docker info' fails: no Docker engine. Run bootstrap/docker-engine.sh first."

# --- 1. mirror lines from this machine's apt sources (never hard-coded) ------------------------------
# Prints "URI SUITE SIGNED_BY" for every deb source of $SUITE, $SUITE-updates and $SUITE-security.
apt_sources() {
    local f
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        awk -v want="$SUITE" '
            function flush(   i, n, s, u) {
                if (types ~ /(^| )deb( |$)/ && uris != "") {
                    n = split(suites, s, " ")
                    split(uris, u, " ")
                    for (i = 1; i <= n; i++)
                        if (s[i] == want || s[i] == want "-updates" || s[i] == want "-security")
                            print u[1], s[i], (signed == "" ? "-" : signed)
                }
                types = uris = suites = signed = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:"     { $1 = ""; types = $0 }
            tolower($1) == "uris:"      { $1 = ""; uris = $0 }
            tolower($1) == "suites:"    { $1 = ""; suites = $0 }
            tolower($1) == "signed-by:" { signed = $2 }
            END { flush() }
        ' "$f" | sed 's/^ *//'
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk -v want="$SUITE" '
            $1 == "deb" {
                line = $0; signed = "-"
                if (match(line, /\[[^\]]*\]/)) {   # [opt=val ...] block
                    opts = substr(line, RSTART + 1, RLENGTH - 2)
                    line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH)
                    if (match(opts, /signed-by=[^ ]+/)) signed = substr(opts, RSTART + 10, RLENGTH - 10)
                }
                sub(/^[ \t]+/, "", line)
                split(line, f, /[ \t]+/)
                if (f[3] == want || f[3] == want "-updates" || f[3] == want "-security") print f[2], f[3], signed
            }' "$f"
    done
    shopt -u nullglob
}

step "reading the Debian mirror from this machine's apt sources"
mapfile -t SOURCES < <(apt_sources | awk '!seen[$1" "$2]++')
((${#SOURCES[@]} > 0)) || die "no 'deb' source for $SUITE in /etc/apt/sources.list{,.d/*.sources,.d/*.list}."
printf '%s\n' "${SOURCES[@]}" | awk '{print $2}' | grep -qx "$SUITE" \
    || die "the apt sources have no '$SUITE' suite itself (found: $(printf '%s ' "${SOURCES[@]}"))."
MIRRORS=()
for line in "${SOURCES[@]}"; do
    read -r uri suite signed <<<"$line"
    opt=""
    [[ $signed != - && -r $signed ]] && opt="[signed-by=$signed] "
    MIRRORS+=("deb ${opt}${uri} ${suite} main")
    step "  suite $suite"
done
printf '%s\n' "${SOURCES[@]}" | awk '{print $2}' | grep -qx "$SUITE-security" \
    || step "  (no $SUITE-security in the apt sources: building without it)"

# --- 2. content hashes of the build inputs -----------------------------------------------------------
# The final image's Dockerfile is generated here, so that it is part of the hashed inputs.
dockerfile() {
    cat <<EOF
FROM $BASE_IMAGE:$BASE_TAG
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/lib/postgresql/$PG_MAJOR/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PG_MAJOR=$PG_MAJOR \\
    LANG=C.UTF-8 \\
    PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
LABEL $LABEL_KEY=$INPUT_HASH
EOF
}
sha() { sha256sum | awk '{print $1}'; }
BASE_HASH=$({ sha <"$HERE/build.sh"; printf '%s\n' "${MIRRORS[@]}" "${PACKAGES[@]}" "jit=$WITH_JIT"; } | sha)
BASE_TAG="$PG_MAJOR-${BASE_HASH:0:12}"
INPUT_HASH=$({ echo "$BASE_HASH"; sha <"$HERE/docker-entrypoint.sh"; } | sha)
HASH_TAG="$PG_MAJOR-${INPUT_HASH:0:12}"
step "build-input hash ${INPUT_HASH:0:12} -> $IMAGE:$HASH_TAG (base $BASE_IMAGE:$BASE_TAG)"

have_image() { [[ ${FORCE_REBUILD:-0} != 1 ]] && docker image inspect "$1" >/dev/null 2>&1; }

if have_image "$IMAGE:$HASH_TAG"; then
    docker tag "$IMAGE:$HASH_TAG" "$IMAGE:$PG_MAJOR"
    step "cached: $IMAGE:$HASH_TAG already exists (tagged $IMAGE:$PG_MAJOR too); nothing to build."
    exit 0
fi

WORK=$(mktemp -d /var/tmp/postgres-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- 3. base image: mmdebstrap rootfs + docker import -----------------------------------------------
if have_image "$BASE_IMAGE:$BASE_TAG"; then
    step "base image $BASE_IMAGE:$BASE_TAG: cached"
else
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-cache policy mmdebstrap 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            step "apt package lists do not know mmdebstrap yet: apt-get update"
            apt-get update -q || die "apt-get update failed."
        fi
        step "installing mmdebstrap with apt-get"
        apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null \
            || die "apt-get install mmdebstrap failed."
    fi

    ROOTFS_TAR="$WORK/rootfs.tar"
    JIT_EXCLUDES=()
    if [[ $WITH_JIT != 1 ]]; then
        step "leaving out the LLVM JIT (WITH_JIT=1 keeps it)"
        JIT_EXCLUDES=(--dpkgopt='path-exclude=/usr/lib/*/libLLVM-*' --dpkgopt='path-exclude=/usr/lib/*/libz3.so*'
                      --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/llvmjit*'
                      --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/bitcode/*')
    fi
    step "building the $SUITE rootfs with mmdebstrap (minbase + ${PACKAGES[*]}); about a minute"
    s=$SECONDS
    # essential-hook runs before the extra packages are installed: no default 'main' cluster (the
    # entrypoint makes one in $PGDATA). customize-hook prepares the directories and trims the tree.
    # shellcheck disable=SC2016  # $1 (the rootfs path) is expanded by mmdebstrap's hook shell.
    mmdebstrap \
        --variant=minbase \
        --mode=root \
        --format=tar \
        --include="$(IFS=,; echo "${PACKAGES[*]}")" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        "${JIT_EXCLUDES[@]}" \
        --essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" &&
            echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/no-main-cluster.conf"' \
        --customize-hook='set -e
            rm -rf "$1"/var/lib/postgresql/*/main "$1"/etc/postgresql/*/main
            mkdir -p "$1/docker-entrypoint-initdb.d" "$1/var/lib/postgresql/data" "$1/var/run/postgresql"
            chroot "$1" chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql
            chmod 0700 "$1/var/lib/postgresql/data"
            chmod 2775 "$1/var/run/postgresql"
            rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*.log "$1"/var/log/apt/*' \
        "$SUITE" "$ROOTFS_TAR" "${MIRRORS[@]}" >"$WORK/mmdebstrap.log" 2>&1 \
        || { tail -n 40 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed (log tail above)."; }
    step "rootfs done in $((SECONDS - s))s: $(du -h "$ROOTFS_TAR" | cut -f1) tar"

    step "importing the rootfs as $BASE_IMAGE:$BASE_TAG"
    s=$SECONDS
    docker import \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/lib/postgresql/$PG_MAJOR/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "LABEL $LABEL_KEY=$BASE_HASH" \
        --message "Debian $SUITE minbase + ${PACKAGES[*]} (bootstrap/postgres-image/build.sh)" \
        "$ROOTFS_TAR" "$BASE_IMAGE:$BASE_TAG" >/dev/null || die "docker import of the rootfs failed."
    rm -f "$ROOTFS_TAR"
    step "imported in $((SECONDS - s))s"
fi

# --- 4. final image: docker build FROM the base -------------------------------------------------------
step "building $IMAGE:$HASH_TAG (entrypoint + image config) with docker build"
s=$SECONDS
mkdir -p "$WORK/context"
install -m 0755 "$HERE/docker-entrypoint.sh" "$WORK/context/docker-entrypoint.sh"
dockerfile >"$WORK/context/Dockerfile"
# DOCKER_BUILDKIT=0: the classic builder, which needs no buildx plugin; the base image is local only.
DOCKER_BUILDKIT=0 docker build --tag "$IMAGE:$HASH_TAG" "$WORK/context" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log" >&2; die "docker build of the final image failed (output above)."; }
docker tag "$IMAGE:$HASH_TAG" "$IMAGE:$PG_MAJOR" || die "docker tag failed."
step "docker build done in $((SECONDS - s))s"

# Drop the tags of earlier builds (other input hashes) so old images do not pile up.
prune_stale_tags() {  # $1 = repository, $2 = the tag to keep
    local ref
    for ref in $(docker image ls --format '{{.Repository}}:{{.Tag}}' "$1"); do
        [[ $ref == "$1:$PG_MAJOR-"* && $ref != "$1:$2" ]] || continue
        if docker rmi "$ref" >/dev/null 2>&1; then step "removed stale $ref"; else step "kept stale $ref (in use)"; fi
    done
}
prune_stale_tags "$IMAGE" "$HASH_TAG"
prune_stale_tags "$BASE_IMAGE" "$BASE_TAG"

# --- 5. smoke check + summary ------------------------------------------------------------------------
# shellcheck disable=SC2016  # expanded by the container's shell
versions=$(docker run --rm --entrypoint sh "$IMAGE:$HASH_TAG" -c \
    'postgres --version && pg_isready --version && dpkg-query -W -f "\${Package} \${Version}\n" postgresql-$PG_MAJOR-cron') \
    || die "smoke check (postgres --version in the new image) failed."
step "image contains: $(echo "$versions" | tr '\n' ';' | sed 's/;$//')"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE:$HASH_TAG")
step "built $IMAGE:$PG_MAJOR = $IMAGE:$HASH_TAG, $((size / 1000 / 1000)) MB, in $((SECONDS - t0))s"
