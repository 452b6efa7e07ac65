#!/usr/bin/env bash
# End to end with a real Prometheus: the gateway's metrics, the Grafana dashboard's
# queries and the alert rules, against live streams.
#
#   bash tests/e2e/prometheus.sh          (from the repository root)
#
# 1. promtool: `check rules` and `test rules` on deploy/prometheus/.
# 2. Builds the gateway (cargo build --release; CARGO_TARGET_DIR is honoured).
# 3. On 127.0.0.1, free ports: tests/e2e/flaky_upstream.py, the gateway (a config in a
#    temp dir: a demo route, routes to the flaky upstream, a route to a closed port)
#    and Prometheus (scrape and rule evaluation every second, deploy's alerts loaded).
# 4. Drives streams (N demo streams to [DONE], one stuck stream held open, one idle
#    timeout, one early terminator, upstream connect errors, a broken config reload),
#    then asks Prometheus's HTTP API: stuck gauge, outcome counts, every dashboard
#    and alert expression non-empty, every alert pending or firing (the gateway-down
#    alert: quiet while the gateway runs, pending once it stopped).
#
# Installs Debian's prometheus package when prometheus or promtool is missing (needs
# root or sudo). Prints PASS/FAIL per check and ends with "N passed, M failed".
# E2E_KEEP_TMP=1 keeps the temp dir (logs, configs, TSDB); it is kept on failure.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh

DEMO_STREAMS=5           # demo streams driven to the terminator
CONNECT_ERRORS=60        # requests to a closed port: 60 in 5m is 0.2/s, above the alert's 0.1/s
TIME_LIMIT=240           # seconds for everything after the build

# --- tools ---------------------------------------------------------------------------
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    e2e_log "installing Debian's prometheus package"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    timeout 600 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    timeout 600 $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
for tool in prometheus promtool python3 curl cargo; do
    if ! command -v "$tool" >/dev/null; then
        printf 'FAIL %s is not installed\n0 passed, 1 failed\n' "$tool"
        exit 1
    fi
done

e2e_init
e2e_log "temp dir $E2E_TMP; $(promtool --version 2>&1 | head -n 1)"

# --- 1. promtool ---------------------------------------------------------------------
e2e_check "promtool check rules deploy/prometheus/alerts.yaml" \
    timeout 60 promtool check rules deploy/prometheus/alerts.yaml
e2e_check "promtool test rules deploy/prometheus/alerts_test.yaml" \
    timeout 120 promtool test rules deploy/prometheus/alerts_test.yaml

# --- 2. build ------------------------------------------------------------------------
if ! e2e_build_gateway; then
    e2e_fail "cargo build --release"
    e2e_finish
    exit 1
fi

# From here on, a watchdog bounds the run.
STARTED=$SECONDS
# It ends its own sleep when cleanup stops it, so nothing outlives the script.
(
    sleep "$TIME_LIMIT" &
    sleeper=$!
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    wait "$sleeper" && kill -TERM $$
) 2>/dev/null &
E2E_PIDS+=("$!")

# --- 3. processes --------------------------------------------------------------------
PUBLIC_PORT=$(e2e_free_port)
ADMIN_PORT=$(e2e_free_port)
PROM_PORT=$(e2e_free_port)
CLOSED_PORT=$(e2e_free_port)   # nothing listens here: connect errors
GW="http://127.0.0.1:$PUBLIC_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
export PROM_URL="http://127.0.0.1:$PROM_PORT"

e2e_spawn upstream python3 tests/e2e/flaky_upstream.py "$E2E_TMP/upstream.port"
e2e_wait 10 test -s "$E2E_TMP/upstream.port" || { e2e_fail "flaky upstream starts"; e2e_finish; exit 1; }
UPSTREAM_PORT=$(cat "$E2E_TMP/upstream.port")

