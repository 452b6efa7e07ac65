#!/usr/bin/env python3
"""A flawed LLM upstream for the real-client end-to-end tests (Python 3 stdlib only).

It streams Server-Sent Events with the flaws seen in production, in two dialects:

  POST /v1/assistant/stream[/<scenario>]   the blog's assistant API: a JSON body such as
                                           {"q": "...", "scenario": "blog"} (the scenario
                                           comes from the last path segment, else from
                                           the body); events carry {"value": "<token>"}
  POST /v1/chat/completions                OpenAI-compatible, `stream: true`; the
                                           scenario is the request's `model`; events are
                                           `chat.completion.chunk` objects
  GET  /page/[index.html]                  the browser test's page (--page FILE)

Scenarios (the same flaws in both dialects):

  blog     every event is written as `data:\\n<json>` (the stray newline after `data:`),
           split across TCP writes, with `: ping` comments between tokens, and ends with
           `data:\\n[DONE]`; then the response ends
  linger   clean events and `data: [DONE]`, then the connection is kept open (the
           upstream never ends the response; it waits for the peer to close)
  no_done  clean events, the last one without its blank line, then the response ends
           without any `[DONE]`
  silent   two tokens, then nothing at all (never ends; waits for the peer to close)
  unicode  multi-byte UTF-8 tokens written so that the bytes of code points are split
           across separate chunked writes, flushed with small sleeps in between
  abandon  a long answer, a token every 100 ms for 6 s: the client leaves early, and the
           upstream must see its connection closed at once (no tokens generated for
           nobody); the end record says how many tokens were written
  pause    clean events with a 1.2 s pause after the fourth (a model thinking mid-answer,
           longer than the gateway's heartbeat), then `data: [DONE]`; the response ends

Every request is logged as one JSON line to --log (method, path, headers of interest,
body), and so is the end of each stream (`how`: complete, peer_closed or cap), so tests
can count upstream requests per page load and see when the gateway hung up.

  flawed_upstream.py --port-file FILE --log FILE [--page FILE]   serve on 127.0.0.1:0
  flawed_upstream.py --plan                                      print the tokens each
                                                                 scenario means to send
"""

import argparse
import itertools
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# What each scenario means to send, token by token: the clients must show exactly this.
PLAN = {
    "blog": ["Hello", ",", " world", "!", " Server", "-Sent", " Events", " stream",
             " through", " the", " \"gateway\"", "."],
    "linger": ["Still", " here", " after", " the", " end", "."],
    "no_done": ["The", " upstream", " forgot", " its", " terminator", "."],
    "silent": ["Thinking", "..."],
    "unicode": ["h\u00e9llo", " w\u00f6rld", " \U0001F30D", " \u65e5\u672c\u8a9e",
                " \u2014 na\u00efve caf\u00e9", " \U0001F468\u200D\U0001F469\u200D\U0001F467"],
    "abandon": ["Once"] + [" upon a time (%d)" % i for i in range(1, 60)],
    "pause": ["Let", " me", " think", "...", " done", "."],
}

TOKEN_INTERVAL = 0.03       # pause between tokens
SLOW_TOKEN_INTERVAL = 0.1   # abandon: pause between tokens
PIECE_INTERVAL = 0.01       # pause between the pieces of one split event
LONGEST_HOLD_SECONDS = 30   # linger/silent never hold a connection longer than this
PAUSE_SECONDS = 1.2         # pause: a model thinking mid-answer, past the heartbeat

_log_lock = threading.Lock()
_ids = itertools.count(1)



