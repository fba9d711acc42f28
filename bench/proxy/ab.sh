#!/usr/bin/env bash
# A/B of two proxy binaries on cached small hits, side by side in one run: both serve the same
# origin, and `wrk -t1 -c100 -d5s` alternates between them PAIRS times (default 3), so drift on
# a shared machine hits both alike. Prints, per run, req/s and each proxy's CPU time (user +
# system) per request: the figure to compare, since throughput follows the CPU the scheduler
# hands out.
#
#   bash bench/proxy/ab.sh target/release/proxy target/dist/proxy
source "$(dirname "$0")/../lib.sh"
[ $# -eq 2 ] || { echo "usage: bench/proxy/ab.sh <proxy A> <proxy B>" >&2; exit 2; }
PAIRS=${PAIRS:-3}
URL_PATH=/live/ab/index.m3u8
ORIGIN=$(free_port)
python3 "$BENCH_DIR/origin.py" --port "$ORIGIN" & PIDS+=($!)
wait_port 127.0.0.1 "$ORIGIN"
declare -A BIN=([A]=$1 [B]=$2) PORT PID
for n in A B; do
  PORT[$n]=$(free_port)
  RUST_LOG=warn "${BIN[$n]}" --listen "127.0.0.1:${PORT[$n]}" --upstream "127.0.0.1:$ORIGIN" \
    --threads 2 > /dev/null 2>&1 & PID[$n]=$!; PIDS+=(${PID[$n]})
  wait_port 127.0.0.1 "${PORT[$n]}"
  curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$n]}$URL_PATH"  # cache it
done
echo "| pair | binary | req/s | proxy CPU µs per request |"
echo "|---|---|---|---|"
for i in $(seq 1 "$PAIRS"); do
  for n in A B; do
    before=$(tree_cpu_secs "${PID[$n]}")
    rps=$(wrk -t1 -c100 -d5s "http://127.0.0.1:${PORT[$n]}$URL_PATH" | awk '/Requests\/sec/ {print $2}')
    after=$(tree_cpu_secs "${PID[$n]}")
    echo "| $i | $n (${BIN[$n]}) | $rps | $(python3 -c "print(f'{($after - $before) * 1e6 / ($rps * 5):.1f}')") |"
  done
done
