#!/usr/bin/env python3
"""Checks the spans receiver.py collected (stdlib only). Waits until the expected
server spans arrived, then prints one line per check: `ok<TAB>what` or
`fail<TAB>what: detail`.

Usage: check_spans.py SPANS_FILE CLIENT_TRACE_ID CLIENT_PARENT_ID UPSTREAM_TRACEPARENT MIN_SECONDS
"""

import json
import sys
import time


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    path, trace_id, parent_id, upstream_traceparent, min_seconds = sys.argv[1:6]
    min_seconds = float(min_seconds)
    deadline = time.monotonic() + 20
    while True:
        spans = load(path)
        servers = [s for s in spans if s["kind"] == "SPAN_KIND_SERVER"]
        if len(servers) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    time.sleep(1)  # anything late would be a second span for a stream
    spans = load(path)
    servers = [s for s in spans if s["kind"] == "SPAN_KIND_SERVER"]
    clients = [s for s in spans if s["kind"] == "SPAN_KIND_CLIENT"]
    results = []

    def check(what, ok, detail=""):
        results.append(("ok" if ok else "fail", what + ("" if ok else f": {detail}")))

    check("exactly one server span per stream (2 streams)", len(servers) == 2, f"{len(servers)}: {servers}")
    check("one client span per upstream request (2)", len(clients) == 2, f"{len(clients)}")
    traced = [s for s in servers if s["trace_id"] == trace_id]
    check("the curl stream's server span is in the client's trace", len(traced) == 1,
          f"trace ids {[s['trace_id'] for s in servers]}")
    if traced:
        span = traced[0]
        attrs = span["attributes"]
        seconds = (span["end_ns"] - span["start_ns"]) / 1e9
        check(f"its span covers the stream: {seconds:.2f}s >= {min_seconds}s", seconds >= min_seconds, f"{seconds}")
        check("its parent is the client's span", span["parent_span_id"] == parent_id, span["parent_span_id"])
        want = {
            "sse_gateway.route": "chat",
            "sse_gateway.upstream": "flaky",
            "http.response.status_code": 200,
            "sse_gateway.outcome": "terminator",
            "sse_gateway.events": 4,
            "sse_gateway.rules_hit": 0,
            "gen_ai.usage.input_tokens": 7,
            "gen_ai.usage.output_tokens": 2,
            "gen_ai.response.finish_reasons": ["stop"],
        }
        for key, value in want.items():
            check(f"attribute {key} = {value}", attrs.get(key) == value, f"{attrs.get(key)!r}")
        check("attribute sse_gateway.bytes > 0", (attrs.get("sse_gateway.bytes") or 0) > 0, attrs.get("sse_gateway.bytes"))
        ttfc = attrs.get("gen_ai.response.time_to_first_chunk")
        check(f"attribute gen_ai.response.time_to_first_chunk ({ttfc}) >= {min_seconds}",
              isinstance(ttfc, float) and ttfc >= min_seconds, repr(ttfc))
        check("span event terminator", span["events"] == ["terminator"], span["events"])
        check("service.name and the export header", span["service"] == "e2e-gateway" and span["api_key"] == "e2e-key",
              f'{span["service"]} {span["api_key"]}')
        child = [c for c in clients if c["parent_span_id"] == span["span_id"]]
        check("its client span is its child", len(child) == 1, f"{clients}")
        if child:
            parts = upstream_traceparent.split("-")
            check("the upstream's traceparent names the client span",
                  parts[1:3] == [trace_id, child[0]["span_id"]], upstream_traceparent)
    sdk = [s for s in servers if s["trace_id"] != trace_id]
    if sdk:
        attrs = sdk[0]["attributes"]
        check("the SDK stream's span has the upstream's usage the gateway asked for (7, 2)",
              (attrs.get("gen_ai.usage.input_tokens"), attrs.get("gen_ai.usage.output_tokens")) == (7, 2),
              f"{attrs}")
    for status, what in results:
        print(f"{status}\t{what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