class Server(ThreadingHTTPServer):
    # Python's listen backlog of 5 overflows when the clients fire every scenario at
    # once; the kernel then resets connections that a model server (backlog in the
    # thousands) would have taken. The suite tests the gateway, not that.
    request_queue_size = 1024

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flawed-upstream/1"
    log_path = None
    page_path = None

    def setup(self):
        super().setup()
        # Each write leaves as its own TCP segment: the splits are the point.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        sys.stderr.write("flawed_upstream: " + (fmt % args) + "\n")

    def record(self, entry):
        entry["t"] = round(time.time(), 3)
        with _log_lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    # -- requests -----------------------------------------------------------------

    def do_GET(self):
        self.handle_request()

    def do_POST(self):
        self.handle_request()

    def handle_request(self):
        rid = next(_ids)
        self.written = 0
        raw = b""
        length = int(self.headers.get("content-length") or 0)
        if length:
            raw = self.rfile.read(length)
        elif "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            raw = self.read_chunked()
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            body = {"unparsable": raw.decode("utf-8", "replace")}
        url = urllib.parse.urlsplit(self.path)
        self.record({
            "id": rid,
            "event": "request",
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": {k: self.headers.get(k) for k in
                        ("accept", "content-type", "authorization", "x-forwarded-for",
                         "cookie", "origin")
                        if self.headers.get(k) is not None},
            "body": body,
        })
        try:
            if url.path in ("/page", "/page/", "/page/index.html") and self.command == "GET":
                self.serve_page()
            elif url.path == "/v1/chat/completions" and self.command == "POST":
                self.serve_openai(rid, body or {})
            elif (url.path == "/v1/assistant/stream" or url.path.startswith("/v1/assistant/stream/")) \
                    and self.command == "POST":
                self.serve_assistant(rid, url.path, body or {})
            else:
                self.send_json(404, {"error": {"type": "not_found", "message": "no such path: " + url.path}})
        except (BrokenPipeError, ConnectionResetError):
            self.record({"id": rid, "event": "end", "how": "peer_closed_while_writing",
                         "written": self.written})
            self.close_connection = True

    def read_chunked(self):
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    def send_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def serve_page(self):
        with open(self.page_path, "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    # -- the two dialects ---------------------------------------------------------

    def serve_assistant(self, rid, path, body):
        tail = path[len("/v1/assistant/stream"):].strip("/")
        scenario = tail or body.get("scenario")
        if scenario not in PLAN:
            self.send_json(404, {"error": {"type": "unknown_scenario", "message": repr(scenario)}})
            return

        def payload(token):
            return json.dumps({"value": token}, ensure_ascii=False)

        self.stream(rid, scenario, [payload(t) for t in PLAN[scenario]], final=None,
                    content_type="text/event-stream")

    def serve_openai(self, rid, body):
        model = body.get("model")
        if model not in PLAN:
            self.send_json(404, {"error": {"type": "invalid_request_error", "code": "model_not_found",
                                           "message": "The model %r does not exist" % model}})
            return
        if not body.get("stream"):
            self.send_json(400, {"error": {"type": "invalid_request_error",
                                           "message": "this upstream only streams"}})
            return
        created = int(time.time())
        cid = "chatcmpl-e2e-%d" % rid

        def chunk(delta, finish_reason=None):
            return json.dumps({
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }, ensure_ascii=False)

        first = [chunk({"role": "assistant", "content": ""})]
        tokens = [chunk({"content": t}) for t in PLAN[model]]
        # An upstream that dies (no_done) or stalls (silent) never sends its finish chunk.
        final = chunk({}, "stop") if model in ("blog", "linger", "unicode", "pause") else None
        self.stream(rid, model, first + tokens, final=final,
                    content_type="text/event-stream; charset=utf-8")

    # -- the flaws ----------------------------------------------------------------

    def stream(self, rid, scenario, datas, final, content_type):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if final is not None:
            datas = datas + [final]
        if scenario == "blog":
            for i, data in enumerate(datas):
                # The stray newline after `data:`, and the event split across writes
                # right where a per-chunk fix-up would look for it.
                self.pieces([b"data:", b"\n" + data.encode() + b"\n", b"\n"])
                if i % 3 == 1:
                    self.chunk(b": ping\n\n")
                time.sleep(TOKEN_INTERVAL)
            self.pieces([b"data:", b"\n[DONE]\n\n"])
            self.end_stream(rid, "complete")
        elif scenario == "linger":
            for data in datas:
                self.chunk(b"data: " + data.encode() + b"\n\n")
                time.sleep(TOKEN_INTERVAL)
            self.chunk(b"data: [DONE]\n\n")
            self.hold(rid)
        elif scenario == "no_done":
            for i, data in enumerate(datas):
                last = i == len(datas) - 1
                # The last event lacks its blank line: the upstream just stops.
                self.chunk(b"data: " + data.encode() + (b"\n" if last else b"\n\n"))
                time.sleep(TOKEN_INTERVAL)
            self.end_stream(rid, "complete")
        elif scenario == "silent":
            for data in datas:  # two tokens (OpenAI: after the role chunk), then nothing
                self.chunk(b"data: " + data.encode() + b"\n\n")
                time.sleep(TOKEN_INTERVAL)
            self.hold(rid)
        elif scenario == "abandon":
            for data in datas:
                self.chunk(b"data: " + data.encode() + b"\n\n")
                self.written += 1
                time.sleep(SLOW_TOKEN_INTERVAL)
            self.chunk(b"data: [DONE]\n\n")
            self.end_stream(rid, "complete")
        elif scenario == "pause":
            for i, data in enumerate(datas):
                self.chunk(b"data: " + data.encode() + b"\n\n")
                time.sleep(PAUSE_SECONDS if i == 3 else TOKEN_INTERVAL)
            self.chunk(b"data: [DONE]\n\n")
            self.end_stream(rid, "complete")
        elif scenario == "unicode":
            for data in datas:
                self.pieces(split_code_points(b"data: " + data.encode("utf-8") + b"\n\n"))
                time.sleep(TOKEN_INTERVAL)
            self.chunk(b"data: [DONE]\n\n")
            self.end_stream(rid, "complete")

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def pieces(self, parts):
        for i, part in enumerate(parts):
            if i:
                time.sleep(PIECE_INTERVAL)
            self.chunk(part)

    def end_stream(self, rid, how):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.record({"id": rid, "event": "end", "how": how, "written": self.written})

    def hold(self, rid):
        """Keep the response open, writing nothing, until the peer closes (or a cap)."""
        start = time.monotonic()
        sock = self.connection
        while time.monotonic() - start < LONGEST_HOLD_SECONDS:
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        break
                except OSError:
                    break
                time.sleep(0.1)  # bytes of a next request: not ours to read now
        else:
            self.record({"id": rid, "event": "end", "how": "cap",
                         "after_s": round(time.monotonic() - start, 2)})
            self.close_connection = True
            return
        self.record({"id": rid, "event": "end", "how": "peer_closed",
                     "after_s": round(time.monotonic() - start, 2)})
        self.close_connection = True


def split_code_points(data):
    """Split bytes so that every multi-byte UTF-8 code point is cut after its first byte."""
    parts, start = [], 0
    for i in range(len(data)):
        if data[i] >= 0xC0:  # a lead byte of a multi-byte sequence
            parts.append(data[start:i + 1])
            start = i + 1
    parts.append(data[start:])
    return [p for p in parts if p]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    ap.add_argument("--page")
    args = ap.parse_args()
    if args.plan:
        print(json.dumps(PLAN, ensure_ascii=False))
        return
    if not args.port_file or not args.log:
        ap.error("--port-file and --log are required")
    Handler.log_path = args.log
    Handler.page_path = args.page
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)  # a reader never sees half a port
    server.serve_forever()


if __name__ == "__main__":
    main()
