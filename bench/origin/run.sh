#!/usr/bin/env bash
# Origin benchmark: the Parallax origin and nginx-rtmp (Debian libnginx-mod-rtmp) packaging the
# same live streams into HLS, one after the other in one run, loopback only.
#
#   bash bench/origin/run.sh          # STREAMS=4 SECONDS_PER_RUN=40 by default
#
# Each server gets STREAMS publishers of the bundled clip (the built-in publisher, real time) and
# is measured on: CPU seconds of the server process per stream per minute of video (no viewers
# during that window), then segment
# availability latency on one stream (bench/origin/segment_latency.py: keyframe written by the
# publisher → segment listed in the playlist and fully served).
source "$(dirname "$0")/../lib.sh"
STREAMS=${STREAMS:-4}
RUN=${SECONDS_PER_RUN:-40}
WARMUP=6
WORK=$(mktemp -d /tmp/parallax-origin-bench.XXXXXX)
chmod 755 "$WORK"

build_bins parallax-origin
ORIGIN_BIN="$BIN_DIR/origin"

start_parallax() {
  RTMP=$(free_port); HTTP=$(free_port)
  write_origin_config "$WORK/origin.toml" "$WORK/parallax-data" "$RTMP" "$HTTP"
  "$ORIGIN_BIN" --config "$WORK/origin.toml" > "$WORK/parallax.log" 2>&1 & SERVER=$!; PIDS+=($SERVER)
}
start_nginx_rtmp() {
  RTMP=$(free_port); HTTP=$(free_port)
  mkdir -p "$WORK/hls"; chmod 777 "$WORK/hls"  # nginx workers write it as nobody
  sed -e "s#@DIR@#$WORK#g" -e "s#@RTMP_PORT@#$RTMP#g" -e "s#@HTTP_PORT@#$HTTP#g" \
    "$BENCH_DIR/origin/nginx-rtmp.conf.in" > "$WORK/nginx-rtmp.conf"
  nginx -c "$WORK/nginx-rtmp.conf" > "$WORK/nginx-rtmp.log" 2>&1 & SERVER=$!; PIDS+=($SERVER)
}

declare -A CPU LAT
for s in parallax nginx_rtmp; do
  "start_$s"; wait_port 127.0.0.1 "$RTMP"; wait_port 127.0.0.1 "$HTTP"
  pubs=()
  for i in $(seq 1 "$STREAMS"); do
    RUST_LOG=parallax_origin::publisher=debug "$ORIGIN_BIN" --log-format json publish \
      "rtmp://127.0.0.1:$RTMP/live/s$i" > "$WORK/pub-$s-$i.log" 2>&1 & pubs+=($!); PIDS+=($!)
  done
  sleep "$WARMUP"
  # Ingest + packaging CPU with no viewer, then latency: the probe polls every 2 ms, which
  # would otherwise be billed to packaging.
  cpu0=$(tree_cpu_secs "$SERVER")
  sleep "$RUN"
  cpu1=$(tree_cpu_secs "$SERVER")
  lat=$(python3 "$BENCH_DIR/origin/segment_latency.py" --seconds "$RUN" \
    "http://127.0.0.1:$HTTP/live/s1/index.m3u8" "$WORK/pub-$s-1.log")
  CPU[$s]=$(python3 -c "print(f'{($cpu1 - $cpu0) / $STREAMS / $RUN * 60:.2f}')")
  LAT[$s]=$lat
  kill "${pubs[@]}" "$SERVER" 2>/dev/null || true; wait "${pubs[@]}" "$SERVER" 2>/dev/null || true
done

echo "| server | CPU s per stream per minute ($STREAMS streams, ${RUN}s) | segment listed+served after closing keyframe |"
echo "|---|---|---|"
for s in parallax nginx_rtmp; do echo "| ${s/_/-} | ${CPU[$s]} | ${LAT[$s]} |"; done
python3 -c "print(f'\nratio: CPU per stream parallax/nginx-rtmp = {${CPU[parallax]} / max(${CPU[nginx_rtmp]}, 1e-9):.2f}x')"
