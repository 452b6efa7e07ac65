#!/usr/bin/env python3
"""A flawed LLM upstream that speaks three assistant protocols faithfully (Python 3
stdlib only), for the protocol end-to-end tests.

  POST /v1/chat/completions   OpenAI Chat Completions: `chat.completion.chunk` objects as
                              `data:` events, a last chunk with `finish_reason`, then
                              `data: [DONE]`
  POST /v1/responses          OpenAI Responses: named events (`response.created`, ...,
                              `response.output_text.delta`, ..., `response.completed`),
                              each with its `sequence_number`; no `[DONE]`
  POST /v1/messages           Anthropic Messages: `message_start`, `content_block_start`,
                              `event: ping` (data `{"type":"ping"}`),
                              `content_block_delta`s, `content_block_stop`,
                              `message_delta` (with `stop_reason`), `message_stop`

The scenario is the request's `model` (every SDK lets a user set it); a GET's query
string arrives as a JSON body of strings through the gateway's `query_as_json`, so
`stream` may be the string "true".

  clean           the whole answer, with the protocol's completion evidence and end
  repaired        the same, every `data:` line written as `data:\\n<json>` (the orphan
                  line an SSE client drops), each event split across TCP writes
  truncated       the first half of the answer, then the response ends cleanly (chunked
                  encoding completed): no finish_reason, no terminal event, no
                  stop_reason, no [DONE]
  idle            the first half, then no data: only keep-alives (comments; for
                  Anthropic `event: ping`) every 0.5 s for 6 s, then nothing until the
                  peer closes
  reset           the first half, then a TCP reset (SO_LINGER 0)
  upstream_error  the first half, then the protocol's own in-band error event, then the
                  response ends
  hang_headers    the request is read and no response headers are ever sent (the
                  gateway's header_timeout gives the 504)

Every request and the end of every stream are logged as JSON lines to --log, so the
clients can count the upstream requests their call made (no retries).

  GET /page/index.html        the browser test's page (--page FILE)

  upstream.py --port-file FILE --log FILE [--page FILE]   serve on 127.0.0.1:0
  upstream.py --plan                         the answer, token by token, and the part
                                             of it the cut scenarios send
"""

import argparse
import itertools
import json
import os
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKENS = ["The", " gateway", " keeps", " every", " token", ":", " h\u00e9llo", " w\u00f6rld",
          " \U0001F30D", ",", " in", " order", "."]
CUT = 6                      # truncated, idle, reset, upstream_error send TOKENS[:CUT]
SCENARIOS = ["clean", "repaired", "truncated", "idle", "reset", "upstream_error", "hang_headers"]
TOKEN_INTERVAL = 0.02        # between tokens
PIECE_INTERVAL = 0.005       # between the pieces of one split event (repaired)
KEEPALIVE_INTERVAL = 0.5     # idle: keep-alives this often...
KEEPALIVE_FOR = 6.0          # ...for this long, then silence
LONGEST_HOLD_SECONDS = 30    # a held connection is let go after this, whatever happens

# The upstreams' own in-band errors, each in its protocol's shape.
CHAT_ERROR = {"error": {"message": "The server had an error while processing your request (e2e).",
                        "type": "server_error", "param": None, "code": "server_error"}}
RESPONSES_ERROR_MESSAGE = "The model failed to generate a response (e2e)."
ANTHROPIC_ERROR = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded (e2e)"}}

_log_lock = threading.Lock()
_ids = itertools.count(1)



