#!/usr/bin/env bash
# Cache-tier benchmark: Parallax, nginx proxy_cache and Varnish in front of the same origin, in one
# run on this machine, loopback only. Prints a Markdown table for bench/RESULTS.md.
#
#   bash bench/proxy/run.sh            # DURATION=10 CONNS=100 BURST=1000 WORKERS=2 by default
#
# Rows: small playlist hits (wrk req/s), 1 MiB segment hits (wrk GB/s), a burst of BURST
# concurrent first requests for one object the origin answers in 200 ms (h2load over HTTP/1.1:
# origin fetches, mean and max latency), and resident memory after the run.
#
# WORKERS is both nginx's worker_processes and Parallax's --threads (Varnish runs its own thread
# pools, one thread per connection). Each wrk row also reports the server's own CPU use (user +
# system, its whole process tree) as work per CPU-second: on a shared machine throughput follows
# how much CPU the scheduler hands each server, efficiency does not. The burst is repeated
# once the object is cached ("hit burst"): the same h2load command, so its mean is the floor that
# h2load's 1000 connection setups and the machine put under the coalesced figure.
source "$(dirname "$0")/../lib.sh"
DURATION=${DURATION:-10}
CONNS=${CONNS:-100}
BURST=${BURST:-1000}
WORKERS=${WORKERS:-2}
ulimit -n "$(ulimit -Hn)"  # the burst opens BURST client + server sockets
WORK=$(mktemp -d /tmp/parallax-bench.XXXXXX)
chmod 755 "$WORK"  # varnishd reads the VCL as its own user
PIDS+=("")

# PROXY_BIN: measure that binary instead of building this tree's.
if [[ "${SERVERS:-parallax}" == *parallax* && -z "${PROXY_BIN:-}" ]]; then build_bins parallax-proxy; fi
PROXY_BIN="${PROXY_BIN:-$BIN_DIR/proxy}"

ORIGIN=$(free_port)
python3 "$BENCH_DIR/origin.py" --port "$ORIGIN" --delay-ms 200 & PIDS+=($!)
wait_port 127.0.0.1 "$ORIGIN"

declare -A PORT PID
start_nginx() {
  PORT[nginx]=$(free_port)
  sed -e "s#@DIR@#$WORK#g" -e "s#@PORT@#${PORT[nginx]}#g" -e "s#@ORIGIN_PORT@#$ORIGIN#g" \
    -e "s#@WORKERS@#$WORKERS#g" \
    "$BENCH_DIR/proxy/nginx.conf.in" > "$WORK/nginx.conf"
  mkdir -p "$WORK/nginx-cache"
  nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" & PID[nginx]=$!; PIDS+=(${PID[nginx]})
}
start_varnish() {
  PORT[varnish]=$(free_port)
  sed -e "s#ORIGIN_PORT#$ORIGIN#" "$BENCH_DIR/proxy/varnish.vcl" > "$WORK/varnish.vcl"
  varnishd -F -n "$WORK/varnish" -a "127.0.0.1:${PORT[varnish]}" -f "$WORK/varnish.vcl" \
    -s malloc,2G > "$WORK/varnish.log" 2>&1 & PID[varnish]=$!; PIDS+=(${PID[varnish]})
}
start_parallax() {
  PORT[parallax]=$(free_port)
  RUST_LOG=warn "$PROXY_BIN" --listen "127.0.0.1:${PORT[parallax]}" --upstream "127.0.0.1:$ORIGIN" \
    --threads "$WORKERS" > "$WORK/parallax.log" 2>&1 & PID[parallax]=$!; PIDS+=(${PID[parallax]})
}
read -r -a SERVERS <<< "${SERVERS:-parallax nginx varnish}"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for s in "${SERVERS[@]}"; do "start_$s"; done
for s in "${SERVERS[@]}"; do wait_port 127.0.0.1 "${PORT[$s]}"; done

wrk_run() { # url pid -> "req/s transfer/s server-cpu-seconds"
  local before after; before=$(tree_cpu_secs "$2")
  wrk -t1 -c"$CONNS" -d"${DURATION}s" "$1" > "$WORK/wrk.out" 2>&1
  after=$(tree_cpu_secs "$2")
  awk -v cpu="$(python3 -c "print(f'{$after - $before:.2f}')")" \
    '/Requests\/sec/ {r=$2} /Transfer\/sec/ {t=$2} END {print r, t, cpu}' "$WORK/wrk.out"
}
to_gbps() { # wrk's Transfer/sec ("812.34MB", binary units) -> wrk's GB
  python3 -c "import sys; v=sys.argv[1]; print(f'{float(v[:-2]) / {\"KB\": 2**20, \"MB\": 2**10, \"GB\": 1}[v[-2:]]:.2f}')" "$1"; }

