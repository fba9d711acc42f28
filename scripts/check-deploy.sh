#!/usr/bin/env bash
# Checks the deployment files (docs/deployment.md): the CloudFormation template with cfn-lint
# (any finding fails, informational ones included), the instance bootstrap in its UserData
# (bash -n, and the proxy.toml it writes through `proxy --test` once a proxy is built), and the
# systemd units with systemd-analyze verify when systemd is installed. Run by scripts/test.sh
# before cargo test; runs alone too: bash scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CFN_LINT_VERSION=1.51.0
TEMPLATE=deploy/cloudformation/parallax-fleet.yaml
UNITS=(deploy/systemd/parallax-proxy.service deploy/systemd/parallax-origin.service)

command -v python3 >/dev/null 2>&1 || {
  echo "check-deploy: python3 is missing. Run:  sudo apt-get install -y python3" >&2
  exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- cfn-lint: the one on PATH, else cfn-lint==$CFN_LINT_VERSION in a venv under target/tools.
cfn_lint=$(command -v cfn-lint || true)
if [ -z "$cfn_lint" ]; then
  venv=target/tools/cfn-lint
  cfn_lint=$venv/bin/cfn-lint
  if ! "$cfn_lint" --version 2>/dev/null | grep -qx "cfn-lint $CFN_LINT_VERSION"; then
    # Debian's python3 creates venvs only with python3-venv (ensurepip) installed.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      if [ "$(id -u)" = 0 ]; then
        echo "check-deploy: installing python3-venv" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      else
        echo "check-deploy: python3 cannot create a venv for cfn-lint." \
          "Run:  sudo apt-get install -y python3-venv" >&2
        exit 1
      fi
    fi
    echo "check-deploy: installing cfn-lint $CFN_LINT_VERSION into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
  fi
fi
echo "check-deploy: $("$cfn_lint" --version) on $TEMPLATE"
if ! "$cfn_lint" --include-checks I -- "$TEMPLATE"; then
  echo "check-deploy: cfn-lint findings in $TEMPLATE (above)" >&2
  exit 1
fi

# --- The UserData bootstrap, rendered as CloudFormation would (Fn::Sub with sample values):
# shell syntax, then the part that writes proxy.toml, run for real into $tmp.
render() { # render OUT BACKUP STALE METRICS_HOST
  python3 - "$TEMPLATE" "$@" <<'PY'
import re, sys
template, out, backup, stale, metrics_host = sys.argv[1:6]
lines = open(template).read().split("\n")
start = next(i for i, l in enumerate(lines) if "Fn::Base64: !Sub" in l) + 2  # past "- |"
indent = len(lines[start]) - len(lines[start].lstrip())
body = []
for line in lines[start:]:
    if line.strip() and len(line) - len(line.lstrip()) < indent:
        break
    body.append(line[indent:])
values = {
    "AWS::StackName": "parallax-check", "AWS::Region": "us-east-1",
    "ProxySecrets": "arn:aws:secretsmanager:us-east-1:123456789012:secret:parallax-check-AbCdEf",
    "ArtifactBucket": "parallax-artifacts", "ArtifactKey": "proxy/0123abc/parallax-proxy.tar.gz",
    "ProxyPort": "8080", "CacheMaxBytes": "4294967296", "DrainSeconds": "30",
    "MetricsHost": metrics_host, "OriginProtectionHeader": "x-origin-verify",
    "LogFilter": "info,access=off", "PrimaryOrigin": "127.0.0.1:8081",
    "BackupSection": '  [upstreams.backup]\n  address = "127.0.0.1:8082"\n',
    "StaleSection": '  [upstreams.stale_playlist]\n  path = "/live/main/index.m3u8"\n',
}
if backup != "yes":
    values["BackupSection"] = ""
if stale != "yes":
    values["StaleSection"] = ""
def sub(m):
    name = m.group(1)
    if name.startswith("!"):
        return "${" + name[1:] + "}"
    if name not in values:
        sys.exit(f"check-deploy: UserData uses ${{{name}}}: add a sample value to check-deploy.sh")
    return values[name]
open(out, "w").write(re.sub(r"\$\{([!A-Za-z0-9_:.]+)\}", sub, "\n".join(body)))
PY
}
# The newest proxy built (cargo test builds target/debug/proxy), if any.
proxy_bin=""
for candidate in target/debug/proxy target/release/proxy; do
  if [ -x "$candidate" ] && { [ -z "$proxy_bin" ] || [ "$candidate" -nt "$proxy_bin" ]; }; then
    proxy_bin=$candidate
  fi
done
check_userdata() { # check_userdata BACKUP STALE METRICS_HOST ADMIN_TOKEN REDIS_URL PREVIOUS_SECRETS
  render "$tmp/userdata.sh" "$1" "$2" "$3"
  bash -n "$tmp/userdata.sh" || { echo "check-deploy: UserData: shell syntax errors" >&2; exit 1; }
  # From `conf=` up to `chgrp`: the heredoc and the optional sections, with the boot's variables.
  sed -n '/^conf=/,/^chgrp /p' "$tmp/userdata.sh" | sed '$d' |
    sed "s|^conf=.*|conf=$tmp/proxy.toml|" > "$tmp/write-config.sh"
  rm -f "$tmp/proxy.toml.new"
  protection_secret=0123456789abcdef0123456789abcdef admin_token=$4 redis_url=$5 \
    previous_secrets=$6 \
    bash -euo pipefail -c 'source "$1"' _ "$tmp/write-config.sh" ||
    { echo "check-deploy: UserData: writing proxy.toml failed" >&2; exit 1; }
  [ -n "$proxy_bin" ] || return 0
  # --upgrade: no check that the listen ports are free (this machine may be using them).
  local out
  if ! out=$("$proxy_bin" --test --upgrade --config "$tmp/proxy.toml.new" 2>&1); then
    printf '%s\n' "$out" >&2
    echo "check-deploy: $proxy_bin rejects the proxy.toml the UserData writes:" >&2
    cat "$tmp/proxy.toml.new" >&2
    exit 1
  fi
}
check_userdata yes yes 0.0.0.0 admin-token-0123456789 redis://127.0.0.1:1/0 \
  '"fedcba9876543210fedcba9876543210"'                                # every option
check_userdata no no 127.0.0.1 "" "" ""                                # the minimum
if [ -n "$proxy_bin" ]; then
  echo "check-deploy: UserData: bash -n ok; the proxy.toml it writes passes $proxy_bin --test"
else
  echo "check-deploy: UserData: bash -n ok; its proxy.toml not checked (no target/*/proxy yet)"
fi

# --- systemd units: systemd-analyze verify in a scratch root holding the distribution's units,
# ours, and a stub for each program they run (installed on the target, not here). Any line
# about our units fails the check, warnings included.
verify_units() {
  local root=$tmp/root names=() unit out ours name
  mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
  cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
  if [ -d /lib/systemd/system ] && [ ! /lib -ef /usr/lib ]; then
    mkdir -p "$root/lib/systemd" && cp -r /lib/systemd/system "$root/lib/systemd/"
  fi
  for unit in "${UNITS[@]}"; do
    cp "$unit" "$root/etc/systemd/system/"
    names+=("$(basename "$unit")")
    grep -E '^Exec[A-Za-z]*=' "$unit" | sed -E 's/^[^=]*=[-@:+!]*//; s/[[:space:]].*//' |
      while read -r program; do
        mkdir -p "$root$(dirname "$program")"
        printf '#!/bin/sh\n' > "$root$program" && chmod +x "$root$program"
      done
  done
  out=$(systemd-analyze verify --man=no --root="$root" "${names[@]}" 2>&1) || true
  ours=$(printf '%s\n' "$out" | grep -F -e parallax- || true)
  if [ -n "$ours" ]; then
    printf '%s\n' "$ours" >&2
    echo "check-deploy: systemd-analyze verify: findings in the units (above)" >&2
    exit 1
  fi
  [ -z "$out" ] || printf 'check-deploy: systemd-analyze, not about our units:\n%s\n' "$out"
  echo "check-deploy: systemd-analyze verify ok: ${names[*]}"
  for name in "${names[@]}"; do
    systemd-analyze security --offline=true --root="$root" "$name" 2>/dev/null | tail -n 1 |
      sed "s/^/check-deploy: /" || true
  done
}
if command -v systemd-analyze >/dev/null 2>&1; then
  verify_units
else
  echo "check-deploy: systemd-analyze not installed: systemd units not verified (package systemd)"
fi
echo "check-deploy: ok"