CONFIG="$E2E_TMP/gateway.yaml"
write_config() {
    cat <<EOF
listen: 127.0.0.1:$PUBLIC_PORT
admin:
  listen: 127.0.0.1:$ADMIN_PORT
drain_timeout: 5s
log:
  format: json
  level: info
upstreams:
  demo:
    demo:
      token_interval: 5ms
  flaky:
    url: http://127.0.0.1:$UPSTREAM_PORT
    connect_timeout: 1s
    header_timeout: 5s
  closed:
    url: http://127.0.0.1:$CLOSED_PORT
    connect_timeout: 1s
  # the first endpoint refuses connections, the second answers: one endpoint out
  pair:
    endpoints:
      - { name: down, url: "http://127.0.0.1:$CLOSED_PORT" }
      - { name: up, url: "http://127.0.0.1:$UPSTREAM_PORT" }
    connect_timeout: 1s
    health: { failures: 1, cooldown: 60s }
# Nothing listens there: every resume store write fails, and is counted.
state:
  redis: { url: "redis://127.0.0.1:$CLOSED_PORT" }
routes:
  - name: demo
    match: { path_prefix: /api/stream, methods: [GET, POST] }
    upstream: demo
    request:
      path_prefix: /v1/assistant/stream
      method: POST
      body: query_as_json
      headers:
        set: { accept: text/event-stream }
    stream:
      rules:
        - repair: orphan_lines
        - drop: { pattern: '^:', name: upstream-pings }
      terminator: { data: "[DONE]" }
    limits: { max_streams: 100 }
  # idle (one event, then silence) and done (an early terminator)
  - name: flaky
    match: { path_prefix: /flaky }
    upstream: flaky
    stream:
      terminator: { data: "[DONE]" }
      stuck_after: 1s
      idle_timeout: 3s
      heartbeat: 500ms
  # silent (pings only): stuck, with time to look before any timeout
  - name: stuck
    match: { path_prefix: /stuck }
    upstream: flaky
    stream:
      rules:
        - drop: { pattern: '^:', name: upstream-pings }
      terminator: { data: "[DONE]" }
      stuck_after: 1s
      idle_timeout: 200s
      heartbeat: 500ms
    # the stuck stream holds the one slot: a second request is refused
    limits: { max_streams: 1 }
  # resumable, with a Redis that is down: the streams go on, the store errors count
  - name: resumable
    match: { path_prefix: /resumable }
    upstream: demo
    request:
      path_prefix: /v1/assistant/stream
      method: POST
      body: query_as_json
    stream:
      rules:
        - repair: orphan_lines
      terminator: { data: "[DONE]" }
      resume: { store: redis }
  - name: closed
    match: { path_prefix: /closed }
    upstream: closed
  - name: pair
    match: { path_prefix: /pair }
    upstream: pair
    stream:
      terminator: { data: "[DONE]" }
    retry: {}
  # Chat Completions with usage asked for by the gateway: tokens, time to first token,
  # and a truncated answer
  - name: chat
    match: { path_prefix: /chat }
    upstream: flaky
    stream:
      protocol: openai-chat
      usage: request
  # an answer whose first token takes 11 s: the slow-first-token alert
  - name: slow
    match: { path_prefix: /slow }
    upstream: flaky
    stream:
      protocol: openai-chat
EOF
}
write_config >"$CONFIG"
e2e_check "sse-gateway check accepts the test config" "$GATEWAY" check --config "$CONFIG"

e2e_spawn gateway "$GATEWAY" --config "$CONFIG"
GATEWAY_PID=$E2E_LAST_PID
if ! e2e_wait 15 e2e_http_ok "$ADMIN/readyz"; then
    e2e_fail "gateway becomes ready"
    tail -n 20 "$E2E_TMP/gateway.log"
    e2e_finish
    exit 1
fi

mkdir -p "$E2E_TMP/tsdb"
cat >"$E2E_TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/alerts.yaml
scrape_configs:
  - job_name: sse-gateway
    static_configs:
      - targets: ["127.0.0.1:$ADMIN_PORT"]
EOF
e2e_spawn prometheus prometheus \
    --config.file="$E2E_TMP/prometheus.yml" \
    --storage.tsdb.path="$E2E_TMP/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" \
    --log.level=warn
if ! e2e_wait 30 e2e_http_ok "$PROM_URL/-/ready"; then
    e2e_fail "prometheus becomes ready"
    tail -n 20 "$E2E_TMP/prometheus.log"
    e2e_finish
    exit 1
