#!/usr/bin/env bash
# Pulumi CLI, dynamic-provider host, Python language host and provider plugins, built from their Go
# modules with the machine's Go (no registry here serves Pulumi's binaries). Idempotent: binaries
# are cached under $CACHE_ROOT keyed by version, so a second run only checks them.
#
# Writes one line per component to $STATUS_FILE: "<component> ok|blocked <detail>".
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$PULUMI_BIN_DIR" "$PLUGIN_BIN_DIR"
: >"$STATUS_FILE"
# Errors quote the proxy's URL: keep host names out of logs and notes.
redact() { sed -E 's#https?://[^/ ]+#<GOPROXY>#g'; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$(printf '%s' "$3" | redact)" >>"$STATUS_FILE"; }

command -v go >/dev/null || die "Go is not installed; this machine kind ships it at /usr/local/go/bin/go"

# --- The CLI ---------------------------------------------------------------------------------
build_cli() {
  local work="$CACHE_ROOT/build/pulumi-cli-v$PULUMI_CLI_VERSION"
  mkdir -p "$work"
  # pkg/go.mod replaces sdk/v3 with ../sdk (relative: unusable from the module cache) and the
  # clipboard module with a fork; a wrapper module requiring both at the same version and
  # repeating the non-relative replace builds the same binary.
  cat >"$work/go.mod" <<EOF
module local/pulumi-cli-wrapper

go 1.26

require (
	github.com/pulumi/pulumi/pkg/v3 v$PULUMI_CLI_VERSION
	github.com/pulumi/pulumi/sdk/v3 v$PULUMI_CLI_VERSION
)

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
EOF
  cat >"$work/tools.go" <<'EOF'
//go:build tools

package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
EOF
  info "resolving the module graph of pkg/v3@v$PULUMI_CLI_VERSION (first run downloads ~1 GB of modules)"
  (cd "$work" && go mod tidy) || die "go mod tidy failed for the Pulumi CLI wrapper module in $work"
  info "compiling cmd/pulumi (about 4 minutes cold on 2 cores)"
  (cd "$work" && go build -trimpath \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_CLI_VERSION" \
    -o "$PULUMI_BIN_DIR/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) \
    || die "go build of the Pulumi CLI failed (see above)"
  mv "$PULUMI_BIN_DIR/pulumi.tmp" "$PULUMI_BIN_DIR/pulumi"
}

step "Pulumi CLI v$PULUMI_CLI_VERSION"
if [ -x "$PULUMI_BIN_DIR/pulumi" ] && "$PULUMI_BIN_DIR/pulumi" version 2>/dev/null | grep -qx "v$PULUMI_CLI_VERSION"; then
  info "cached: $PULUMI_BIN_DIR/pulumi"
elif command -v pulumi >/dev/null && pulumi version 2>/dev/null | grep -qx "v$PULUMI_CLI_VERSION"; then
  ln -sf "$(command -v pulumi)" "$PULUMI_BIN_DIR/pulumi"
  info "using the installed $(command -v pulumi)"
else
  build_cli
  info "built $PULUMI_BIN_DIR/pulumi"
fi
record cli ok "$("$PULUMI_BIN_DIR/pulumi" version)"

# --- Dynamic-provider host -------------------------------------------------------------------
step "Dynamic-provider host (pulumi-resource-pulumi-python)"
if [ ! -x "$PULUMI_BIN_DIR/pulumi-resource-pulumi-python" ]; then
  sdk_dir=$(go mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_CLI_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$PULUMI_BIN_DIR/"
fi
info "ok: $PULUMI_BIN_DIR/pulumi-resource-pulumi-python"
record dynamic-provider-host ok "$PULUMI_BIN_DIR/pulumi-resource-pulumi-python"

# --- Python language host ----------------------------------------------------------------------
# Its module (sdk/python/cmd/pulumi-language-python/v3) has no tags: it can only be fetched as a
# pseudo-version of the release commit, which the proxy reports as Origin.Hash of sdk/v3@vX.
step "Python language host (pulumi-language-python)"
if command -v pulumi-language-python >/dev/null || [ -x "$PULUMI_BIN_DIR/pulumi-language-python" ]; then
  info "present"
  record language-host ok "present"
else
  lh_module=github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3
  sdk_info=$(go mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_CLI_VERSION")
  lh_commit=$(printf '%s' "$sdk_info" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("Origin",{}).get("Hash",""))')
  lh_time=$(printf '%s' "$sdk_info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Info"])' | xargs cat \
    | python3 -c 'import json,sys; t=json.load(sys.stdin)["Time"]; print(t.replace("-","").replace(":","").replace("T","")[:14])')
  if [ -z "$lh_commit" ]; then
    attempt="go mod download -json $lh_module@latest"
  else
    attempt="go mod download -json $lh_module@v3.0.0-$lh_time-${lh_commit:0:12}"
  fi
  if out=$($attempt 2>&1) && lh_dir=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' 2>/dev/null); then
    work="$CACHE_ROOT/build/language-host"; rm -rf "$work"; cp -r "$lh_dir" "$work"; chmod -R u+w "$work"
    (cd "$work" && go mod edit -dropreplace github.com/pulumi/pulumi/sdk/v3 \
      -require "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_CLI_VERSION" && go mod tidy \
      && go build -o "$PULUMI_BIN_DIR/pulumi-language-python" \
        -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_CLI_VERSION" .)
    record language-host ok "built from $lh_module"
  else
    reason=$(printf '%s' "$out" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("Error","").replace("\n"," "))
except Exception: print(sys.stdin.read())' 2>/dev/null || true)
    [ -n "$lh_commit" ] || reason="the proxy reports no Origin.Hash for sdk/v3@v$PULUMI_CLI_VERSION, and the module has no tags: $reason"
    warn "BLOCKED: $attempt -> $(printf '%s' "$reason" | redact)"
    info "The Automation API still works: Pulumi's Python SDK serves inline programs itself (scripts/stack.py)."
    record language-host blocked "$attempt -> $reason"
  fi
fi

# --- Provider plugins --------------------------------------------------------------------------
plugin_installed() { # name version
  "$PULUMI_BIN_DIR/pulumi" plugin ls --json 2>/dev/null | python3 -c '
import json, sys
name, version = sys.argv[1], sys.argv[2]
sys.exit(0 if any(p["name"] == name and p["kind"] == "resource" and p["version"] == version
                  for p in json.load(sys.stdin) or []) else 1)' "$1" "$2"
}

# The provider repositories have no provider/vX tags: the provider/ module can only be fetched as a
# pseudo-version of the release commit. Its timestamp is the commit time, which the proxy reports
# for the repository's root module at the release tag (+incompatible: the root has no go.mod).
provider_pseudo_version() { # repo major version commit
  local info time
  info=$(curl -fsS -m 60 2>/dev/null "$(go env GOPROXY | cut -d, -f1)/github.com/pulumi/$1/@v/v$3+incompatible.info") || return 1
  time=$(printf '%s' "$info" | python3 -c '
import json, sys
info = json.load(sys.stdin)
if info.get("Origin", {}).get("Hash", sys.argv[1]) != sys.argv[1]:
    sys.exit("release tag points at another commit: " + info["Origin"]["Hash"])
print(info["Time"].replace("-", "").replace(":", "").replace("T", "")[:14])' "$4") || return 1
  printf 'v%s.0.0-%s-%s' "$2" "$time" "${4:0:12}"
}

# docker and postgresql additionally replace their Terraform upstream with ../upstream, a git
# submodule that is in no module zip: that step is not reached here (see README, "Blocked").
# Builds from a writable scratch copy: cmd/pulumi-resource-X embeds schema-embed.json, which
# generate.go writes from schema.json with VERSION set, and the module cache is read-only.
build_provider() { # name module_dir module_path version
  local name=$1 src=$2 module=$3 version=$4 work="$CACHE_ROOT/build/provider-$1-v$4"
  rm -rf "$work"; cp -r "$src" "$work"; chmod -R u+w "$work"
  (cd "$work/cmd/pulumi-resource-$name" && VERSION="v$version" go run generate.go) || return 1
  (cd "$work" && go build -trimpath -ldflags "-s -w -X $module/pkg/version.Version=v$version" \
    -o "$PLUGIN_BIN_DIR/pulumi-resource-$name-v$version" "./cmd/pulumi-resource-$name") || return 1
}

provider() { # name repo major version commit
  local name=$1 repo=$2 major=$3 version=$4 commit=$5 module pseudo out dir binary
  module="github.com/pulumi/$repo/provider/v$major"
  binary="$PLUGIN_BIN_DIR/pulumi-resource-$name-v$version"
  step "Provider plugin $name v$version"
  if plugin_installed "$name" "$version"; then
    info "installed"; record "plugin-$name" ok "installed"; return
  fi
  if [ ! -x "$binary" ]; then
    if ! pseudo=$(provider_pseudo_version "$repo" "$major" "$version" "$commit"); then
      warn "BLOCKED: cannot resolve the release commit time of $repo v$version"
      record "plugin-$name" blocked "release commit time of $repo v$version not resolvable"; return
    fi
    info "fetching $module@$pseudo"
    if ! out=$(go mod download -json "$module@$pseudo" 2>&1) \
       || ! dir=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' 2>/dev/null); then
      out=$(printf '%s' "$out" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("Error","").replace("\n"," "))
except Exception: pass')
      warn "BLOCKED: go mod download -json $module@$pseudo -> $(printf '%s' "$out" | redact)"
      info "A prebuilt binary can be installed instead: copy it to $binary and re-run."
      record "plugin-$name" blocked "go mod download -json $module@$pseudo -> $out"; return
    fi
    build_provider "$name" "$dir" "$module" "$version" || {
      record "plugin-$name" blocked "build from $module@$pseudo failed (see log)"; return; }
  fi
  "$PULUMI_BIN_DIR/pulumi" plugin install resource "$name" "$version" --file "$binary"
  record "plugin-$name" ok "installed from $binary"
}

provider random pulumi-random 4 "$PULUMI_RANDOM_VERSION" "$PULUMI_RANDOM_COMMIT"
provider postgresql pulumi-postgresql 3 "$PULUMI_POSTGRESQL_VERSION" "$PULUMI_POSTGRESQL_COMMIT"
provider docker pulumi-docker 5 "$PULUMI_DOCKER_VERSION" "$PULUMI_DOCKER_COMMIT"
