#!/usr/bin/env bash
# Installs what Parallax's builds, tests and demo need on a fresh Debian machine, or stops with
# the exact command to run. Sourced by scripts/test.sh and scripts/demo.sh; safe to run again.
set -euo pipefail

# command -> Debian package that provides it.
declare -A NEED=(
  [cmake]=cmake            # pingora-core builds libz-ng with it
  [curl]=curl              # the demo waits for its playlist with it; tests call the admin API
  [ffmpeg]=ffmpeg          # real publisher in tests
  [ffprobe]=ffmpeg         # segment validation in tests
  [python3]=python3        # a real, SIGSTOP-able origin process in the failover tests
  [redis-server]=redis-server  # the Redis-backed key-value store tests (proxy/tests/kv.rs)
)
if [ "${PARALLAX_TESTS:-0}" = 1 ]; then
  NEED[chromium]=chromium  # the player's end-to-end test (tests/player.rs, playwright-core)
  NEED[npm]=npm            # installs the player's pinned packages (player/package-lock.json)
fi
if [ "${PARALLAX_BENCH:-0}" = 1 ]; then
  NEED[nginx]=nginx; NEED[varnishd]=varnish; NEED[wrk]=wrk; NEED[h2load]=nghttp2-client
  NEED[pstree]=psmisc
fi

missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
if [ "${PARALLAX_BENCH:-0}" = 1 ] && [ ! -e /usr/lib/nginx/modules/ngx_rtmp_module.so ]; then
  missing+=(libnginx-mod-rtmp)
fi
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" = 0 ]; then
    echo "deps: installing $pkgs" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
  else
    echo "deps: missing packages. Run:  sudo apt-get install -y $pkgs" >&2
    exit 1
  fi
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2 >&2
fi

# The browser test drives Chromium with playwright-core, which needs Node.js 20 or newer
# (Debian 12's own nodejs is 18).
if [ "${PARALLAX_TESTS:-0}" = 1 ]; then
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$node_major" -lt 20 ]; then
    echo "deps: the browser test needs Node.js >= 20 (found $(node --version 2>/dev/null || echo none))." >&2
    echo "deps: install it, e.g.:  curl -fsSL https://deb.nodesource.com/setup_20.x | bash - && apt-get install -y nodejs" >&2
    exit 1
  fi
fi