fi

# The Prometheus HTTP API client: a few subcommands over urllib and json.
cat >"$E2E_TMP/prom.py" <<'PY'
import json, os, re, sys, time, urllib.parse, urllib.request

BASE = os.environ["PROM_URL"]

def api(path, **params):
    url = BASE + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]

def query(expr):
    """Instant query: (list of (labels, value)) or raises on a PromQL error."""
    data = api("/api/v1/query", query=expr)
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]

def one_value(expr):
    result = query(expr)
    if len(result) != 1:
        return None
    return result[0][1]

def cmd_wait_value(expr, want, seconds):
    """Polls until the expression has one sample equal to want."""
    deadline = time.monotonic() + float(seconds)
    seen = None
    while True:
        try:
            seen = one_value(expr)
        except Exception as error:  # noqa: BLE001 (reported below)
            seen = f"error: {error}"
        if seen == float(want):
            print(f"{expr} = {want}")
            return 0
        if time.monotonic() > deadline:
            print(f"{expr}: want {want}, last seen {seen}")
            return 1
        time.sleep(0.25)

def cmd_outcomes(want, seconds):
    """Polls until the non-zero outcome counts by route are exactly `want`
    ("route/outcome=count,...")."""
    expect = dict(item.split("=") for item in want.split(","))
    expect = {k: float(v) for k, v in expect.items()}
    deadline = time.monotonic() + float(seconds)
    while True:
        got = {f'{m["route"]}/{m["outcome"]}': v for m, v in
               query("sum by (route, outcome) (sse_gateway_stream_duration_seconds_count) > 0")}
        if got == expect or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    print("counted: " + ", ".join(f"{k}={v:g}" for k, v in sorted(got.items())))
    if got != expect:
        print("wanted:  " + ", ".join(f"{k}={v:g}" for k, v in sorted(expect.items())))
        return 1
    return 0

def dashboard_exprs(path):
    with open(path) as f:
        dashboard = json.load(f)
    found = []
    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel.get("title", "?"), target.get("expr", "")))
            walk(panel.get("panels", []))
    walk(dashboard.get("panels", []))
    return found

# Alerts whose condition is the gateway being gone: they must return nothing while it
# runs (checked apart, with `quiet`), and go pending once it stops.
QUIET_WHILE_UP = {"SseGatewayDown"}

def cmd_quiet():
    """One line per QUIET_WHILE_UP alert: `ok` when its expression returns nothing."""
    for group in api("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            if rule["name"] in QUIET_WHILE_UP:
                result = query(rule["query"])
                status = "empty" if not result else f"{len(result)} series"
                print(f'{"ok" if not result else "fail"}\talert {rule["name"]}: {status}')
    return 0

def substitute(expr):
    # Grafana's variables, as "All" and a 1m interval would expand them.
    expr = re.sub(r"\$\{?route\}?", ".*", expr)
    return re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "1m", expr)

