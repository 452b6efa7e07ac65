#!/usr/bin/env python3
"""Judges what each client showed (the observations written by py_clients.py, ai_sdk.mjs
and browser.mjs), prints the table (scenario x client, pass/FAIL with a short reason),
writes every verdict with its observation to --out, and ends with `N passed, M failed`.

  report.py --plan plan.json --mode presets|without-presets --scenarios clean,... \
      --result py.json --result ai.json --result browser=browser.json --out verdicts.json \
      [--expect-failures] [--started EPOCH] [--tests-started EPOCH]

What a user must see (docs/protocols.md):
  clean, repaired        the whole answer, every token in order, and success (a finish
                         reason / terminal event / stop reason; no error)
  truncated, idle,       an error, raised or reported (an error event or part), and never
  reset, upstream_error  the shortened answer reported as complete; upstream_error carries
                         the upstream's own message; in the presets mode truncated carries
                         the gateway's type `upstream_incomplete`
  502, 504               the SDK's status error with that status and the gateway's message
                         (the browser: a failed EventSource, the status and the
                         x-sse-gateway-error header)
and exactly one upstream request per call (no retries; none for 502).

--expect-failures turns the verdict around for the proof that the suite tests the
gateway (run with the truncated scenario without presets): every cell must FAIL, and for
the right reason: the client ended with the cut answer's text and no error. The exit
status is 0 only then.
"""

import argparse
import json
import sys
import time

CUT_SCENARIOS = ("truncated", "idle", "reset", "upstream_error")
STATUS_TYPE = {"502": "upstream_unavailable", "504": "upstream_timeout"}
UPSTREAM_ERROR_KEY = {"openai-chat": "chat", "ai-chat": "chat", "browser": "chat",
                      "openai-responses": "responses", "ai-responses": "responses",
                      "anthropic": "anthropic", "ai-anthropic": "anthropic"}


def clip(text, n=60):
    text = str(text).replace("\n", " ")
    return text if len(text) <= n else text[:n - 3] + "..."


def what_error(err):
    return "%s %s%s" % (err.get("kind"), err.get("class"),
                        (" [%s]" % err["type"]) if err.get("type") else "")


def gateway_message(err):
    """The message in the gateway's (or upstream's) JSON body, as the error carries it."""
    if err.get("body_message"):
        return err["body_message"]
    body = err.get("body")
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        return inner.get("message")
    return None


