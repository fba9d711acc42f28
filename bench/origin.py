#!/usr/bin/env python3
"""Bench origin: the upstream every cache under test sits in front of.

Serves, over HTTP/1.1 keep-alive on 127.0.0.1:
  /live/<s>/index.m3u8   a small live playlist (Cache-Control: max-age=1)
  /seg/<name>.ts         a 1 MiB segment (Cache-Control: max-age=86400)
  /slow/<name>.ts        a 64 KiB segment answered after --delay-ms (the coalescing burst)
  /_count?prefix=P       how many origin requests had a path starting with P (not counted itself)
It is not what is measured; it only has to be correct and count what reaches it.
"""
import argparse
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PLAYLIST = (
    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n"
    + "".join(f"#EXTINF:2.000,\n{n}.ts\n" for n in range(100, 106))
).encode()
SEGMENT = bytes(range(256)) * 4096  # 1 MiB
SLOW = bytes(range(256)) * 256  # 64 KiB


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.paths = []

    def add(self, path):
        with self.lock:
            self.paths.append(path)

    def count(self, prefix):
        with self.lock:
            return sum(1 for p in self.paths if p.startswith(prefix))


def handler(counter, delay):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/_count":
                prefix = parse_qs(url.query).get("prefix", ["/"])[0]
                return self.reply(200, str(counter.count(prefix)).encode(), "text/plain", "no-store")
            counter.add(url.path)
            if url.path.startswith("/live/") and url.path.endswith(".m3u8"):
                return self.reply(200, PLAYLIST, "application/vnd.apple.mpegurl", "max-age=1")
            if url.path.startswith("/seg/"):
                return self.reply(200, SEGMENT, "video/mp2t", "max-age=86400")
            if url.path.startswith("/slow/"):
                time.sleep(delay)
                return self.reply(200, SLOW, "video/mp2t", "max-age=86400")
            return self.reply(404, b"not found\n", "text/plain", "max-age=1")

        def reply(self, status, body, ctype, cc):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cc)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=int, default=200)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(Counter(), args.delay_ms / 1000))
    server.daemon_threads = True
    server.request_queue_size = 4096
    server.serve_forever()


if __name__ == "__main__":
    main()
