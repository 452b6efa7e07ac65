#!/usr/bin/env python3
"""Prints the pass table (scenario x client), the problems of failed cells, and the
closing line `N passed, M failed`; exits 1 when anything failed.

  report.py --plan plan.json --result browser=browser.json --result openai-sdk=openai.json \
      [--extra NAME=pass|fail:why ...] [--started EPOCH] [--tests-started EPOCH]
"""

import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", required=True)
    ap.add_argument("--result", action="append", default=[])
    ap.add_argument("--extra", action="append", default=[])
    ap.add_argument("--started", type=float)
    ap.add_argument("--tests-started", type=float)
    args = ap.parse_args()
    with open(args.plan, encoding="utf-8") as f:
        scenarios = list(json.load(f))
    clients = []
    for spec in args.result:
        name, _, path = spec.partition("=")
        try:
            with open(path, encoding="utf-8") as f:
                results = json.load(f)
        except (OSError, ValueError) as e:
            results = {s: {"pass": False, "problems": ["no result from the client (%s)" % e]} for s in scenarios}
        clients.append((name, results))

    passed = failed = 0
    extra_names = [spec.partition("=")[0] for spec in args.extra]
    width = max(len(s) for s in scenarios + extra_names + ["scenario"])
    print()
    print("%-*s  %s" % (width, "scenario", "  ".join("%-10s" % c for c, _ in clients)))
    print("%s  %s" % ("-" * width, "  ".join("-" * 10 for _ in clients)))
    problems = []
    for s in scenarios:
        cells = []
        for name, results in clients:
            r = results.get(s) or {"pass": False, "problems": ["no result"]}
            if r.get("pass"):
                passed += 1
                cells.append("%-10s" % "pass")
            else:
                failed += 1
                cells.append("%-10s" % "FAIL")
                problems.append((s, name, r))
        print("%-*s  %s" % (width, s, "  ".join(cells)))
    for spec in args.extra:
        name, _, verdict = spec.partition("=")
        ok = verdict == "pass"
        passed += ok
        failed += not ok
        print("%-*s  %s" % (width, name, "pass" if ok else "FAIL  " + verdict.partition(":")[2]))
    for s, name, r in problems:
        print("\nFAIL %s / %s:" % (s, name))
        for p in r.get("problems", []):
            print("  - " + p)
        detail = r.get("detail")
        if detail:
            print("  detail: " + json.dumps(detail, ensure_ascii=False)[:1500])
    now = time.time()
    print()
    if args.tests_started:
        print("tests took %.1f s" % (now - args.tests_started))
    if args.started:
        print("total time %.1f s (installs and build included)" % (now - args.started))
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
