#!/usr/bin/env python3
"""The official `openai` Python SDK streams each scenario through the gateway's `openai`
route (the model name selects the upstream's flaw). Writes one result per scenario.

  openai_client.py --base-url http://127.0.0.1:PORT/v1 --log upstream.jsonl \
      --plan plan.json --out openai.json [--scenarios blog,linger,...]

Per scenario: the concatenated `delta.content` must equal what the upstream meant to
send, iteration must end (a watchdog turns a hang into a failure), the upstream must
have seen exactly one request (no SDK retries), and for `silent` the SDK must raise an
`openai.APIError` carrying the gateway's error body (`type: upstream_idle_timeout`).
For `abandon` the user stops after three tokens (`stream.close()`, what leaving a
`with` block does): the upstream must see its connection closed within a second.
"""

import argparse
import json
import threading
import time
import uuid

import openai
from openai import OpenAI

HANG_SECONDS = 12  # iteration not ended by then: a hang
LEAVE_AFTER = 3      # abandon: the user stops the answer after this many tokens
GONE_WITHIN = 1.0    # abandon: the upstream must see the close this soon (seconds)


def upstream_log(log):
    with open(log, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def upstream_requests(log, nonce):
    return [e for e in upstream_log(log)
            if e.get("event") == "request" and e.get("path") == "/v1/chat/completions"
            and nonce in json.dumps(e.get("body"), ensure_ascii=False)]


def stream_once(client, scenario, nonce, box):
    """Runs in a thread: what a user's code does, recording everything it sees."""
    box["parts"], box["finish_reasons"], box["ids"] = [], [], set()
    started = time.monotonic()
    try:
        stream = client.chat.completions.create(
            model=scenario,
            messages=[{"role": "user", "content": "e2e " + nonce}],
            stream=True,
        )
        for chunk in stream:
            box["ids"].add(chunk.id)
            for choice in chunk.choices:
                if choice.delta.content:
                    box["parts"].append(choice.delta.content)
                if choice.finish_reason:
                    box["finish_reasons"].append(choice.finish_reason)
            if scenario == "abandon" and len(box["parts"]) == LEAVE_AFTER:
                stream.close()
                box["left_at"] = time.time()
                break
        box["raised"] = None
    except Exception as e:  # noqa: BLE001 - recording what the SDK raises is the point
        box["raised"] = e
    box["seconds"] = round(time.monotonic() - started, 2)


def run(client, scenario, plan, log):
    nonce = uuid.uuid4().hex[:12]
    box = {}
    worker = threading.Thread(target=stream_once, args=(client, scenario, nonce, box), daemon=True)
    worker.start()
    worker.join(HANG_SECONDS)
    hung = worker.is_alive()
    leaving = scenario == "abandon"
    time.sleep(GONE_WITHIN + 0.2 if leaving else 0.3)  # let a retry (or the close) reach the log
    expected = plan[scenario][:LEAVE_AFTER] if leaving else plan[scenario]
    problems = []
    raised = box.get("raised")
    text = "".join(box.get("parts", []))
    if hung:
        problems.append("iteration did not end within %ds (hang)" % HANG_SECONDS)
    if text != "".join(expected):
        problems.append("content %r != sent %r" % (text, "".join(expected)))
    if scenario == "silent":
        body = getattr(raised, "body", None)
        if not isinstance(raised, openai.APIError):
            problems.append("want an openai.APIError, got %r" % (raised,))
        elif not (isinstance(body, dict) and body.get("type") == "upstream_idle_timeout"
                  and body.get("route") == "openai"):
            problems.append("APIError body %r lacks type upstream_idle_timeout on route openai" % (body,))
    elif raised is not None and not hung:
        problems.append("raised %s: %s" % (type(raised).__name__, raised))
    if not hung and scenario in ("blog", "linger", "unicode") and box.get("finish_reasons") != ["stop"]:
        problems.append("finish_reasons %r (want ['stop'])" % (box.get("finish_reasons"),))
    requests = upstream_requests(log, nonce)
    if len(requests) != 1:
        problems.append("upstream saw %d requests (want exactly 1)" % len(requests))
    else:
        r = requests[0]
        if r["headers"].get("authorization") != "Bearer test":
            problems.append("upstream authorization %r" % r["headers"].get("authorization"))
        if r["body"].get("stream") is not True or r["body"].get("model") != scenario:
            problems.append("upstream body %r" % r["body"])
    gone = None
    if leaving and len(requests) == 1 and box.get("left_at"):
        end = next((e for e in upstream_log(log) if e.get("event") == "end" and e["id"] == requests[0]["id"]), None)
        if end is None or not end["how"].startswith("peer_closed"):
            problems.append("the upstream did not see its connection closed after the user left: %r" % (end,))
        else:
            gone = {"how": end["how"], "ms_after_leaving": round((end["t"] - box["left_at"]) * 1000),
                    "written": end.get("written")}
            if end["t"] - box["left_at"] > GONE_WITHIN:
                problems.append("the upstream saw the close %d ms after the user left" % gone["ms_after_leaving"])
    return {
        "scenario": scenario,
        "pass": not problems,
        "problems": problems,
        "detail": {
            "seconds": box.get("seconds"),
            "content": text,
            "raised": None if raised is None else "%s: %s" % (type(raised).__name__, raised),
            "raised_body": getattr(raised, "body", None),
            "finish_reasons": box.get("finish_reasons"),
            "upstream_requests": len(requests),
            "upstream_after_leaving": gone,
        },
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--plan", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenarios")
    args = ap.parse_args()
    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    scenarios = args.scenarios.split(",") if args.scenarios else list(plan)
    # A user's client: defaults everywhere (retries included) but the base URL and key.
    client = OpenAI(base_url=args.base_url, api_key="test")
    results = {}
    # One thread per scenario, all at once: the slowest (silent, ~2 s) sets the pace.
    threads = {}
    for scenario in scenarios:
        t = threading.Thread(target=lambda s=scenario: results.__setitem__(s, run(client, s, plan, args.log)),
                             daemon=True)
        t.start()
        threads[scenario] = t
    for scenario, t in threads.items():
        t.join(HANG_SECONDS + 5)
        if scenario not in results:
            results[scenario] = {"scenario": scenario, "pass": False, "problems": ["runner stuck"]}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False, default=str)
    print("openai %s: %s" % (openai.__version__, ", ".join(
        "%s=%s" % (s, "pass" if results[s]["pass"] else "FAIL") for s in scenarios)))


if __name__ == "__main__":
    main()
