#!/usr/bin/env bash
# HLS viewer load: `proxy loadtest` simulating VIEWERS players against Parallax and against nginx
# proxy_cache, each in front of the same live origin, in one run on this machine (loopback).
# Prints a Markdown table for bench/RESULTS.md.
#
#   bash bench/loadtest/run.sh          # VIEWERS=5000 RAMP=30 DURATION=60 by default
#
# Pinning: the server under test runs on CPU 0 (Parallax --threads 1, nginx worker_processes 1),
# the load tester on CPU 1, the origin and the publisher wherever the scheduler puts them. So
# the tester's own row answers "how many viewers does one core simulate" (its CPU use must stay
# under 100 % of that core for its latencies to mean anything), and the servers' rows compare
# one core of Parallax with one core of nginx under the same viewers.
#
# Per server: requests, errors, playlist and segment p50/p95/p99, segments slower to download
# than to play, the server's CPU seconds over the run (user + system), and for Parallax the
# requests that reached the origin (from its metrics).
source "$(dirname "$0")/../lib.sh"
VIEWERS=${VIEWERS:-5000}
RAMP=${RAMP:-30}
DURATION=${DURATION:-60}
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/parallax-bench.XXXXXX)
chmod 755 "$WORK"  # nginx workers (www-data) write its cache under it
PIDS+=("")

if [ -z "${PROXY_BIN:-}" ]; then
  build_bins parallax-proxy parallax-origin
fi
BIN=$(dirname "${PROXY_BIN:-$BIN_DIR/proxy}")

# The live source: the real origin fed by the built-in publisher (2 s segments, ~0.7 Mbit/s).
RTMP=$(free_port); ORIGIN=$(free_port)
write_origin_config "$WORK/origin.toml" "$WORK/origin" "$RTMP" "$ORIGIN"
RUST_LOG=warn "$BIN/origin" --config "$WORK/origin.toml" > "$WORK/origin.log" 2>&1 & PIDS+=($!)
wait_port 127.0.0.1 "$RTMP"
"$BIN/origin" publish "rtmp://127.0.0.1:$RTMP/live/bench" > "$WORK/publish.log" 2>&1 & PIDS+=($!)

declare -A PORT PID METRICS
PORT[parallax]=$(free_port); METRICS[parallax]=$(free_port)
cat > "$WORK/proxy.toml" <<EOF
[listen]
http = "127.0.0.1:${PORT[parallax]}"
[[upstreams]]
name = "live"
primary.address = "127.0.0.1:$ORIGIN"
[metrics]
addr = "127.0.0.1:${METRICS[parallax]}"
[log]
filter = "warn"
[server]
threads = 1
pid_file = "$WORK/proxy.pid"
upgrade_sock = "$WORK/proxy.sock"
EOF
taskset -c 0 "$BIN/proxy" --config "$WORK/proxy.toml" > "$WORK/parallax.log" 2>&1 &
PID[parallax]=$!; PIDS+=(${PID[parallax]})
PORT[nginx]=$(free_port)
sed -e "s#@DIR@#$WORK#g" -e "s#@PORT@#${PORT[nginx]}#g" -e "s#@ORIGIN_PORT@#$ORIGIN#g" \
  -e "s#@WORKERS@#1#g" "$BENCH_DIR/proxy/nginx.conf.in" > "$WORK/nginx.conf"
mkdir -p "$WORK/nginx-cache"
taskset -c 0 nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" & PID[nginx]=$!; PIDS+=(${PID[nginx]})
for s in parallax nginx; do wait_port 127.0.0.1 "${PORT[$s]}"; done

# Wait until the playlist lists a few segments.
for _ in $(seq 1 60); do
  [ "$(curl -fs "http://127.0.0.1:$ORIGIN/live/bench/index.m3u8" | grep -c '\.ts')" -ge 3 ] && break
  sleep 0.5
done

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for s in parallax nginx; do
  url="http://127.0.0.1:${PORT[$s]}/live/bench/index.m3u8"
  metrics=()
  [ -n "${METRICS[$s]:-}" ] && metrics=(--metrics "http://127.0.0.1:${METRICS[$s]}/metrics")
  before=$(tree_cpu_secs "${PID[$s]}")
  taskset -c 1 "$BIN/proxy" loadtest "$url" --viewers "$VIEWERS" --ramp-up "${RAMP}s" \
    --duration "${DURATION}s" "${metrics[@]}" --json "$WORK/$s.json" \
    --report "$WORK/$s.html" --quiet > "$WORK/$s.out" 2>&1 || true
  after=$(tree_cpu_secs "${PID[$s]}")
  python3 -c "print(f'{$after - $before:.1f}')" > "$WORK/$s.cpu"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$WORK" "$VIEWERS" "$RAMP" "$DURATION" <<'PY'
import json, sys
work, viewers, ramp, duration = sys.argv[1:5]
print(f"HLS viewers: {viewers} simulated viewers (ramp-up {ramp} s, {duration} s), "
      "server on CPU 0 (one thread / worker), `proxy loadtest` on CPU 1\n")
print("| | Parallax | nginx proxy_cache |")
print("|---|---|---|")
s = {n: json.load(open(f"{work}/{n}.json")) for n in ("parallax", "nginx")}
cpu = {n: float(open(f"{work}/{n}.cpu").read()) for n in s}
def kind(n, k):
    return next((t for t in s[n]["by_type"] if t["type"] == k), None)
def lat(n, k):
    t = kind(n, k)
    l = t["latency"]
    return f"{l['p50_ms']:.1f} / {l['p95_ms']:.1f} / {l['p99_ms']:.1f}"
rows = [
    ("requests (errors)", lambda n: f"{s[n]['requests']} ({s[n]['errors']})"),
    ("playlist p50 / p95 / p99 ms", lambda n: lat(n, "playlist")),
    ("segment p50 / p95 / p99 ms", lambda n: lat(n, "segment")),
    ("segments slower than real time", lambda n: str(s[n]["slow_segments"])),
    ("received MB/s", lambda n: f"{s[n]['megabytes_per_sec']:.0f}"),
    ("server CPU s for the run", lambda n: f"{cpu[n]:.1f}"),
    ("server CPU ms per 1000 requests", lambda n: f"{cpu[n] * 1e6 / max(s[n]['requests'], 1):.0f}"),
    ("origin requests per viewer", lambda n: "-" if s[n]["origin_requests_per_viewer"] is None
        else f"{s[n]['origin_requests_per_viewer']:.3f}"),
    ("load tester CPU, % of its core", lambda n: f"{s[n]['tester_cpu_percent']:.0f}"),
]
for label, f in rows:
    print(f"| {label} | {f('parallax')} | {f('nginx')} |")
ratio = (cpu["nginx"] / max(s["nginx"]["requests"], 1)) / (cpu["parallax"] / max(s["parallax"]["requests"], 1))
print(f"\nServer CPU per request, nginx / Parallax: {ratio:.2f}")
PY
echo "load average before / after: $LOAD_BEFORE / $LOAD_AFTER; reports: $WORK/{parallax,nginx}.html"
