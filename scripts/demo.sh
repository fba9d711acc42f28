#!/usr/bin/env bash
# The whole Parallax system on this machine, on loopback:
#   built-in test source ──RTMP──▶ origin A ─┐
#                        └─RTMP──▶ origin B ─┴─▶ proxy (A primary, B backup) ──▶ you
# Prints the URLs; Ctrl-C stops everything. Every run starts from an empty data dir.
#
# Settings (environment): PARALLAX_DEMO_DIR (data, default /tmp/parallax-demo), DEMO_HOST
# (bind address, default 127.0.0.1), PROXY_PORT (8080), ADMIN_PORT (9090), METRICS_PORT (9091),
# ORIGIN_A_HTTP (8081), ORIGIN_B_HTTP (8082), ORIGIN_A_RTMP (1935), ORIGIN_B_RTMP (1936),
# ADMIN_TOKEN (random).
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

echo "demo: building (release)…" >&2
cargo build --release --locked -q -p parallax-origin -p parallax-proxy
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"

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

cat > "$DIR/proxy.toml" <<EOF
[listen]
http = "$HOST:$PROXY_PORT"
[[upstreams]]
name = "live"
  [upstreams.primary]
  address = "127.0.0.1:$A_HTTP"
  [upstreams.backup]
  address = "127.0.0.1:$B_HTTP"
  [upstreams.health_check]
  path = "/live/demo/index.m3u8"
  [upstreams.stale_playlist]
  path = "/live/demo/index.m3u8"
[admin]
enabled = true
listen = "127.0.0.1:$ADMIN_PORT"
token = "$ADMIN_TOKEN"
[metrics]
addr = "$HOST:$METRICS_PORT"
[server]
# No load balancer to deregister from here: stop promptly on Ctrl-C.
drain_secs = 0
grace_period_secs = 1
graceful_shutdown_timeout_secs = 1
EOF
"$BIN/proxy" --config "$DIR/proxy.toml" > "$DIR/proxy.log" 2>&1 &
PIDS+=($!)
listening "$PROXY_PORT"

cat <<EOF

Parallax demo is up (logs in $DIR/*.log).
  playlist via proxy  http://$HOST:$PROXY_PORT/live/demo/index.m3u8
  origin A / B        http://$HOST:$A_HTTP/live/demo/index.m3u8  http://$HOST:$B_HTTP/live/demo/index.m3u8
  recordings (VOD)    http://$HOST:$A_HTTP/vod/demo/
  metrics             http://$HOST:$METRICS_PORT/metrics
  admin API           curl -H 'Authorization: Bearer $ADMIN_TOKEN' http://127.0.0.1:$ADMIN_PORT/upstreams
Play it:              ffplay http://$HOST:$PROXY_PORT/live/demo/index.m3u8   (or any HLS player)
Publish your camera:  OBS → Server rtmp://$HOST:$A_RTMP/live and rtmp://$HOST:$B_RTMP/live, key "cam"
                      ffmpeg -re -i input.mp4 -c:v libx264 -g 60 -c:a aac -f flv rtmp://$HOST:$A_RTMP/live/cam
                      then http://$HOST:$PROXY_PORT/live/cam/index.m3u8
Failover drill:       kill -STOP \$(pgrep -f origin-a.toml) — the proxy keeps serving from origin B.
Ctrl-C stops everything.
EOF
wait
