#!/usr/bin/env python3
"""Segment availability latency: from the keyframe that closes a segment leaving the publisher to
that segment being listed in the live playlist and served in full.

Polls PLAYLIST_URL every --interval-ms over one keep-alive connection. When a segment URI appears
that was not listed before, it is fetched at once; its "served" time is when the last byte arrived.
The keyframe that closed it is the newest keyframe the publisher sent before the segment was
listed (keyframes are 2 s apart and the latencies measured are far below that), read from the
JSON log of `origin --log-format json publish` with RUST_LOG=parallax_origin::publisher=debug:
its "keyframe sent" events, stamped when the keyframe's bytes were written to the socket.
Prints p50/p95/max over the segments seen, in ms.
"""
import argparse
import json
from datetime import datetime
import bisect
import http.client
import time
from urllib.parse import urljoin, urlparse


def fetch(conn, path):
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("playlist_url")
    ap.add_argument("keyframe_log")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--interval-ms", type=float, default=2)
    args = ap.parse_args()

    url = urlparse(args.playlist_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    seen, served = set(), []  # served: (segment uri, listed_at, served_at) in unix seconds
    first = True
    deadline = time.time() + args.seconds
    while time.time() < deadline:
        try:
            status, body = fetch(conn, url.path)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
            time.sleep(0.05)
            continue
        listed_at = time.time()
        if status == 200:
            uris = [l for l in body.decode(errors="replace").splitlines() if l and not l.startswith("#")]
            for uri in uris:
                if uri in seen:
                    continue
                seen.add(uri)
                if first:
                    continue  # already listed when we started: its listing time is unknown
                seg_path = urlparse(urljoin(args.playlist_url, uri)).path
                seg_status, _ = fetch(conn, seg_path)
                if seg_status == 200:
                    served.append((uri, listed_at, time.time()))
            first = False if uris else first
        time.sleep(args.interval_ms / 1000)

    keyframes = []
    with open(args.keyframe_log) as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("fields", {}).get("message") == "keyframe sent":
                stamp = event["timestamp"].replace("Z", "+00:00")
                keyframes.append(datetime.fromisoformat(stamp).timestamp())
    keyframes.sort()
    lat = []
    for _uri, listed_at, served_at in served:
        i = bisect.bisect_right(keyframes, listed_at) - 1
        if i >= 0:
            lat.append((served_at - keyframes[i]) * 1000)
    if not lat:
        raise SystemExit("no new segment was listed while polling")
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"segments={len(lat)} p50_ms={pick(0.5):.1f} p95_ms={pick(0.95):.1f} max_ms={lat[-1]:.1f}")


if __name__ == "__main__":
    main()