def judge(client, scenario, obs, plan, mode):
    full = "".join(plan["tokens"])
    text = obs.get("text") or ""
    err = obs.get("error")
    finish = obs.get("finish")
    if obs.get("note"):
        return False, obs["note"]
    if obs.get("hung"):
        return False, "hung: no end within 15 s"
    want_requests = 0 if scenario == "502" else 1
    if obs.get("upstream_requests") != want_requests:
        return False, "upstream saw %s requests (want %d)" % (obs.get("upstream_requests"), want_requests)
    if scenario in ("clean", "repaired"):
        if err:
            return False, "error: %s: %s" % (what_error(err), clip(err.get("message")))
        if text != full:
            return False, "text %r != the answer sent" % clip(text, 40)
        if not obs.get("complete"):
            return False, "not reported complete (finish %r)" % (finish,)
        return True, "whole answer, finish %s" % finish
    if scenario in CUT_SCENARIOS:
        if not full.startswith(text):
            return False, "text %r is not a prefix of the answer" % clip(text, 40)
        if obs.get("complete"):
            return False, "shortened answer (%d of %d chars) returned as complete (finish %r)" % (
                len(text), len(full), finish)
        if not err:
            return False, "no error: %d of %d chars, finish %r" % (len(text), len(full), finish)
        message = "%s %s" % (err.get("message"), err.get("type"))
        if scenario == "upstream_error":
            own = plan["errors"][UPSTREAM_ERROR_KEY[client]]
            if own not in message:
                return False, "%s without the upstream's message: %s" % (what_error(err), clip(err.get("message")))
        if scenario == "truncated" and mode == "presets" and "upstream_incomplete" not in message:
            return False, "%s without upstream_incomplete: %s" % (what_error(err), clip(err.get("message")))
        return True, what_error(err)
    if scenario in STATUS_TYPE:
        want_status, want_type = int(scenario), STATUS_TYPE[scenario]
        if not err:
            return False, "no error (finish %r)" % (finish,)
        if err.get("status") != want_status:
            return False, "%s with status %r (want %d)" % (what_error(err), err.get("status"), want_status)
        if client == "browser":
            if err.get("header") != want_type:
                return False, "x-sse-gateway-error %r (want %s)" % (err.get("header"), want_type)
            return True, "EventSource failed, %d %s" % (want_status, want_type)
        gm = gateway_message(err)
        if not gm or gm not in (err.get("message") or ""):
            return False, "%s without the gateway's message %r: %s" % (what_error(err), gm, clip(err.get("message")))
        if err.get("type") not in (None, want_type) and want_type not in (err.get("message") or ""):
            return False, "%s type %r (want %s)" % (what_error(err), err.get("type"), want_type)
        return True, "%s %d" % (err.get("class"), want_status)
    return False, "unknown scenario"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True)
    ap.add_argument("--mode", required=True, choices=["presets", "without-presets"])
    ap.add_argument("--scenarios", required=True)
    ap.add_argument("--result", action="append", default=[])
    ap.add_argument("--out")
    ap.add_argument("--expect-failures", action="store_true")
    ap.add_argument("--started", type=float)
    ap.add_argument("--tests-started", type=float)
    args = ap.parse_args()
    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    scenarios = args.scenarios.split(",")
    clients, versions = {}, {}
    for spec in args.result:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            data = {"results": {name or path: {s: {"note": "no result from the client (%s)" % e}
                                               for s in scenarios}}}
        versions.update(data.get("versions", {}))
        if name:  # one client per file
            clients[name] = data["results"]
        else:
            clients.update(data["results"])

    verdicts = {}
    passed = failed = 0
    as_expected = unexpected = 0
    cut_text = "".join(plan["tokens"][:plan["cut"]])
    for s in scenarios:
        for c, results in clients.items():
            obs = results.get(s) or {"note": "no result"}
            ok, reason = judge(c, s, obs, plan, args.mode)
            verdicts.setdefault(s, {})[c] = {"pass": ok, "reason": reason, "observed": obs}
            passed += ok
            failed += not ok
            if args.expect_failures:
                # Failed for the right reason: the client got the cut answer, no error,
                # and ended (not a hang, a crash or a missing result).
                right = (not ok and not obs.get("hung") and not obs.get("note") and not obs.get("error")
                         and obs.get("text") == cut_text)
                verdicts[s][c]["failed_as_expected"] = right
                as_expected += right
                unexpected += not right

    names = list(clients)
    width = max(len(s) for s in scenarios + ["scenario"])
    cols = [max(len(n), 4) for n in names]
    print()
    print("mode: %s; %s" % (args.mode, ", ".join("%s %s" % kv for kv in sorted(versions.items()))))
    print("%-*s  %s" % (width, "scenario", "  ".join("%-*s" % (w, n) for n, w in zip(names, cols))))
    print("%s  %s" % ("-" * width, "  ".join("-" * w for w in cols)))
    for s in scenarios:
        print("%-*s  %s" % (width, s, "  ".join(
            "%-*s" % (w, "pass" if verdicts[s][n]["pass"] else "FAIL") for n, w in zip(names, cols))))
    print()
    for s in scenarios:
        for n in names:
            v = verdicts[s][n]
            print("  %-4s %-*s %-16s %s" % ("pass" if v["pass"] else "FAIL", width, s, n, v["reason"]))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"mode": args.mode, "versions": versions, "verdicts": verdicts}, f, indent=2,
                      ensure_ascii=False, default=str)
    now = time.time()
    print()
    if args.tests_started:
        print("tests took %.1f s" % (now - args.tests_started))
    if args.started:
        print("total time %.1f s (installs and build included)" % (now - args.started))
    if args.expect_failures:
        # The proof: without the presets, every client must take the cut answer for a
        # whole one (its text, no error, an end).
        print("expected every row to FAIL without the presets, the cut answer taken for complete: "
              "%d as expected, %d not" % (as_expected, unexpected))
        for s in scenarios:
            for n in names:
                if not verdicts[s][n]["failed_as_expected"]:
                    print("  not as expected: %s %s: %s" % (s, n, verdicts[s][n]["reason"]))
        print("%d passed, %d failed" % (as_expected, unexpected))
        sys.exit(1 if unexpected else 0)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
