#!/usr/bin/env bash
# The whole Parallax system on this machine, on loopback:
#   built-in test source ──RTMP──▶ origin A ─┐
#                        └─RTMP──▶ origin B ─┴─▶ proxy ──▶ player (/player/), curl, ffplay…
# The proxy has two upstream groups, region "eu" (A primary, B backup) and "us" (B primary,
# A backup), and runs the three shipped policy modules: region-steer (close a region through
# the admin API and viewers move), playlist-rewrite (absolute segment URIs, computed once
# before the cache) and token-auth (loaded; in the chain with DEMO_TOKEN_AUTH=1, which prints a
# signed URL). Prints the URLs; Ctrl-C stops everything. Every run starts from an empty data dir.
#
# Settings (environment): PARALLAX_DEMO_DIR (data, default /tmp/parallax-demo), DEMO_HOST
# (bind address, default 127.0.0.1), PUBLIC_URL (how viewers reach the proxy, default
# http://DEMO_HOST:PROXY_PORT), PROXY_PORT (8080), ADMIN_PORT (9090), METRICS_PORT (9091),
# ORIGIN_A_HTTP (8081), ORIGIN_B_HTTP (8082), ORIGIN_A_RTMP (1935), ORIGIN_B_RTMP (1936),
# ADMIN_TOKEN (random), DEMO_TOKEN_AUTH (0), DEMO_PROFILE (release, or debug), DEMO_BIN (a
# directory holding already built proxy and origin binaries: no cargo build; tests/demo.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

DIR=${PARALLAX_DEMO_DIR:-/tmp/parallax-demo}
HOST=${DEMO_HOST:-127.0.0.1}
PROXY_PORT=${PROXY_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9090}
METRICS_PORT=${METRICS_PORT:-9091}
A_HTTP=${ORIGIN_A_HTTP:-8081}
B_HTTP=${ORIGIN_B_HTTP:-8082}
A_RTMP=${ORIGIN_A_RTMP:-1935}
B_RTMP=${ORIGIN_B_RTMP:-1936}
ADMIN_TOKEN=${ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
PUBLIC_URL=${PUBLIC_URL:-http://$HOST:$PROXY_PORT}
TOKEN_AUTH=${DEMO_TOKEN_AUTH:-0}
PROFILE=${DEMO_PROFILE:-release}
case "$PROFILE" in
  release) profile_flag=(--release) ;;
  debug) profile_flag=() ;;
  *) echo "demo: DEMO_PROFILE must be release or debug" >&2; exit 2 ;;
esac

if [ -n "${DEMO_BIN:-}" ]; then
  BIN=$DEMO_BIN
else
  echo "demo: building ($PROFILE)…" >&2
  cargo build "${profile_flag[@]}" --locked -q -p parallax-origin -p parallax-proxy
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE"
fi
# The policy modules are WebAssembly components; same target dir as the tests' guest builds.
GUESTS="$PWD/target/wasm-guests"
cargo build --release --locked -q --target wasm32-wasip2 --target-dir "$GUESTS" \
  -p token-auth -p region-steer -p playlist-rewrite

