#!/usr/bin/env bash
# Policy-module cost on the hit path: the same Parallax build with no module, with the template
# module (two hooks doing almost nothing: the host's per-module floor), with each shipped module
# alone, and with the three chained, one after another in one run on this machine.
#
#   bash bench/wasm/run.sh           # DURATION=10 CONNS=50 ROUNDS=3 THREADS=1 by default
#
# Every configuration serves the same cached playlist hit (`/live/bench/index.m3u8` with a
# signed token and a viewer-country header, so every module does its real work) to
# `wrk -t1 -c$CONNS`, the requests cycling through VIEWERS (default 100) differently signed
# tokens, as that many viewers of one live playlist would send. With RETURNING=1 (default) each
# request also carries region-steer's sticky cookie, as a viewer's player sends it back after its
# first response; RETURNING=0 measures first visits. Reported per configuration: requests/s, and the proxy's own CPU time per
# request (user + system of its process, from /proc), whose difference to "none" is what the
# modules add per request. The proxy runs THREADS worker threads so wrk has a core of its own.
# ROUNDS repeats the whole sequence (configurations interleaved, so drift on a shared machine
# hits them alike); the summary takes medians. ORDER picks configurations (default all).
source "$(dirname "$0")/../lib.sh"
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-1}
WORK=$(mktemp -d /tmp/parallax-bench-wasm.XXXXXX)
PIDS+=("")

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
# The guests go to the same target dir the proxy's tests build them in.
[ -n "${PROXY_BIN:-}" ] || { build_bins parallax-proxy \
  && (cd "$ROOT" && cargo build --release -q --locked --target wasm32-wasip2 \
       --target-dir "$TARGET/wasm-guests" -p token-auth -p region-steer -p playlist-rewrite \
       -p module-template); }
PROXY_BIN="${PROXY_BIN:-$BIN_DIR/proxy}"  # set PROXY_BIN to skip the build (dry runs)
# GUESTS_DIR: where the three .wasm files come from (with PROXY_BIN, to measure another build).
GUESTS_DIR="${GUESTS_DIR:-$TARGET/wasm-guests/wasm32-wasip2/release}"
mkdir -p "$WORK/modules"
for m in token_auth region_steer playlist_rewrite module_template; do
  cp "$GUESTS_DIR/$m.wasm" "$WORK/modules/${m//_/-}.wasm"
done

ORIGIN=$(free_port)
python3 "$BENCH_DIR/origin.py" --port "$ORIGIN" & PIDS+=($!)
wait_port 127.0.0.1 "$ORIGIN"

KEY=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
VIEWERS=${VIEWERS:-100}
RETURNING=${RETURNING:-1}
url_path() { # token -> the playlist path with the token in its query
  echo "/live/bench/index.m3u8?__token__=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe="~=*/"))' "$1")"
}
{
  echo "local paths = {"
  for i in $(seq 1 "$VIEWERS"); do  # one token per viewer: expiries differ, so do signatures
    echo "  \"$(url_path "$("$PROXY_BIN" token sign --key "$KEY" --acl '/live/*' --ttl $((7200 + i)))")\","
  done
  echo "}"
  echo "local n = 0"
  echo "request = function() n = n % #paths + 1; return wrk.format(nil, paths[n]) end"
} > "$WORK/viewers.lua"
URL_PATH=$(url_path "$("$PROXY_BIN" token sign --key "$KEY" --acl '/live/*' --ttl 7200)")

