#!/usr/bin/env bash
# Origin ingest CPU with every server fed at once, so all see the same contention on a shared,
# noisy machine (run.sh measures them one after the other, which such a machine skews).
#
#   bash bench/origin/cpu_side_by_side.sh [SECONDS] [SERVER...]
#
# SERVER is a path to an `origin` binary or `nginx` (nginx-rtmp, bench/origin/nginx-rtmp.conf.in);
# default: this tree's release origin and nginx. Each gets 4 publishers of the bundled clip.
# Prints CPU seconds per stream per minute of each server's process tree, on one line.
source "$(dirname "$0")/../lib.sh"
SECS=${1:-30}; shift || true
build_bins parallax-origin
ORIGIN_BIN="$BIN_DIR/origin"
[ $# -gt 0 ] || set -- "$ORIGIN_BIN" nginx
STREAMS=4
SERVERS=()
for kind in "$@"; do
  dir=$(mktemp -d /tmp/parallax-origin-cpu.XXXXXX); chmod 755 "$dir"
  RTMP=$(free_port); HTTP=$(free_port)
  if [ "$kind" = nginx ]; then
    mkdir -p "$dir/hls"; chmod 777 "$dir/hls"  # nginx workers write it as nobody
    sed -e "s#@DIR@#$dir#g" -e "s#@RTMP_PORT@#$RTMP#g" -e "s#@HTTP_PORT@#$HTTP#g" \
      "$BENCH_DIR/origin/nginx-rtmp.conf.in" > "$dir/nginx-rtmp.conf"
    nginx -c "$dir/nginx-rtmp.conf" > "$dir/server.log" 2>&1 & server=$!
  else
    printf 'data_dir = "%s/data"\n[rtmp]\nlisten = "127.0.0.1:%s"\n[http]\nlisten = "127.0.0.1:%s"\n[recording]\nenabled = false\n' \
      "$dir" "$RTMP" "$HTTP" > "$dir/origin.toml"
    "$kind" --config "$dir/origin.toml" > "$dir/server.log" 2>&1 & server=$!
  fi
  PIDS+=($server); SERVERS+=($server)
  wait_port 127.0.0.1 "$RTMP"
  for i in $(seq 1 "$STREAMS"); do
    "$ORIGIN_BIN" publish "rtmp://127.0.0.1:$RTMP/live/s$i" > "$dir/pub-$i.log" 2>&1 & PIDS+=($!)
  done
done
sleep 6
before=(); for s in "${SERVERS[@]}"; do before+=("$(tree_cpu_secs "$s")"); done
sleep "$SECS"
after=(); for s in "${SERVERS[@]}"; do after+=("$(tree_cpu_secs "$s")"); done
line=""
for i in "${!SERVERS[@]}"; do
  kind=$(eval "echo \${$((i + 1))}")
  line+="$(basename "$kind")=$(python3 -c "print(f'{(${after[$i]} - ${before[$i]}) / $STREAMS / $SECS * 60:.3f}')") "
done
echo "$line"
