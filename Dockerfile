# syntax=docker/dockerfile:1
# Parallax proxy and origin, one image (docs/deployment.md):
#
#   docker build -t parallax .
#   docker run --rm --stop-timeout 30 -p 8080:8080 \
#     -v "$PWD/proxy.toml:/etc/parallax/proxy.toml:ro" parallax
#   docker run --rm --stop-timeout 30 -p 1935:1935 -p 8081:8080 \
#     -v "$PWD/origin.toml:/etc/parallax/origin.toml:ro" -v parallax-origin:/var/lib/parallax \
#     parallax origin --config /etc/parallax/origin.toml

FROM rust:1.95-bookworm AS build
# cmake: pingora-core builds libz-ng with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Registry and target dir in BuildKit caches, so a rebuild compiles only what changed; the
# binaries are copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p parallax-proxy -p parallax-origin \
 && install -D -m 0755 -t /out target/release/proxy target/release/origin

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/parallax \
      --shell /usr/sbin/nologin parallax \
 && install -d -o parallax -g parallax /var/lib/parallax /var/cache/parallax /etc/parallax/modules
COPY --from=build /out/proxy /out/origin /usr/local/bin/
USER parallax
# The origin's default data_dir ("data") is relative: /var/lib/parallax/data. Mount a volume
# on /var/lib/parallax to keep segments and recordings.
WORKDIR /var/lib/parallax
# 8080: the proxy's HTTP listener, or the origin's HTTP. 8443: a proxy TLS listener.
# 9091: Prometheus /metrics (set [metrics] addr = "0.0.0.0:9091"). 1935: the origin's RTMP.
# The proxy's admin API stays on the container's loopback (127.0.0.1:9090).
EXPOSE 8080 8443 9091 1935
# SIGTERM: the proxy drains (/healthz 503 for drain_secs), then shuts down gracefully; give
# `docker stop` more than drain_secs + grace_period_secs + graceful_shutdown_timeout_secs.
STOPSIGNAL SIGTERM
CMD ["proxy", "--config", "/etc/parallax/proxy.toml"]