class Server(ThreadingHTTPServer):
    # Python's listen backlog of 5 overflows when the clients fire every scenario at
    # once; the kernel then resets connections that a model server (backlog in the
    # thousands) would have taken. The suite tests the gateway, not that.
    request_queue_size = 1024

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flawed-llm-upstream/1"
    log_path = None
    page_path = None

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream: " + (fmt % args) + "\n")

    def record(self, entry):
        entry["t"] = round(time.time(), 3)
        with _log_lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def do_GET(self):
        self.handle_request()

    def do_POST(self):
        self.handle_request()

    def handle_request(self):
        self.rid = next(_ids)
        raw = b""
        length = int(self.headers.get("content-length") or 0)
        if length:
            raw = self.rfile.read(length)
        elif "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            raw = self.read_chunked()
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError:
            body = {"unparsable": raw.decode("utf-8", "replace")}
        path = urllib.parse.urlsplit(self.path).path
        self.record({"id": self.rid, "event": "request", "method": self.command, "path": path,
                     "model": body.get("model") if isinstance(body, dict) else None,
                     "accept": self.headers.get("accept"), "body": body})
        if path in ("/page", "/page/", "/page/index.html") and self.command == "GET" and self.page_path:
            with open(self.page_path, "rb") as f:
                page = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(page)
            return
        protocol = {"/v1/chat/completions": "chat", "/v1/responses": "responses",
                    "/v1/messages": "anthropic"}.get(path)
        scenario = body.get("model") if isinstance(body, dict) else None
        try:
            if protocol is None:
                self.send_json(404, {"error": {"message": "no such path: " + path, "type": "not_found"}})
            elif scenario not in SCENARIOS:
                self.send_json(404, {"error": {"message": "The model %r does not exist" % (scenario,),
                                               "type": "invalid_request_error", "code": "model_not_found"}})
            elif str(body.get("stream")).lower() != "true":
                self.send_json(400, {"error": {"message": "this upstream only streams",
                                               "type": "invalid_request_error"}})
            elif scenario == "hang_headers":
                self.hold("no_headers")
            else:
                self.serve(protocol, scenario, body)
        except (BrokenPipeError, ConnectionResetError):
            self.record({"id": self.rid, "event": "end", "how": "peer_closed_while_writing"})
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

    # -- the three protocols: each a list of (event name or None, data) -----------------

    def serve(self, protocol, scenario, body):
        cut = scenario in ("truncated", "idle", "reset", "upstream_error")
        tokens = TOKENS[:CUT] if cut else TOKENS
        events = {"chat": chat_events, "responses": responses_events,
                  "anthropic": anthropic_events}[protocol](scenario, tokens, cut)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        for name, data in events:
            text = json.dumps(data, ensure_ascii=False) if not isinstance(data, str) else data
            if scenario == "repaired":
                # The orphan line: `data:` then the payload on a line of its own, and the
                # event split across writes right there.
                head = ("event: %s\n" % name if name else "").encode()
                self.pieces([head + b"data:", b"\n" + text.encode() + b"\n", b"\n"])
            else:
                self.chunk(("event: %s\n" % name if name else "").encode()
                           + b"data: " + text.encode() + b"\n\n")
            time.sleep(TOKEN_INTERVAL)
        if scenario == "idle":
            # Keep-alives that are not progress, then silence.
            ping = b"event: ping\ndata: {\"type\": \"ping\"}\n\n" if protocol == "anthropic" else b": keep-alive\n\n"
            start = time.monotonic()
            while time.monotonic() - start < KEEPALIVE_FOR:
                if self.peer_closed(KEEPALIVE_INTERVAL):
                    self.record({"id": self.rid, "event": "end", "how": "peer_closed"})
                    self.close_connection = True
                    return
                self.chunk(ping)
            self.hold("idle")
        elif scenario == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.record({"id": self.rid, "event": "end", "how": "reset"})
            self.connection.close()
            self.close_connection = True
        else:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self.record({"id": self.rid, "event": "end", "how": "ended"})

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def pieces(self, parts):
        for i, part in enumerate(parts):
            if i:
                time.sleep(PIECE_INTERVAL)
            self.chunk(part)

    def peer_closed(self, seconds):
        readable, _, _ = select.select([self.connection], [], [], seconds)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def hold(self, what):
        """Writes nothing more until the peer closes (or a cap)."""
        start = time.monotonic()
        while time.monotonic() - start < LONGEST_HOLD_SECONDS:
            if self.peer_closed(0.1):
                self.record({"id": self.rid, "event": "end", "how": "peer_closed", "holding": what,
                             "after_s": round(time.monotonic() - start, 2)})
                break
        else:
            self.record({"id": self.rid, "event": "end", "how": "cap", "holding": what})
        self.close_connection = True


def chat_events(scenario, tokens, cut):
    created = int(time.time())
    cid = "chatcmpl-e2e-%d" % created

    def chunk(delta, finish_reason=None):
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": scenario,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    events = [(None, chunk({"role": "assistant", "content": "", "refusal": None}))]
    events += [(None, chunk({"content": t})) for t in tokens]
    if scenario == "upstream_error":
        events.append((None, CHAT_ERROR))
    elif not cut:
        events.append((None, chunk({}, "stop")))
        events.append((None, "[DONE]"))
    return events


def responses_events(scenario, tokens, cut):
    created = int(time.time())
    rid, mid = "resp_e2e_%d" % created, "msg_e2e_%d" % created
    seq = itertools.count(0)

    def response(status, output, usage=None):
        return {"id": rid, "object": "response", "created_at": created, "status": status,
                "error": None, "incomplete_details": None, "instructions": None,
                "max_output_tokens": None, "model": scenario, "output": output,
                "parallel_tool_calls": True, "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
                "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
                "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
                "usage": usage, "user": None, "metadata": {}}

    def ev(kind, **fields):
        return (kind, dict({"type": kind, "sequence_number": next(seq)}, **fields))

    text = "".join(tokens)
    item = {"id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    events = [ev("response.created", response=response("in_progress", [])),
              ev("response.in_progress", response=response("in_progress", [])),
              ev("response.output_item.added", output_index=0, item=item),
              ev("response.content_part.added", item_id=mid, output_index=0, content_index=0, part=part)]
    events += [ev("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=t,
                  logprobs=[]) for t in tokens]
    if scenario == "upstream_error":
        events.append(ev("error", code="server_error", message=RESPONSES_ERROR_MESSAGE, param=None))
    elif not cut:
        done_part = dict(part, text=text)
        done_item = dict(item, status="completed", content=[done_part])
        usage = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": len(tokens), "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 12 + len(tokens)}
        events += [ev("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=text,
                      logprobs=[]),
                   ev("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=done_part),
                   ev("response.output_item.done", output_index=0, item=done_item),
                   ev("response.completed", response=response("completed", [done_item], usage))]
    return events


def anthropic_events(scenario, tokens, cut):
    mid = "msg_e2e_%d" % int(time.time())
    events = [("message_start", {"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": scenario, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": t}}) for t in tokens]
    if scenario == "upstream_error":
        events.append(("error", ANTHROPIC_ERROR))
    elif not cut:
        events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   ("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": len(tokens)}}),
                   ("message_stop", {"type": "message_stop"})]
    return events


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--port-file")
    ap.add_argument("--log")
    ap.add_argument("--page")
    args = ap.parse_args()
    if args.plan:
        print(json.dumps({"tokens": TOKENS, "cut": CUT,
                          "errors": {"chat": CHAT_ERROR["error"]["message"],
                                     "responses": RESPONSES_ERROR_MESSAGE,
                                     "anthropic": ANTHROPIC_ERROR["error"]["message"]}}, ensure_ascii=False))
        return
    if not args.port_file or not args.log:
        ap.error("--port-file and --log are required")
    Handler.log_path = args.log
    Handler.page_path = args.page
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