def cmd_nonempty(dashboard, seconds):
    """One line per expression: `ok`, `empty` or `error`, after waiting up to `seconds`
    for all of them to return data (rates need two scrapes)."""
    exprs = [(f"dashboard: {title}", substitute(e)) for title, e in dashboard_exprs(dashboard)]
    for group in api("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            if rule["name"] in QUIET_WHILE_UP:
                continue
            exprs.append((f'alert {rule["name"]}', rule["query"]))
    deadline = time.monotonic() + float(seconds)
    state = {}
    while True:
        for name, expr in exprs:
            if state.get(expr, ("",))[0] == "ok":
                continue
            try:
                result = query(expr)
                state[expr] = ("ok", f"{len(result)} series") if result else ("empty", "no data")
            except Exception as error:  # noqa: BLE001 (reported)
                state[expr] = ("error", str(error))
        if all(s[0] == "ok" for s in state.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for name, expr in exprs:
        status, detail = state[expr]
        print(f"{status}\t{name}: {expr}\t{detail}")
    return 0

def cmd_rules():
    for group in api("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            print(f'{rule["name"]}\t{rule["health"]}\t{rule.get("lastError", "")}')
    return 0

def cmd_wait_alerts(names, seconds):
    """Polls until every named alert is pending or firing; prints each one's state."""
    names = names.split(",")
    deadline = time.monotonic() + float(seconds)
    while True:
        states = {}
        for alert in api("/api/v1/alerts")["alerts"]:
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        if all(n in states for n in names) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for name in names:
        print(f'{name}\t{",".join(sorted(states.get(name, {"inactive"})))}')
    return 0

def cmd_label_values(label, match):
    print(" ".join(sorted(api(f"/api/v1/label/{label}/values", **{"match[]": match}))))
    return 0

if __name__ == "__main__":
    command, args = sys.argv[1].replace("-", "_"), sys.argv[2:]
    sys.exit(globals()["cmd_" + command](*args))
PY
prom() { timeout 120 python3 "$E2E_TMP/prom.py" "$@"; }

e2e_check "prometheus scrapes the gateway's admin port" \
    prom wait-value "up{job=\"sse-gateway\"}" 1 20

# --- 4. drive streams ----------------------------------------------------------------
# A broken config: the gateway must keep the running one and count a failure. Renamed
# into place, as the kubelet swaps a ConfigMap, so the gateway never reads half a file.
write_config | sed 's/^    upstream: closed$/    upstream: no-such-upstream/' >"$CONFIG.new"
mv "$CONFIG.new" "$CONFIG"

# The stuck stream: two data events, then pings only, held open until we end it.
STUCK_OUT="$E2E_TMP/stuck.out"
e2e_spawn stuck-client curl -sN --max-time 200 -o "$STUCK_OUT" "$GW/stuck/silent?seconds=195"
STUCK_CLIENT_PID=$E2E_LAST_PID

# The slow answer: its first token after 11 s, past the alert's 10 s.
SLOW_OUT="$E2E_TMP/slow.out"
e2e_spawn slow-client curl -sN --max-time 40 -o "$SLOW_OUT" "$GW/slow/chat?first=11"
SLOW_CLIENT_PID=$E2E_LAST_PID

# The idle stream: one event, then silence until idle_timeout (3s) ends it.
IDLE_OUT="$E2E_TMP/idle.out"
e2e_spawn idle-client curl -sN --max-time 20 -o "$IDLE_OUT" "$GW/flaky/idle"
IDLE_CLIENT_PID=$E2E_LAST_PID

demo_ok=0
for i in $(seq "$DEMO_STREAMS"); do
    out="$E2E_TMP/demo-$i.out"
    if curl -sN --max-time 30 -o "$out" "$GW/api/stream?q=hello+$i" &&
        [ "$(grep -v '^$' "$out" | tail -n 1)" = "data:[DONE]" ]; then
        demo_ok=$((demo_ok + 1))
    fi
done
e2e_check "$DEMO_STREAMS demo streams end with data:[DONE] ($demo_ok did)" test "$demo_ok" = "$DEMO_STREAMS"

# Two Chat Completions answers from a client that did not ask for usage, and one cut
# after its first token.
CHAT_BODY='{"model":"e2e","messages":[{"role":"user","content":"hi"}],"stream":true}'
chat_ok=0
for i in 1 2; do
    out="$E2E_TMP/chat-$i.out"
    if curl -sN --max-time 30 -o "$out" -H 'content-type: application/json' -d "$CHAT_BODY" "$GW/chat/v1/chat/completions/chat" &&
        grep -q '"content": "lo"' "$out" && [ "$(grep -v '^$' "$out" | tail -n 1)" = "data: [DONE]" ] &&
        ! grep -q '"usage"' "$out"; then
        chat_ok=$((chat_ok + 1))
    fi
done
e2e_check "2 chat answers end with [DONE], without the usage chunk the gateway asked for ($chat_ok did)" test "$chat_ok" = 2
curl -sN --max-time 30 -o "$E2E_TMP/cut.out" -H 'content-type: application/json' -d "$CHAT_BODY" "$GW/chat/v1/chat/completions/cut" || true
e2e_check "the cut answer ends with an upstream_incomplete error event" \
    grep -q 'upstream_incomplete' "$E2E_TMP/cut.out"
resumable_ok=0
for i in 1 2 3; do
    out="$E2E_TMP/resumable-$i.out"
    # Every event with data carries the gateway's id: KEY (22 characters of base64url)
    # - SEQ.
    if curl -sN --max-time 30 -o "$out" "$GW/resumable/x?q=hello+$i" &&
        grep -q '^data: *\[DONE\]$' "$out" && python3 - "$out" <<'PY'; then
import re, sys
events = [e for e in open(sys.argv[1]).read().split("\n\n") if re.search(r"^data:", e, re.M)]
ids = re.compile(r"^id: [A-Za-z0-9_-]{22}-[0-9]+$", re.M)
sys.exit(0 if events and all(ids.search(e) for e in events) else 1)
PY
        resumable_ok=$((resumable_ok + 1))
    fi
done
e2e_check "3 resumable streams with Redis down end with data:[DONE], every event with an id ($resumable_ok did)" \
    test "$resumable_ok" = 3
e2e_check "the failed Redis writes are counted in resume_store_errors_total" \
    prom wait-value 'sse_gateway_resume_store_errors_total{route="resumable"} > bool 0' 1 20

done_started=$SECONDS
curl -sN --max-time 15 -o "$E2E_TMP/done.out" "$GW/flaky/done" || true
done_took=$((SECONDS - done_started))
e2e_check "the terminator ends the response although the upstream stays open (${done_took}s)" \
    bash -c "grep -q '^data: \[DONE\]' '$E2E_TMP/done.out' && [ $done_took -le 5 ]"

closed_urls=()
for i in $(seq "$CONNECT_ERRORS"); do
    closed_urls+=(-o /dev/null "$GW/closed/x?i=$i")
done
codes=$(curl -s --max-time 60 -w '%{http_code}\n' "${closed_urls[@]}" | sort | uniq -c | tr -s ' ')
e2e_check "$CONNECT_ERRORS requests to a closed upstream port get 502 (got:$codes)" \
    test "$codes" = " $CONNECT_ERRORS 502"

e2e_check "connect errors counted: upstream_errors_total{route=\"closed\",kind=\"connect\"} = $CONNECT_ERRORS" \
    prom wait-value 'sse_gateway_upstream_errors_total{route="closed",kind="connect"}' "$CONNECT_ERRORS" 10
e2e_check "... and as attempts on its one endpoint: upstream_attempts_total{result=\"connect\"} = $CONNECT_ERRORS" \
    prom wait-value 'sse_gateway_upstream_attempts_total{route="closed",endpoint="default",result="connect"}' "$CONNECT_ERRORS" 10
e2e_check "the closed upstream's endpoint is out: upstream_endpoint_healthy = 0" \
    prom wait-value 'sse_gateway_upstream_endpoint_healthy{upstream="closed",endpoint="default"}' 0 10

# One endpoint of two refuses: the request fails over, and the refusing endpoint is out.
e2e_check "a request to the pair upstream fails over to the endpoint that answers" \
    bash -c "curl -sN --max-time 15 '$GW/pair/done' | grep -q '^data: \\[DONE\\]'"
e2e_check "... and its refusing endpoint is out: upstream_endpoint_healthy{endpoint=\"down\"} = 0" \
    prom wait-value 'sse_gateway_upstream_endpoint_healthy{upstream="pair",endpoint="down"}' 0 10
e2e_check "... the other in: upstream_endpoint_healthy{endpoint=\"up\"} = 1" \
    prom wait-value 'sse_gateway_upstream_endpoint_healthy{upstream="pair",endpoint="up"}' 1 10

# The upstream's own 500 reaches the client, and counts as an upstream error.
e2e_check "a 500 from the upstream reaches the client as 500" \
    bash -c "[ \"\$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' '$GW/flaky/error500')\" = 500 ]"
e2e_check "... counted as attempt result status_5xx" \
    prom wait-value 'sse_gateway_upstream_attempts_total{route="flaky",endpoint="default",result="status_5xx"}' 1 10
e2e_check "... and as upstream error kind status" \
    prom wait-value 'sse_gateway_upstream_errors_total{route="flaky",kind="status"}' 1 10

e2e_check "the demo route's limit is exported, and its slots are all back" \
    prom wait-value 'sse_gateway_admission_max_streams{route="demo"} - sse_gateway_admission_streams{route="demo"}' 100 10

wait "$IDLE_CLIENT_PID" || true
e2e_check "the idle stream ends with an upstream_idle_timeout error event, then [DONE]" \
    bash -c "grep -q '^event: error' '$IDLE_OUT' && grep -q 'upstream_idle_timeout' '$IDLE_OUT' && grep -q '^data: *\[DONE\]' '$IDLE_OUT'"

# --- 5. Prometheus, while the stuck stream is open -----------------------------------
# Two, a few scrapes apart: the first one's request count is a new series, which a
# rate sees rise only from its second sample.
e2e_check "a second stream on the stuck route, whose one slot the stuck stream holds, gets 429" \
    bash -c "[ \"\$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' '$GW/stuck/silent?seconds=1')\" = 429 ]"
sleep 3
e2e_check "... and a third" \
    bash -c "[ \"\$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' '$GW/stuck/silent?seconds=1')\" = 429 ]"
e2e_check "... counted: admission_rejected_total{route=\"stuck\",limit=\"route\"} = 2" \
    prom wait-value 'sse_gateway_admission_rejected_total{route="stuck",limit="route"}' 2 10
e2e_check "sse_gateway_streams_stuck{route=\"stuck\"} reads 1 while the stuck stream is open" \
    prom wait-value 'sse_gateway_streams_stuck{route="stuck"}' 1 20
e2e_check "sse_gateway_streams_active{route=\"stuck\"} reads 1" \
    prom wait-value 'sse_gateway_streams_active{route="stuck"}' 1 10
e2e_check "the reload of a broken file counts a failure" \
    prom wait-value 'sse_gateway_config_reloads_total{result="failure"}' 1 20
e2e_check "... and no success" \
    prom wait-value 'sse_gateway_config_reloads_total{result="success"}' 0 5
e2e_check "sse_gateway_config_last_reload_success reads 0 after the refused file" \
    prom wait-value 'sse_gateway_config_last_reload_success' 0 20
e2e_check "sse_gateway_config_last_reload_timestamp_seconds holds the startup load's time" \
    prom wait-value 'sse_gateway_config_last_reload_timestamp_seconds > bool 1.6e9' 1 10
e2e_check "the running config stays: the closed route still answers 502 (not 404)" \
    bash -c "[ \"\$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' '$GW/closed/after-reload')\" = 502 ]"

wait "$SLOW_CLIENT_PID" || true
e2e_check "the slow answer arrives whole" bash -c "grep -q '^data: \[DONE\]' '$SLOW_OUT'"
e2e_check "tokens: the upstream's usage, 7 input per chat answer" \
    prom wait-value 'sse_gateway_tokens_total{route="chat",kind="input"}' 14 20
e2e_check "tokens: 2 output per chat answer" \
    prom wait-value 'sse_gateway_tokens_total{route="chat",kind="output"}' 4 10
e2e_check "time to first token: one observation per chat stream with content (3)" \
    prom wait-value 'sse_gateway_time_to_first_token_seconds_count{route="chat"}' 3 10
e2e_check "inter-token gaps: one per chat answer that got its second token (2)" \
    prom wait-value 'sse_gateway_inter_token_seconds_count{route="chat"}' 2 10
e2e_check "the slow answer's time to first token is over 10 s" \
    prom wait-value 'sse_gateway_time_to_first_token_seconds_sum{route="slow"} > bool 10' 1 10

# Every rule loaded and healthy.
rules=$(prom rules)
rule_count=$(grep -c . <<<"$rules" || true)
file_count=$(grep -c '^ *- alert:' deploy/prometheus/alerts.yaml)
e2e_check "prometheus loaded all $file_count alert rules (got $rule_count)" test "$rule_count" = "$file_count"
while IFS=$'\t' read -r name health error; do
    e2e_check "rule $name is healthy ($health${error:+: $error})" test "$health" != err
done <<<"$rules"

# Every dashboard and alert expression evaluates without error and returns data.
while IFS=$'\t' read -r status expr detail; do
    if [ "$status" = ok ]; then
        e2e_pass "$expr -> $detail"
    else
        e2e_fail "$expr -> $status: $detail"
    fi
done < <(prom nonempty deploy/grafana/dashboard.json 60)

# The gateway-down alert is quiet while the gateway serves.
while IFS=$'\t' read -r status detail; do
    if [ "$status" = ok ]; then e2e_pass "$detail (the gateway is up)"; else e2e_fail "$detail while the gateway is up"; fi
done < <(prom quiet)

e2e_check "the dashboard's route variable lists every route" \
    bash -c "[ \"\$(timeout 20 python3 '$E2E_TMP/prom.py' label-values route sse_gateway_streams_active)\" = 'chat closed demo flaky pair resumable slow stuck' ]"

# Every alert's condition was driven, so each is pending (or firing, if it has no `for`).
while IFS=$'\t' read -r name state; do
    e2e_check "alert $name is active ($state)" bash -c "[ '$state' = pending ] || [ '$state' = firing ]"
done < <(prom wait-alerts SseGatewayStreamsStuck,SseGatewayErrorOutcomes,SseGatewaySlowFirstToken,SseGatewayTruncatedAnswers,SseGatewayReloadFailing,SseGatewayUpstreamErrors,SseGatewayServerErrors,SseGatewayRequestsRefused,SseGatewayUpstreamEndpointDown,SseGatewayUpstreamNoHealthyEndpoint,SseGatewayResumeStoreErrors 30)

# --- 6. end the stuck stream; outcome counts -----------------------------------------
kill -TERM "$STUCK_CLIENT_PID" 2>/dev/null || true
wait "$STUCK_CLIENT_PID" 2>/dev/null || true
e2e_check "the stuck stream got heartbeats (: keep-alive), upstream pings dropped" \
    bash -c "grep -q '^: keep-alive' '$STUCK_OUT' && ! grep -q '^: ping' '$STUCK_OUT'"
e2e_check "sse_gateway_streams_stuck{route=\"stuck\"} back to 0 once the client left" \
    prom wait-value 'sse_gateway_streams_stuck{route="stuck"}' 0 15
e2e_check "sse_gateway_stuck_total{route=\"stuck\"} = 1" \
    prom wait-value 'sse_gateway_stuck_total{route="stuck"}' 1 10
e2e_check "outcomes: demo terminator=$DEMO_STREAMS, flaky terminator=1 and idle_timeout=1, stuck client_closed=1, chat terminator=2 and truncated=1, slow terminator=1, resumable terminator=3, pair terminator=1, nothing else" \
    prom outcomes "demo/terminator=$DEMO_STREAMS,flaky/terminator=1,flaky/idle_timeout=1,stuck/client_closed=1,chat/terminator=2,chat/truncated=1,slow/terminator=1,resumable/terminator=3,pair/terminator=1" 15
e2e_check "the demo's repair rule hit" \
    prom wait-value 'sse_gateway_rule_hits_total{route="demo",rule="repair#0"} > bool 0' 1 10

# --- 7. stop ---------------------------------------------------------------------------
kill -TERM "$GATEWAY_PID"
status=0
if timeout 15 tail --pid="$GATEWAY_PID" -f /dev/null; then
    wait "$GATEWAY_PID" || status=$?
else
    status="still running after 15s"
fi
e2e_check "the gateway exits 0 on SIGTERM (status $status)" test "$status" = 0

# With the gateway gone, the next failed scrapes make SseGatewayDown pending (it fires
# after 2m, longer than this run).
while IFS=$'\t' read -r name state; do
    e2e_check "alert $name is active once the gateway stopped ($state)" bash -c "[ '$state' = pending ] || [ '$state' = firing ]"
done < <(prom wait-alerts SseGatewayDown 30)

e2e_log "done in $((SECONDS - STARTED))s after the build"
if [ "$E2E_FAILED" -gt 0 ]; then
    e2e_log "gateway log (last lines):"
    tail -n 15 "$E2E_TMP/gateway.log" >&2 || true
fi
e2e_finish
