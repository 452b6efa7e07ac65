#!/usr/bin/env python3
"""The assistant for the resume end-to-end suite: a paced answer of numbered tokens,
and the page whose native EventSource reads it through the gateway.

  POST /v1/answer          {"q": ...}: `data: {"token": i}` for i in 1..N, then
                           `data: [DONE]`, one every --interval seconds; each request
                           is logged as one JSON line (q, whether it carried an id)
  GET  /page/index.html    the page (EventSource on ?stream=PATH, state in window.__e2e;
                           with keep=1 it does not close the EventSource at [DONE])

Binds 127.0.0.1:0 and writes its port to --port-file.
"""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>resume</title>
<pre id="answer"></pre>
<script>
const params = new URLSearchParams(location.search);
// keep=1: a page that does not close at [DONE], as many do not; EventSource then
// reconnects when the stream ends, and only a 204 makes it stop (readyState CLOSED).
const keep = params.get('keep') === '1';
const state = window.__e2e = { tokens: [], ids: [], opens: 0, errors: 0, done: false, closed: false };
const source = new EventSource(params.get('stream'));
source.onopen = () => { state.opens += 1; };
source.onerror = () => {
  state.errors += 1;
  if (source.readyState === EventSource.CLOSED) state.closed = true;
};
source.onmessage = (event) => {
  if (event.data === '[DONE]') {
    state.done = true;
    if (!keep) source.close();
    return;
  }
  state.tokens.push(JSON.parse(event.data).token);
  state.ids.push(event.lastEventId);
  document.getElementById('answer').textContent += ' ' + JSON.parse(event.data).token;
};
</script>
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--interval", type=float, default=0.15)
    args = parser.parse_args()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *_):
            pass

        def do_GET(self):
            if not self.path.startswith("/page/"):
                self.send_error(404)
                return
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with lock, open(args.log, "a", encoding="utf-8") as log:
                log.write(json.dumps({
                    "q": body.get("q"),
                    "body": body,
                    "last_event_id": self.headers.get("last-event-id"),
                    "t": time.time(),
                }) + "\n")
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            try:
                for token in range(1, args.tokens + 1):
                    self.wfile.write(b'data: {"token": %d}\n\n' % token)
                    self.wfile.flush()
                    time.sleep(args.interval)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(args.port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    import os
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
