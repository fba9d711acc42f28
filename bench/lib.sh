# Shared helpers for the bench/ scripts: free ports, waiting for listeners, process memory,
# and stopping everything a script started (on any exit).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

source "$ROOT/scripts/lib.sh"

# The cargo profile benchmarks build and run: `dist` (release + fat LTO, what docs/deployment.md
# ships). PROFILE=release measures the quicker build instead.
PROFILE=${PROFILE:-dist}
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"

# build_bins PACKAGE...: builds the packages' binaries in $PROFILE (into $BIN_DIR).
build_bins() {
  local args=()
  for p in "$@"; do args+=(-p "$p"); done
  (cd "$ROOT" && cargo build --profile "$PROFILE" -q --locked "${args[@]}")
}

# Resident memory of a process and all its descendants, in MiB.
tree_rss_mib() {
  local pids; pids=$(pstree -pT "$1" 2>/dev/null | grep -o '([0-9]\+)' | tr -d '()' || echo "$1")
  local kb=0
  for p in $pids; do kb=$((kb + $(awk '/VmRSS/ {print $2}' /proc/"$p"/status 2>/dev/null || echo 0))); done
  echo $((kb / 1024))
}

# CPU seconds (user + system) used so far by a process and its descendants.
tree_cpu_secs() {
  local pids; pids=$(pstree -pT "$1" 2>/dev/null | grep -o '([0-9]\+)' | tr -d '()' || echo "$1")
  local ticks=0 hz; hz=$(getconf CLK_TCK)
  for p in $pids; do ticks=$((ticks + $(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0))); done
  python3 -c "print(f'{$ticks / $hz:.2f}')"
}

# write_origin_config FILE DATA_DIR RTMP_PORT HTTP_PORT: a Parallax origin on loopback with
# recording off (the benchmarks measure live packaging and serving).
write_origin_config() {
  cat > "$1" <<TOML
data_dir = "$2"
[rtmp]
listen = "127.0.0.1:$3"
[http]
listen = "127.0.0.1:$4"
[recording]
enabled = false
TOML
}
