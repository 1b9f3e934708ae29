#!/usr/bin/env bash
# The Pulumi toolchain, built with the machine's Go (no registry reachable here serves Pulumi's
# binaries):
#   - the CLI + engine, from the pkg/v3 Go module (the proxy serves it);
#   - the dynamic-provider host, a script shipped in the sdk/v3 module;
#   - the Python language host and the docker, postgresql and random provider plugins, from the
#     upstream sources in ../shared/third_party (the proxy refuses those modules).
# Each binary is cached under $CACHE_ROOT keyed by its version and the hash of its sources, so a
# second run only checks. Plugins are installed the Pulumi way (`pulumi plugin install --file`).
# Writes one line per component to $STATUS_FILE: "<component> ok <detail>".
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# go.sum files are completed from the proxy (upstream's own builds do the same).
export GOFLAGS=-mod=mod

mkdir -p "$PULUMI_BIN_DIR" "$PLUGIN_BIN_DIR" "$BUILD_DIR"
: >"$STATUS_FILE"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$STATUS_FILE"; }

command -v go >/dev/null || die "Go is not installed; this machine kind ships it at /usr/local/go/bin/go"

# Fails at once, before any long build, when the upstream sources are not beside the clone.
check_third_party() {
  local missing=() d
  for d in pulumi-language-python/sdk/python/cmd/pulumi-language-python \
           pulumi-random/provider pulumi-yaml pulumi-dotnet/pulumi-language-dotnet \
           pulumi-postgresql/provider pulumi-postgresql/upstream pulumi-postgresql/patches \
           pulumi-docker/provider pulumi-docker/upstream pulumi-docker/patches; do
    [ -d "$THIRD_PARTY_DIR/$d" ] || missing+=("$d")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  die "the upstream sources of the Python language host and the provider plugins are missing:
  expected in $THIRD_PARTY_DIR (set CUSTOMER_INSIGHTS_THIRD_PARTY to another copy), lacking:
$(printf '    %s\n' "${missing[@]}")
  This machine kind cannot download them (the Go module proxy here refuses these modules).
  On a machine with internet, the official installer brings the CLI and language hosts
  (curl -fsSL https://get.pulumi.com | sh) and the CLI downloads the plugins on first use
  (pulumi plugin install resource docker $PULUMI_DOCKER_VERSION, postgresql $PULUMI_POSTGRESQL_VERSION, random $PULUMI_RANDOM_VERSION)."
}

# Content hash of source folders (paths and bytes), short: the cache key of what is built from them.
source_hash() {
  (cd "$THIRD_PARTY_DIR" && find "$@" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
    | { sha256sum; go version; } | sha256sum | cut -c1-16
}

# Copies read-only sources into a fresh writable build folder.
stage() { # dest sources...
  local dest=$1; shift
  rm -rf "$dest"; mkdir -p "$dest"
  (cd "$THIRD_PARTY_DIR" && cp -r --parents "$@" "$dest/")
  chmod -R u+w "$dest"
}

check_third_party

# --- The CLI ---------------------------------------------------------------------------------
build_cli() {
  local work="$BUILD_DIR/pulumi-cli-v$PULUMI_CLI_VERSION"
  mkdir -p "$work"
  # pkg/go.mod replaces sdk/v3 with ../sdk (relative: unusable from the module cache) and the
  # clipboard module with a fork; a wrapper module requiring both at the same version and
  # repeating the non-relative replace builds the same binary.
  cat >"$work/go.mod" <<GOMOD
module local/pulumi-cli-wrapper

go 1.26

require (
	github.com/pulumi/pulumi/pkg/v3 v$PULUMI_CLI_VERSION
	github.com/pulumi/pulumi/sdk/v3 v$PULUMI_CLI_VERSION
)

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
GOMOD
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"\n' >"$work/tools.go"
  info "resolving the module graph of pkg/v3@v$PULUMI_CLI_VERSION (a cold cache downloads ~1 GB)"
  (cd "$work" && with_heartbeat "resolving modules" go mod tidy) \
    || die "go mod tidy failed for the Pulumi CLI wrapper module in $work"
  info "compiling cmd/pulumi (about 4 minutes cold on 2 cores)"
  (cd "$work" && with_heartbeat "compiling the CLI" go build -trimpath \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_CLI_VERSION" \
    -o "$PULUMI_BIN_DIR/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) \
    || die "go build of the Pulumi CLI failed (see above)"
  mv "$PULUMI_BIN_DIR/pulumi.tmp" "$PULUMI_BIN_DIR/pulumi"
}

step "Pulumi CLI v$PULUMI_CLI_VERSION"
if [ -x "$PULUMI_BIN_DIR/pulumi" ] && "$PULUMI_BIN_DIR/pulumi" version 2>/dev/null | grep -qx "v$PULUMI_CLI_VERSION"; then
  info "cached: $PULUMI_BIN_DIR/pulumi"
else
  build_cli
  info "built $PULUMI_BIN_DIR/pulumi"
fi
record cli ok "$("$PULUMI_BIN_DIR/pulumi" version)"
PULUMI="$PULUMI_BIN_DIR/pulumi"

sdk_module_dir() {
  go mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_CLI_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

# --- Dynamic-provider host -------------------------------------------------------------------
step "Dynamic-provider host (pulumi-resource-pulumi-python)"
if [ ! -x "$PULUMI_BIN_DIR/pulumi-resource-pulumi-python" ]; then
  install -m 0755 "$(sdk_module_dir)/python/dist/pulumi-resource-pulumi-python" "$PULUMI_BIN_DIR/"
fi
info "ok: $PULUMI_BIN_DIR/pulumi-resource-pulumi-python"
record dynamic-provider-host ok "$PULUMI_BIN_DIR/pulumi-resource-pulumi-python"

# --- Python language host ----------------------------------------------------------------------
# main.go of the release tag, compiled against pkg/v3 and sdk/v3 at the CLI's version: its go.mod
# replaces both with folders of the pulumi repository, which are the CLI's modules here.
step "Python language host (pulumi-language-python v$PULUMI_LANGUAGE_PYTHON_SOURCE_VERSION, sdk v$PULUMI_CLI_VERSION)"
lh_src=pulumi-language-python/sdk/python/cmd/pulumi-language-python
lh_version="$PULUMI_LANGUAGE_PYTHON_SOURCE_VERSION+sdk$PULUMI_CLI_VERSION"
lh_key="$(source_hash "$lh_src")-cli$PULUMI_CLI_VERSION"
lh_stamp="$PULUMI_BIN_DIR/.pulumi-language-python.source"
if [ -x "$PULUMI_BIN_DIR/pulumi-language-python" ] && [ "$(cat "$lh_stamp" 2>/dev/null)" = "$lh_key" ]; then
  info "cached: $PULUMI_BIN_DIR/pulumi-language-python (sources $lh_key)"
else
  work="$BUILD_DIR/language-python"
  stage "$work" "$lh_src"
  (
    cd "$work/$lh_src"
    go mod edit -dropreplace github.com/pulumi/pulumi/pkg/v3 -dropreplace github.com/pulumi/pulumi/sdk/v3 \
      -require "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_CLI_VERSION" \
      -require "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_CLI_VERSION"
    with_heartbeat "resolving the language host's modules" go mod tidy
    with_heartbeat "compiling the language host" go build -trimpath \
      -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$lh_version" \
      -o "$PULUMI_BIN_DIR/pulumi-language-python.tmp" .
  ) || die "building the Python language host from $THIRD_PARTY_DIR/$lh_src failed (see above; build folder $work)"
  mv "$PULUMI_BIN_DIR/pulumi-language-python.tmp" "$PULUMI_BIN_DIR/pulumi-language-python"
  printf '%s\n' "$lh_key" >"$lh_stamp"
  info "built $PULUMI_BIN_DIR/pulumi-language-python"
fi
# The host runs the program through this script, which sits in the sdk/v3 module of the same version.
if [ ! -x "$PULUMI_BIN_DIR/pulumi-language-python-exec" ]; then
  install -m 0755 "$(sdk_module_dir)/python/cmd/pulumi-language-python-exec" "$PULUMI_BIN_DIR/"
fi
record language-host ok "v$lh_version"

# --- Provider plugins --------------------------------------------------------------------------
installed_plugin_path() { # name version -> where `pulumi plugin install` puts the binary
  printf '%s/plugins/resource-%s-v%s/pulumi-resource-%s' "${PULUMI_HOME:-$HOME/.pulumi}" "$1" "$2" "$1"
}

# Upstream's recipe (its Makefile): apply patches/ to the Terraform provider in upstream/, write
# schema-embed.json with the release version, build with the version linked in.
build_provider() { # name major version work
  local name=$1 major=$2 version=$3 work=$4 p
  if [ -d "$work/pulumi-$name/patches" ]; then
    for p in "$work/pulumi-$name/patches"/*.patch; do
      (cd "$work/pulumi-$name/upstream" && patch -s -p1 <"$p") || { warn "patch $(basename "$p") failed"; return 1; }
    done
  fi
  if [ "$name" = random ]; then
    # Two indirect modules at pseudo-versions the proxy refuses; their sources are in third_party.
    (cd "$work/pulumi-random/provider" && go mod edit \
      -replace "github.com/pulumi/pulumi-yaml=$work/pulumi-yaml" \
      -replace "github.com/pulumi/pulumi-dotnet/pulumi-language-dotnet/v3=$work/pulumi-dotnet/pulumi-language-dotnet") || return 1
  fi
  (cd "$work/pulumi-$name/provider/cmd/pulumi-resource-$name" && VERSION="$version" go run generate.go) || return 1
  (cd "$work/pulumi-$name/provider" && with_heartbeat "compiling pulumi-resource-$name (downloads its modules when cold)" \
    go build -trimpath \
      -ldflags "-s -w -X github.com/pulumi/pulumi-$name/provider/v$major/pkg/version.Version=$version" \
      -o "$work/pulumi-resource-$name" "./cmd/pulumi-resource-$name") || return 1
}

provider() { # name major version
  local name=$1 major=$2 version=$3 sources key binary installed work
  step "Provider plugin $name v$version"
  sources=("pulumi-$name")
  [ "$name" = random ] && sources+=(pulumi-yaml pulumi-dotnet)
  key=$(source_hash "${sources[@]}")
  binary="$PLUGIN_BIN_DIR/pulumi-resource-$name-v$version-$key"
  installed=$(installed_plugin_path "$name" "$version")
  if [ -x "$binary" ] && [ -x "$installed" ] && cmp -s "$binary" "$installed"; then
    info "cached and installed (sources $key)"
    record "plugin-$name" ok "v$version (sources $key)"; return
  fi
  if [ ! -x "$binary" ]; then
    work="$BUILD_DIR/provider-$name"
    stage "$work" "${sources[@]}"
    build_provider "$name" "$major" "$version" "$work" \
      || die "building the $name provider v$version from $THIRD_PARTY_DIR/pulumi-$name failed (see above; build folder $work)"
    rm -f "$PLUGIN_BIN_DIR/pulumi-resource-$name-v$version-"*
    mv "$work/pulumi-resource-$name" "$binary"
    rm -rf "$work"
  fi
  "$PULUMI" plugin rm resource "$name" "$version" --yes >/dev/null 2>&1 || true
  "$PULUMI" plugin install resource "$name" "$version" --file "$binary" \
    || die "pulumi plugin install resource $name $version --file $binary failed"
  record "plugin-$name" ok "v$version (sources $key)"
}

provider random 4 "$PULUMI_RANDOM_VERSION"
provider postgresql 3 "$PULUMI_POSTGRESQL_VERSION"
provider docker 5 "$PULUMI_DOCKER_VERSION"
