#!/usr/bin/env python3
"""An OTLP/HTTP sink for the load benchmark's `--gateway-otlp`: answers 200 to every
POST after reading its body, and counts requests and bytes (printed on exit). It does
not decode: the benchmark measures what exporting costs the gateway, not a collector.

Usage: otlp_sink.py PORT
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNT = {"requests": 0, "bytes": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        COUNT["requests"] += 1
        COUNT["bytes"] += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    finally:
        print(f"otlp_sink: {COUNT['requests']} requests, {COUNT['bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
