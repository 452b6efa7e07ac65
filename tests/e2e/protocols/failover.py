#!/usr/bin/env python3
"""Failover with the official openai SDK: a route whose upstream's first endpoint
refuses connections (`failover-chat`, gateway_config.py) still gives a whole answer to
a client made with max_retries=0, because the gateway retries the request on the second
endpoint before anything reached the client. Checked from what the SDK returned (the
text and the finish_reason) and from the gateway's metrics (the refused attempt and the
retry were counted).

  failover.py --base http://127.0.0.1:PORT --admin http://127.0.0.1:ADMIN --plan plan.json

Prints PASS/FAIL per check and exits 1 when one failed.
"""

import argparse
import json
import re
import urllib.request

import openai

CALLS = 3


def metric(text, name, labels):
    """The value of the series `name` with exactly these labels; 0 when absent."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{([^}]*)\} (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if found == labels:
            return float(match.group(3))
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--plan", required=True)
    args = ap.parse_args()
    with open(args.plan) as f:
        answer = "".join(json.load(f)["tokens"])
    client = openai.OpenAI(base_url=args.base + "/failover/v1", api_key="test", max_retries=0)
    checks = []
    for i in range(CALLS):
        parts, finish, error = [], None, None
        try:
            stream = client.chat.completions.create(
                model="clean", messages=[{"role": "user", "content": "failover %d" % i}], stream=True)
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except Exception as e:  # what a user's code would see
            error = "%s: %s" % (type(e).__name__, e)
        text = "".join(parts)
        checks.append(("openai SDK (max_retries=0) call %d gets the whole answer, finish_reason stop" % (i + 1),
                       error is None and text == answer and finish == "stop",
                       error or "text %r, finish_reason %r" % (text, finish)))
    metrics = urllib.request.urlopen(args.admin + "/metrics", timeout=10).read().decode()
    refused = metric(metrics, "sse_gateway_upstream_attempts_total",
                     {"route": "failover-chat", "endpoint": "down", "result": "connect"})
    served = metric(metrics, "sse_gateway_upstream_attempts_total",
                    {"route": "failover-chat", "endpoint": "llm", "result": "success"})
    retried = metric(metrics, "sse_gateway_upstream_retries_total",
                     {"route": "failover-chat", "reason": "connect"})
    checks.append(("the refused endpoint was tried and the request retried",
                   refused >= 1 and retried == refused,
                   "attempts{down,connect}=%g retries{connect}=%g" % (refused, retried)))
    checks.append(("the second endpoint served every call", served == CALLS,
                   "attempts{llm,success}=%g" % served))
    failed = 0
    for name, ok, detail in checks:
        print("%s %s (%s)" % ("PASS" if ok else "FAIL", name, detail))
        failed += not ok
    print("failover: %d passed, %d failed" % (len(checks) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