modules_toml() { # the [[wasm.modules]] entries, every one defined; chains pick
  cat <<TOML
[[wasm.modules]]
name = "token-auth"
config = { key = "$KEY" }
[[wasm.modules]]
name = "region-steer"
config = { regions = "eu,us", region.eu.group = "default", region.us.group = "default", country.DE = "eu", country.US = "us" }
[[wasm.modules]]
name = "playlist-rewrite"
body_stage = "after-cache"
config = { token-name = "__token__" }
[[wasm.modules]]
name = "module-template"
TOML
}
config() { # name chain-modules... -> config file path
  local name=$1; shift
  local file="$WORK/$name.toml" list
  list=$(printf '"%s", ' "$@"); list="[${list%, }]"
  {
    echo "[[upstreams]]"; echo "name = \"default\""; echo "primary.address = \"127.0.0.1:$ORIGIN\""
    echo "health_check.enabled = false"
    echo "[log]"; echo "filter = \"warn\""
    if [ $# -gt 0 ]; then
      echo "[wasm]"; echo "enabled = true"; echo "modules_dir = \"$WORK/modules\""
      modules_toml
      echo "[[wasm.chains]]"; echo "modules = $list"
    fi
  } > "$file"
  echo "$file"
}

declare -A CONFIG
CONFIG[none]=$(config none)
CONFIG[template]=$(config template module-template)
CONFIG[token-auth]=$(config token-auth token-auth)
CONFIG[region-steer]=$(config region-steer region-steer)
CONFIG[playlist-rewrite]=$(config playlist-rewrite playlist-rewrite)
CONFIG[chain]=$(config chain region-steer token-auth playlist-rewrite)
read -r -a ORDER <<< "${ORDER:-none template token-auth region-steer playlist-rewrite chain}"

run_one() { # name -> "req/s cpu-us-per-request"
  local port pid before after
  port=$(free_port)
  "$PROXY_BIN" --config "${CONFIG[$1]}" --listen "127.0.0.1:$port" --threads "$THREADS" \
    > "$WORK/$1.log" 2>&1 & pid=$!
  wait_port 127.0.0.1 "$port"
  local url="http://127.0.0.1:$port$URL_PATH"
  curl -fsS -H 'cloudfront-viewer-country: DE' -o /dev/null "$url" || { cat "$WORK/$1.log" >&2; exit 1; }
  local viewers=(-s "$WORK/viewers.lua" -H 'cloudfront-viewer-country: DE')
  [ "$RETURNING" = 0 ] || viewers+=(-H 'cookie: parallax-region=eu')
  wrk -t1 -c"$CONNS" -d2s "${viewers[@]}" "$url" > /dev/null 2>&1  # warm-up
  before=$(tree_cpu_secs "$pid")
  wrk -t1 -c"$CONNS" -d"${DURATION}s" "${viewers[@]}" "$url" > "$WORK/wrk.out" 2>&1
  after=$(tree_cpu_secs "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.out")
  [ -z "$non2xx" ] || { echo "$1: $non2xx non-2xx responses" >&2; cat "$WORK/$1.log" >&2; exit 1; }
  awk -v cpu="$(python3 -c "print($after - $before)")" -v d="$DURATION" \
    '/Requests\/sec/ {r=$2} END {printf "%s %.2f\n", r, cpu * 1e6 / (r * d)}' "$WORK/wrk.out"
}

echo "THREADS=$THREADS CONNS=$CONNS DURATION=${DURATION}s ROUNDS=$ROUNDS VIEWERS=$VIEWERS RETURNING=$RETURNING; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| round | config | req/s | proxy CPU µs per request |"
echo "|---|---|---|---|"
: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    read -r rps us < <(run_one "$name")
    echo "| $round | $name | $rps | $us |"
    echo "$round $name $rps $us" >> "$WORK/results"
  done
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for rnd, name, rps, us in rows:
    by.setdefault(name, []).append((int(rnd), float(rps), float(us)))
base = {r: (rps, us) for r, rps, us in by["none"]}
print("\n| config | median req/s | vs none (per-round ratios) | median CPU µs/request | added µs/request vs none (per round) |")
print("|---|---|---|---|---|")
for name, runs in by.items():
    ratios = [rps / base[r][0] for r, rps, _ in runs]
    added = [us - base[r][1] for r, _, us in runs]
    print(f"| {name} | {statistics.median(r for _, r, _ in runs):.0f} | "
          f"{statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)}) | "
          f"{statistics.median(u for _, _, u in runs):.2f} | "
          f"{statistics.median(added):+.2f} ({', '.join(f'{x:+.2f}' for x in added)}) |")
PY