declare -A RPS GBPS FETCH MEAN MAX HMEAN HMAX MEM RPC GPC
per_cpu() { python3 -c "import sys; w, c = map(float, sys.argv[1:3]); print(f'{w / c:.{sys.argv[3] if len(sys.argv) > 3 else 0}f}' if c > 0 else '-')" "$@"; }
burst() { # url label -> "mean max ok"
  h2load --h1 -n "$BURST" -c "$BURST" -m 1 "$1" > "$WORK/h2load-$2.out" 2>&1
  awk '/^requests:/ {ok=$8} /time for request:/ {mean=$6; max=$5} END {print mean, max, ok}' \
    "$WORK/h2load-$2.out"
}
for s in "${SERVERS[@]}"; do
  base="http://127.0.0.1:${PORT[$s]}"
  curl -fsS -o /dev/null "$base/live/bench/index.m3u8"; curl -fsS -o /dev/null "$base/seg/1.ts"
  read -r rps _ cpu < <(wrk_run "$base/live/bench/index.m3u8" "${PID[$s]}"); RPS[$s]=$rps
  RPC[$s]=$(per_cpu "$(python3 -c "print($rps * $DURATION)")" "$cpu")
  read -r _ tps cpu < <(wrk_run "$base/seg/1.ts" "${PID[$s]}"); GBPS[$s]=$(to_gbps "$tps")
  GPC[$s]=$(per_cpu "$(python3 -c "print(${GBPS[$s]} * $DURATION)")" "$cpu" 2)
  read -r MEAN[$s] MAX[$s] ok < <(burst "$base/slow/burst-$s.ts" "$s")
  read -r HMEAN[$s] HMAX[$s] _ < <(burst "$base/slow/burst-$s.ts" "$s-hit")
  FETCH[$s]="$(curl -fsS "http://127.0.0.1:$ORIGIN/_count?prefix=/slow/burst-$s") ($ok ok)"
  MEM[$s]=$(tree_rss_mib "${PID[$s]}")
done

echo "WORKERS=$WORKERS (nginx worker_processes, parallax --threads); load before: $LOAD_BEFORE"
echo
echo "| server | playlist hit req/s (wrk -t1 -c$CONNS) | hits per server CPU-s | 1 MiB segment hit GB/s | GB per server CPU-s | burst of $BURST: origin fetches | burst mean | burst max | hit burst mean / max | RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for s in "${SERVERS[@]}"; do
  echo "| $s | ${RPS[$s]} | ${RPC[$s]} | ${GBPS[$s]} | ${GPC[$s]} | ${FETCH[$s]} | ${MEAN[$s]} | ${MAX[$s]} | ${HMEAN[$s]} / ${HMAX[$s]} | ${MEM[$s]} |"
done
if [ -n "${RPS[parallax]:-}" ] && [ -n "${RPS[nginx]:-}" ] && [ -n "${RPS[varnish]:-}" ]; then
python3 - "${RPS[parallax]}" "${RPS[nginx]}" "${RPS[varnish]}" "${GBPS[parallax]}" "${GBPS[nginx]}" "${GBPS[varnish]}" \
  "${RPC[parallax]}" "${RPC[nginx]}" "${GPC[parallax]}" "${GPC[nginx]}" "${GPC[varnish]}" <<'PY'
import sys
p, n, v, gp, gn, gv = map(float, sys.argv[1:7])
def f(x):
    try:
        return float(x)
    except ValueError:
        return float("nan")
rp, rn, cp, cn, cv = map(f, sys.argv[7:])
print(f"\nratios: playlist hits parallax/nginx = {p/n:.2f}x, parallax/varnish = {p/v:.2f}x; "
      f"1 MiB segments parallax/best peer = {gp/max(gn, gv):.2f}x")
print(f"per server CPU-second: playlist hits parallax/nginx = {rp/rn:.2f}x; "
      f"1 MiB segments parallax/best peer = {cp/max(cn, cv):.2f}x")
PY
fi