rm -rf "$DIR"
mkdir -p "$DIR"
PIDS=()
stop() {
  trap - INT TERM EXIT
  echo >&2; echo "demo: stopping…" >&2
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

source scripts/lib.sh
listening() { # port...: every one accepts, or stop pointing at the logs
  for port in "$@"; do
    wait_port "$HOST" "$port" || { echo "demo: see $DIR/*.log" >&2; exit 1; }
  done
}
urlencode() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

origin() { # name rtmp_port http_port
  cat > "$DIR/origin-$1.toml" <<EOF
data_dir = "$DIR/origin-$1"
[rtmp]
listen = "$HOST:$2"
[http]
listen = "$HOST:$3"
EOF
  "$BIN/origin" --config "$DIR/origin-$1.toml" > "$DIR/origin-$1.log" 2>&1 &
  PIDS+=($!)
}
origin a "$A_RTMP" "$A_HTTP"
origin b "$B_RTMP" "$B_HTTP"
listening "$A_RTMP" "$B_RTMP" "$A_HTTP" "$B_HTTP"

# The encoder pushes the same output to both origins, as operators configure OBS/FFmpeg, and
# reconnects when an origin drops it (as OBS does), e.g. during the failover drill below.
publish() {
  trap 'kill -TERM $child 2>/dev/null; exit 0' TERM
  while true; do
    "$BIN/origin" publish "rtmp://$HOST:$1/live/demo" >> "$DIR/publisher-$1.log" 2>&1 & child=$!
    wait $child || true
    sleep 1
  done
}
for port in "$A_RTMP" "$B_RTMP"; do
  publish "$port" &
  PIDS+=($!)
done

# The policy modules, installed the way operators do: copied into the watched directory.
mkdir -p "$DIR/modules"
for m in token-auth region-steer playlist-rewrite; do
  cp "$GUESTS/wasm32-wasip2/release/${m//-/_}.wasm" "$DIR/modules/$m.wasm"
done
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/token.key"
if [ "$TOKEN_AUTH" = 1 ]; then
  chain='"auth", "steer", "absolute-urls"'
else
  chain='"steer", "absolute-urls"'
fi

group() { # name primary_port backup_port
  cat <<EOF
[[upstreams]]
name = "$1"
  [upstreams.primary]
  address = "127.0.0.1:$2"
  [upstreams.backup]
  address = "127.0.0.1:$3"
  [upstreams.health_check]
  path = "/live/demo/index.m3u8"
  [upstreams.stale_playlist]
  path = "/live/demo/index.m3u8"
EOF
}

cat > "$DIR/proxy.toml" <<EOF
[listen]
http = "$HOST:$PROXY_PORT"

$(group eu "$A_HTTP" "$B_HTTP")

$(group us "$B_HTTP" "$A_HTTP")

[admin]
enabled = true
listen = "127.0.0.1:$ADMIN_PORT"
token = "$ADMIN_TOKEN"

[metrics]
addr = "$HOST:$METRICS_PORT"

[player]
enabled = true

[wasm]
enabled = true
modules_dir = "$DIR/modules"

[[wasm.modules]]
name = "auth"
file = "token-auth"
failure = "fail-closed"
failure_status = 503
config = { key = "$(cat "$DIR/token.key")", session-cookie = true }

[[wasm.modules]]
name = "steer"
file = "region-steer"
failure = "fail-open"
config = { regions = "eu,us", region.eu.group = "eu", region.us.group = "us", country.DE = "eu", country.FR = "eu", country.US = "us", country.CA = "us" }

[[wasm.modules]]
name = "absolute-urls"
file = "playlist-rewrite"
failure = "fail-open"
body_stage = "before-cache"
config = { base.eu = "$PUBLIC_URL", base.us = "$PUBLIC_URL" }

[[wasm.chains]]
path_prefix = "/live/"
modules = [$chain]

[server]
# No load balancer to deregister from here: stop promptly on Ctrl-C.
drain_secs = 0
grace_period_secs = 1
graceful_shutdown_timeout_secs = 1
pid_file = "$DIR/proxy.pid"
upgrade_sock = "$DIR/proxy-upgrade.sock"
EOF
"$BIN/proxy" --config "$DIR/proxy.toml" > "$DIR/proxy.log" 2>&1 &
PIDS+=($!)
listening "$PROXY_PORT"

PLAYLIST="$PUBLIC_URL/live/demo/index.m3u8"
PLAYER="$PUBLIC_URL/player/?url=/live/demo/index.m3u8"
AUTH_NOTE="token auth off; DEMO_TOKEN_AUTH=1 puts it in the chain"
if [ "$TOKEN_AUTH" = 1 ]; then
  # The token rides on the playlist URL; the module answers with a session cookie for the
  # stream's directory, so segment URIs need no token.
  token=$("$BIN/proxy" token sign --key-file "$DIR/token.key" --acl '/live/demo/*' --ttl 86400)
  PLAYLIST="$PLAYLIST?__token__=$(urlencode "$token")"
  PLAYER="$PUBLIC_URL/player/?url=$(urlencode "/live/demo/index.m3u8?__token__=$token")"
  AUTH_NOTE="token auth on; more: $BIN/proxy token sign --key-file $DIR/token.key --acl '/live/demo/*'"
fi
ADMIN="curl -H 'Authorization: Bearer $ADMIN_TOKEN' http://127.0.0.1:$ADMIN_PORT"

# Up when a viewer could play: the playlist lists segments through the proxy.
for _ in $(seq 1 60); do
  if (curl -fs "$PLAYLIST" 2>/dev/null || true) | grep -q '\.ts'; then break; fi
  sleep 0.5
done

cat <<EOF

Parallax demo is up (logs in $DIR/*.log).
  player (360°/flat)  $PLAYER
  playlist via proxy  $PLAYLIST
  origin A / B        http://$HOST:$A_HTTP/live/demo/index.m3u8  http://$HOST:$B_HTTP/live/demo/index.m3u8
  recordings (VOD)    http://$HOST:$A_HTTP/vod/demo/
  metrics             http://$HOST:$METRICS_PORT/metrics
  admin API           $ADMIN/upstreams
  policy modules      $ADMIN/modules   ($AUTH_NOTE)
Play it elsewhere:    ffplay '$PLAYLIST'
Publish your camera:  OBS → Server rtmp://$HOST:$A_RTMP/live and rtmp://$HOST:$B_RTMP/live, key "cam"
                      ffmpeg -re -i input.mp4 -c:v libx264 -g 60 -c:a aac -f flv rtmp://$HOST:$A_RTMP/live/cam
                      then $PUBLIC_URL/player/?url=/live/cam/index.m3u8
Failover drill:       kill -STOP \$(pgrep -f origin-a.toml) — the proxy keeps serving from origin B
                      (kill -CONT to bring it back)
Close a region:       $ADMIN/regions/eu/close -X POST — viewers move to "us" (origin B first);
                      $ADMIN/regions/eu/open -X POST reopens it
Load test:            $BIN/proxy loadtest '$PLAYLIST' --viewers 500 --duration 60s \\
                        --metrics http://$HOST:$METRICS_PORT/metrics --report $DIR/loadtest.html
Ctrl-C stops everything.
EOF
wait
