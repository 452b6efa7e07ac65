#!/usr/bin/env python3
"""Writes the gateway config of the protocol end-to-end tests (stdout), in one of two
variants:

  presets          each route says its protocol (`stream.protocol: openai-chat`,
                   `openai-responses`, `anthropic`): the gateway knows the terminator,
                   the completion evidence and the error shapes (docs/protocols.md)
  without-presets  the same routes as the generic gateway is configured today (README):
                   no `protocol` key, each route with the terminator its protocol would
                   need (`data: [DONE]`, `event: response.completed`,
                   `event: message_stop`); `[DONE]` is synthesized at the upstream's end
                   (the default), the event terminators are not (their empty data is
                   not JSON to the SDKs); with --sse-key each route says `protocol: sse`
                   (the default), for a gateway that knows the key

  gateway_config.py --mode presets --port P --admin-port A --upstream-port U --refused-port R

Routes (the same in both variants):
  /v1/chat/completions        -> llm, openai-chat
  /v1/responses               -> llm, openai-responses
  /v1/messages                -> llm, anthropic
  /browser/chat (GET)         -> llm POST /v1/chat/completions, query as JSON, openai-chat
  /page (GET)                 -> llm, the browser test's page (same origin)
  /down/...                   the same four, to an upstream that refuses connections (502)
  /failover/v1/chat/completions  (presets) -> failover, openai-chat with retry: an upstream
                              whose first endpoint refuses connections and whose second is
                              llm (failover.py)
The llm upstream's header_timeout is 2 s (the model `hang_headers` gets the 504), and
every stream's idle_timeout is 2 s.
"""

import argparse

PROTOCOL_TERMINATOR = {
    "openai-chat": '{ data: "[DONE]" }',
    # An event terminator is synthesized with empty data, which the Responses and
    # Anthropic SDKs fail to parse (a JSON error, not an error report: see README.md), so a
    # generic route for these protocols turns synthesis off.
    "openai-responses": "{ event: response.completed, on_upstream_eof: none }",
    "anthropic": "{ event: message_stop, on_upstream_eof: none }",
}

ROUTES = [
    # name, match path prefix, protocol, browser (GET -> POST with the query as JSON)
    ("chat", "/v1/chat/completions", "openai-chat", False),
    ("responses", "/v1/responses", "openai-responses", False),
    ("messages", "/v1/messages", "anthropic", False),
    ("browser", "/browser/chat", "openai-chat", True),
]


def route(name, prefix, protocol, browser, upstream, presets, sse_key):
    lines = ["  - name: %s" % name]
    if browser:
        lines += ["    match: { path_prefix: %s, methods: [GET] }" % prefix,
                  "    upstream: %s" % upstream,
                  "    request:",
                  "      path_prefix: /v1/chat/completions",
                  "      method: POST",
                  "      body: query_as_json",
                  "      headers:",
                  "        set:",
                  "          accept: text/event-stream"]
    else:
        lines += ["    match: { path_prefix: %s }" % prefix,
                  "    upstream: %s" % upstream]
    lines.append("    stream:")
    if presets:
        lines.append("      protocol: %s" % protocol)
    else:
        if sse_key:
            lines.append("      protocol: sse")
        lines.append("      terminator: %s" % PROTOCOL_TERMINATOR[protocol])
    lines += ["      rules:",
              "        - repair: orphan_lines",
              "      idle_timeout: 2s",
              "      stuck_after: 1s",
              "      heartbeat: 500ms",
              "      max_duration: 60s"]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["presets", "without-presets"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin-port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--refused-port", type=int, required=True)
    ap.add_argument("--sse-key", action="store_true",
                    help="without-presets: say `protocol: sse` (for a gateway that knows the key)")
    args = ap.parse_args()
    presets = args.mode == "presets"
    out = ["# protocol e2e tests, variant: %s" % args.mode,
           "listen: 127.0.0.1:%d" % args.port,
           "admin:",
           "  listen: 127.0.0.1:%d" % args.admin_port,
           "log:",
           "  format: json",
           "  level: info",
           "upstreams:",
           "  llm:",
           "    url: http://127.0.0.1:%d" % args.upstream_port,
           "    connect_timeout: 2s",
           "    header_timeout: 2s",
           "  down:                              # nothing listens there: connection refused",
           "    url: http://127.0.0.1:%d" % args.refused_port,
           "    connect_timeout: 2s",
           "    header_timeout: 2s",
           ]
    if presets:
        out += ["  failover:                          # the first endpoint refuses, the second is llm",
                "    endpoints:",
                "      - { name: down, url: \"http://127.0.0.1:%d\" }" % args.refused_port,
                "      - { name: llm, url: \"http://127.0.0.1:%d\" }" % args.upstream_port,
                "    connect_timeout: 2s",
                "    header_timeout: 2s"]
    out += ["routes:"]
    for name, prefix, protocol, browser in ROUTES:
        out += route(name, prefix, protocol, browser, "llm", presets, args.sse_key)
        out += route("down-" + name, "/down" + prefix, protocol, browser, "down", presets, args.sse_key)
    if presets:
        out += route("failover-chat", "/failover/v1/chat/completions", "openai-chat", False,
                     "failover", presets, args.sse_key)
        out += ["    request: { path_prefix: /v1/chat/completions }",
                "    retry: { attempts: 2 }"]
    out += ["  - name: page                       # the browser's page, same origin as its EventSource",
            "    match: { path_prefix: /page, methods: [GET] }",
            "    upstream: llm"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
