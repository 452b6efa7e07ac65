#!/usr/bin/env python3
"""A misbehaving text/event-stream upstream for tests/e2e/prometheus.sh (stdlib only).

Paths (matched by their last segment, so any route prefix in front works):
  .../done            three data events, then `data: [DONE]`, then the connection stays
                      open for a while: the gateway must end the stream at the terminator
  .../silent?seconds=N
                      two data events, then only `: ping` comments every 200 ms for N
                      seconds (default 60): the gateway counts it stuck, never idle-free
  .../idle            one data event, then nothing at all until the gateway gives up
  .../chat?first=S    (also .../chat/completions, the openai SDK's path)
                      an OpenAI Chat Completions stream: a role-only chunk, S seconds
                      (default 0) before the first token, two tokens 50 ms apart, the
                      finish_reason, then the usage chunk (prompt_tokens 7,
                      completion_tokens 2) only when the request body asked for it
                      (stream_options.include_usage), then [DONE]
  .../cut             a Chat Completions stream cut after its first token: no
                      finish_reason, the connection closes
  .../error500        a 500 with a JSON error body, as an assistant that fails answers
Anything else is a 404.

Usage: flaky_upstream.py PORT_FILE   binds 127.0.0.1:0 and writes the port to PORT_FILE.
"""

import json
import os
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Never hold a stream open longer than this, whatever a query asks: the script's
# processes must end even if the gateway misbehaves.
LONGEST_STREAM_SECONDS = 200


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 style: the body ends when the connection closes, no chunked encoding.
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):
        sys.stderr.write("flaky_upstream: " + (fmt % args) + "\n")

    def do_GET(self):
        self.serve()

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.serve()

    body = b""

    def serve(self):
        url = urllib.parse.urlsplit(self.path)
        kind = url.path.rstrip("/").rsplit("/", 1)[-1]
        if kind == "completions":  # the openai SDK's `/chat/completions`
            kind = "chat"
        query = urllib.parse.parse_qs(url.query)
        if self.headers.get("traceparent"):
            self.log_message("traceparent %s", self.headers["traceparent"])
        if kind == "error500":
            body = b'{"error":{"message":"the model failed","type":"server_error"}}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if kind not in ("done", "silent", "idle", "chat", "cut"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if kind == "done":
                for token in ("Hel", "lo", "!"):
                    self.event('data: {"value":"%s"}' % token)
                self.event("data: [DONE]")
                self.hold(10)
            elif kind == "silent":
                seconds = float(query.get("seconds", ["60"])[0])
                self.event('data: {"value":"thinking"}')
                self.event('data: {"value":"..."}')
                deadline = time.monotonic() + min(seconds, LONGEST_STREAM_SECONDS)
                while time.monotonic() < deadline:
                    time.sleep(0.2)
                    self.write(b": ping\n\n")
            elif kind in ("chat", "cut"):
                self.chat(kind == "cut", float(query.get("first", ["0"])[0]))
            else:  # idle
                self.event('data: {"value":"one"}')
                self.hold(LONGEST_STREAM_SECONDS)
        except (BrokenPipeError, ConnectionResetError):
            # The gateway dropped the upstream request: exactly what it should do
            # when its client leaves or a stream ends.
            pass

    def chat(self, cut, first):
        def chunk(delta, finish=None, choices=True, usage=None):
            body = {"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 1,
                    "model": "e2e", "choices": []}
            if choices:
                body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
            if usage is not None:
                body["usage"] = usage
            self.event("data: " + json.dumps(body))
        try:
            request = json.loads(self.body or b"{}")
        except ValueError:
            request = {}
        options = request.get("stream_options") or {}
        chunk({"role": "assistant", "content": ""})
        time.sleep(min(first, LONGEST_STREAM_SECONDS))
        chunk({"content": "Hel"})
        if cut:
            return
        time.sleep(0.05)
        chunk({"content": "lo"})
        chunk({}, finish="stop")
        if options.get("include_usage") is True:
            chunk(None, choices=False,
                  usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9})
        self.event("data: [DONE]")

    def event(self, text):
        self.write(text.encode() + b"\n\n")

    def write(self, data):
        self.wfile.write(data)
        self.wfile.flush()

    def hold(self, seconds):
        """Keep the connection open without writing, noticing when the peer closes."""
        deadline = time.monotonic() + seconds
        self.connection.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                if self.connection.recv(1) == b"":
                    return
            except TimeoutError:
                continue
            except OSError:
                return


def serve(handler, port_file, **attributes):
    """Serves `handler` on 127.0.0.1:0, one thread per connection, after writing the
    port to `port_file`; `attributes` are set on the server. Also used by other e2e
    servers (tests/e2e/telemetry/receiver.py)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    for name, value in attributes.items():
        setattr(server, name, value)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    # Renamed into place, so a reader never sees a half-written port.
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: flaky_upstream.py PORT_FILE")
    serve(Handler, sys.argv[1])


if __name__ == "__main__":
    main()
