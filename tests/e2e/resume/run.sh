#!/usr/bin/env bash
# End to end: resumable streams with real clients, a real relay and a real Redis.
#
#   1. Chromium's native EventSource behind a TCP relay that cuts its connection
#      mid-answer twice: the page gets every token exactly once, in order, then
#      [DONE], and the upstream saw one request (store: memory).
#   1b. A page that leaves its EventSource open at [DONE]: its reconnect after the end
#      gets 204, and the browser closes the EventSource; the upstream saw one request.
#   1c. The official openai Python SDK on a POST route: its stream hides the events'
#      ids, so the stop button takes the stream's id from the response head
#      (x-sse-gateway-stream-id); the SDK reads three chunks and leaves, the DELETE
#      with that id answers 204, and the upstream is dropped at once.
#   2. Two gateway replicas with store: redis and a real redis-server on a loopback
#      port, behind a relay that sends each connection to the next replica: the
#      reconnect lands on the other replica and resumes there; same checks.
#   2b. A stop (DELETE) sent to the replica that does not own the stream ends it at
#      its owner, and a reconnect with the stopped stream's id gets 204.
#   3. Redis killed mid-stream: the stream still completes, whole, and
#      sse_gateway_resume_store_errors_total counts the lost writes.
#
#   bash tests/e2e/resume/run.sh       (from anywhere; CARGO_TARGET_DIR is honoured)
#
# Installs what is missing (chromium, redis-server and python3-venv with apt-get,
# playwright-core with npm ci in tests/e2e/clients, the openai SDK in the clients
# suite's cached virtualenv), builds the gateway with `cargo build --release`, starts
# every server on a loopback port and stops it by its PID. Ends with `N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=tests/e2e/resume
CLIENTS=tests/e2e/clients
# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh
e2e_init

TOKENS=40
INTERVAL=0.25        # 10 s of answer: the reconnects (3 s each) land mid-answer
CUTS=8,16            # the first stream connection is cut after 8 events, the second after 16
OPENAI_VERSION=3.57.0     # the clients suite's, and its virtualenv
VENV="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sse-gateway-e2e/venv-openai-$OPENAI_VERSION"

# --- tools ---------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v node >/dev/null || missing+=(nodejs npm)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    e2e_log "installing ${missing[*]} (apt-get)"
    timeout 600 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    timeout 1200 $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -f "$CLIENTS/node_modules/playwright-core/index.mjs" ]; then
    e2e_log "installing playwright-core (npm ci in $CLIENTS)"
    (cd "$CLIENTS" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >&2)
fi

if ! e2e_python_venv "$VENV" \
        "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" \
        "openai==$OPENAI_VERSION"; then
    e2e_fail "installing openai==$OPENAI_VERSION"
    e2e_finish
    exit 1
fi

if ! e2e_build_gateway; then
    e2e_fail "cargo build --release"
    e2e_finish
    exit 1
fi

# --- servers ---------------------------------------------------------------------------
e2e_spawn upstream python3 "$HERE/upstream.py" --port-file "$E2E_TMP/upstream.port" \
    --log "$E2E_TMP/upstream.jsonl" --tokens "$TOKENS" --interval "$INTERVAL"
e2e_wait 10 test -s "$E2E_TMP/upstream.port" || { e2e_fail "the upstream starts"; e2e_finish; exit 1; }
UPSTREAM_PORT=$(cat "$E2E_TMP/upstream.port")

# start_gateway NAME STORE [REDIS_URL]: a gateway on free ports; sets PORT_<NAME> and
# ADMIN_<NAME>.
start_gateway() {
    local name=$1 store=$2 redis=${3:-} port admin state=""
    port=$(e2e_free_port)
    admin=$(e2e_free_port)
    [ -n "$redis" ] && state="state: { redis: { url: \"$redis\" } }"
    cat >"$E2E_TMP/$name.yaml" <<YAML
listen: 127.0.0.1:$port
admin: { listen: 127.0.0.1:$admin }
drain_timeout: 0
shutdown: { final_scrape_wait: 0 }
log: { format: json }
$state
upstreams:
  assistant: { url: "http://127.0.0.1:$UPSTREAM_PORT" }
routes:
  - name: chat
    match: { path_prefix: /api/stream, methods: [GET] }
    upstream: assistant
    request: { path_prefix: /v1/answer, method: POST, body: query_as_json }
    stream:
      terminator: { data: "[DONE]" }
      resume: { window: 30s, store: $store }
  - name: sdk
    match: { path_prefix: /v1/chat/completions, methods: [POST] }
    upstream: assistant
    request: { path_prefix: /v1/answer }
    stream:
      terminator: { data: "[DONE]" }
      resume: { window: 30s, store: $store }
  - name: page
    match: { path_prefix: /page, methods: [GET] }
    upstream: assistant
YAML
    e2e_spawn "$name" "$GATEWAY" --config "$E2E_TMP/$name.yaml"
    if ! e2e_wait 15 e2e_http_ok "http://127.0.0.1:$admin/readyz"; then
        e2e_fail "gateway $name becomes ready"
        tail -n 20 "$E2E_TMP/$name.log"
        e2e_finish
        exit 1
    fi
    printf -v "PORT_$name" '%s' "$port"
    printf -v "ADMIN_$name" '%s' "$admin"
}

# start_relay NAME BACKENDS: sets RELAY_<NAME> to its port.
start_relay() {
    local name=$1 backends=$2
    e2e_spawn "relay-$name" python3 "$HERE/relay.py" --backends "$backends" --cut-after "$CUTS" \
        --port-file "$E2E_TMP/relay-$name.port" --log "$E2E_TMP/relay-$name.jsonl"
    e2e_wait 10 test -s "$E2E_TMP/relay-$name.port" || { e2e_fail "relay $name starts"; e2e_finish; exit 1; }
    printf -v "RELAY_$name" '%s' "$(cat "$E2E_TMP/relay-$name.port")"
}

# metric ADMIN_PORT NAME LABELS: the sample's value, 0 when absent.
metric() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v want="$2{$3}" '$1 == want { print $2; found = 1 } END { if (!found) print 0 }'
}

# check_page Q JSON OPENS: every token once, in order, [DONE], OPENS opens (the first
# and one per reconnect that resumed), ids, one upstream request; a page run with
# --keep 1 must also have seen its EventSource closed by the browser.
check_page() {
    local q=$1 json=$2 opens=$3
    python3 - "$json" "$q" "$E2E_TMP/upstream.jsonl" "$TOKENS" "$opens" <<'PY'
import json, sys
page = json.load(open(sys.argv[1]))
q, log, tokens, opens = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
problems = list(page.get("problems", []))
if not page.get("done"):
    problems.append("no [DONE]")
if page.get("tokens") != list(range(1, tokens + 1)):
    problems.append(f"tokens {page.get('tokens')}")
if page.get("opens") != opens:
    problems.append(f"opened {page.get('opens')} times (want {opens})")
if page.get("keep") and not page.get("closed"):
    problems.append("the EventSource was never closed")
ids = page.get("ids", [])
key = ids[0].rsplit("-", 1)[0] if ids else ""
if len(key) != 22 or ids != [f"{key}-{n}" for n in range(1, tokens + 1)]:
    problems.append(f"ids {ids[:3]}...")
requests = [json.loads(line) for line in open(log) if json.loads(line)["q"] == q]
if len(requests) != 1:
    problems.append(f"the upstream saw {len(requests)} requests (want 1)")
elif requests[0]["last_event_id"] or "lastEventId" in requests[0]["body"]:
    problems.append(f"the id reached the upstream: {requests[0]}")
if problems:
    print("; ".join(problems))
    sys.exit(1)
PY
}

# run_page NAME PORT Q [ARGS...]: Chromium's EventSource through the relay (or the
# gateway) on PORT.
run_page() {
    local name=$1 port=$2 q=$3
    shift 3
    timeout 120 node "$HERE/browser.mjs" --base "http://127.0.0.1:$port" --q "$q" \
        --out "$E2E_TMP/page-$name.json" --profile "$E2E_TMP/chromium-$name" "$@" >&2 ||
        e2e_log "browser.mjs exited with $?"
}

cuts_made() {
    grep -c '"cut"' "$E2E_TMP/relay-$1.jsonl" || true
}

# page_through_relay NAME: Chromium's EventSource through relay NAME, and the checks
# every such run shares.
page_through_relay() {
    local name=$1 relay_port="RELAY_$1"
    run_page "$name" "${!relay_port}" "$name-run"
    e2e_check "$name: the relay cut the stream twice ($(cuts_made "$name") cuts)" \
        test "$(cuts_made "$name")" = 2
    e2e_check "$name: every token once, in order, [DONE], 3 opens, ids KEY-1..KEY-$TOKENS, one upstream request" \
        check_page "$name-run" "$E2E_TMP/page-$name.json" 3
}

# replayed ADMIN_PORT: resumes_total{result="replayed"} of the chat route.
replayed() {
    metric "$1" sse_gateway_resumes_total 'result="replayed",route="chat"'
}

# --- 1. one gateway, memory store, two cuts ------------------------------------------
start_gateway memory memory
start_relay memory "127.0.0.1:$PORT_memory"
e2e_log "1. Chromium through a relay that cuts twice (store: memory)"
page_through_relay memory
e2e_check "memory: two resumes replayed (resumes_total{result=\"replayed\"})" \
    test "$(replayed "$ADMIN_memory")" = 2

# --- 1b. a page that leaves its EventSource open at [DONE] ---------------------------
# The stream ends, so EventSource reconnects with the last id: the gateway has nothing
# after it and answers 204, which closes the EventSource. (A 200 with nothing would
# have it reconnect every 3 s until the window ran out, then start the answer again.)
e2e_log "1b. Chromium's EventSource left open at [DONE] (store: memory, no relay)"
run_page keep "$PORT_memory" keep-run --keep 1
e2e_check "keep: every token once, [DONE], one open, the browser closed the EventSource, one upstream request" \
    check_page keep-run "$E2E_TMP/page-keep.json" 1
e2e_check "keep: the reconnect after the end was counted (resumes_total{result=\"finished\"})" \
    test "$(metric "$ADMIN_memory" sse_gateway_resumes_total 'result="finished",route="chat"')" = 1

# --- 1c. the openai SDK's stop button, with the stream's id from the response head ----
# Left alone, the detached stream would be read on for the rest of its 10 s answer.
e2e_log "1c. the openai Python SDK leaves after three chunks, then stops the stream by the id in the head"
# outcome_count ADMIN_PORT ROUTE OUTCOME: streams of ROUTE that ended with OUTCOME.
outcome_count() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" | awk -v route="route=\"$2\"" -v outcome="outcome=\"$3\"" '
        $1 ~ /^sse_gateway_stream_duration_seconds_count[{]/ && index($1, route) && index($1, outcome) { n = $2 }
        END { print n + 0 }'
}
export -f outcome_count
SDK_OUT="$E2E_TMP/sdk-stop.json"
timeout 60 "$VENV/bin/python" "$HERE/sdk_stop.py" "http://127.0.0.1:$PORT_memory" sdk-run >"$SDK_OUT" ||
    e2e_log "sdk_stop.py exited with $?"
e2e_check "sdk: three chunks, a stream id KEY-0 in the head, the DELETE with it answers 204 ($(cat "$SDK_OUT"))" \
    python3 -c '
import json, re, sys
seen = json.load(open(sys.argv[1]))
ok = seen["chunks"] == 3 and re.fullmatch(r"[A-Za-z0-9_-]{22}-0", seen["stream_id"] or "") and seen["stop_status"] == 204
sys.exit(0 if ok else 1)
' "$SDK_OUT"
e2e_check "sdk: the gateway dropped the upstream within 5 s (outcome client_closed, not terminator)" \
    e2e_wait 5 bash -c "[ \"\$(outcome_count $ADMIN_memory sdk client_closed)\" = 1 ]"
e2e_check "sdk: the upstream saw one request" \
    test "$(grep -c '"sdk-run"' "$E2E_TMP/upstream.jsonl" || true)" = 1

# --- 2. two replicas sharing Redis, round robin ---------------------------------------
REDIS_PORT=$(e2e_free_port)
e2e_spawn redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
REDIS_PID=$E2E_LAST_PID
e2e_wait 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT" || { e2e_fail "redis-server starts"; e2e_finish; exit 1; }
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
start_gateway a redis "$REDIS_URL"
start_gateway b redis "$REDIS_URL"
start_relay pair "127.0.0.1:$PORT_a,127.0.0.1:$PORT_b"
e2e_log "2. Chromium through a round-robin relay over two replicas (store: redis)"
page_through_relay pair
e2e_check "pair: the first reconnect landed on replica b and resumed there from Redis" \
    test "$(replayed "$ADMIN_b")" = 1
e2e_check "pair: the second reconnect landed on replica a (the owner) and resumed" \
    test "$(replayed "$ADMIN_a")" = 1
e2e_check "pair: no store errors while Redis is up" \
    test "$(metric "$ADMIN_a" sse_gateway_resume_store_errors_total 'route="chat"')" = 0

# --- 2b. "stop" pressed: a DELETE that lands on the replica that does not own the stream -
e2e_log "2b. a stop sent to the other replica ends the stream at its owner"
STOP_OUT="$E2E_TMP/stop.out"
# The client leaves after about 8 tokens: replica a reads on, detached.
curl -sN --max-time 2 -o "$STOP_OUT" "http://127.0.0.1:$PORT_a/api/stream/answer?q=stop-run" || true
STOP_ID=$(sed -n 's/^id: //p' "$STOP_OUT" | tail -n 1)
e2e_check "stop: the cut client got events with ids" test -n "$STOP_ID"
e2e_check "stop: replica a holds the detached stream" \
    e2e_wait 10 bash -c "[ \"\$(curl -fsS 'http://127.0.0.1:$ADMIN_a/metrics' | awk '\$1 == \"sse_gateway_streams_detached{route=\\\"chat\\\"}\" { print \$2 }')\" = 1 ]"
# client_closed_on_a: streams of route chat that replica a ended as client_closed.
client_closed_on_a() {
    curl -fsS --max-time 5 "http://127.0.0.1:$ADMIN_a/metrics" | awk '
        $1 ~ /^sse_gateway_stream_duration_seconds_count[{]/ && /route="chat"/ && /outcome="client_closed"/ { n = $2 }
        END { print n + 0 }'
}
export -f client_closed_on_a
export ADMIN_a
CLOSED_BEFORE=$(client_closed_on_a)
STOP_STATUS=$(curl -s -o /dev/null -w '%{http_code}' -X DELETE \
    "http://127.0.0.1:$PORT_b/api/stream/answer?lastEventId=$STOP_ID")
e2e_check "stop: DELETE on replica b answers 204 (got $STOP_STATUS)" test "$STOP_STATUS" = 204
# Within 5 s: the answer would run on for another 7 s and end with [DONE] unstopped.
e2e_check "stop: replica a dropped the upstream at once (one more client_closed outcome)" \
    e2e_wait 5 bash -c "[ \"\$(client_closed_on_a)\" = $((CLOSED_BEFORE + 1)) ]"
# Another tab's EventSource reconnecting with the id: told 204, so the answer the user
# stopped is not generated again.
REQUESTS_BEFORE=$(grep -c '"stop-run"' "$E2E_TMP/upstream.jsonl" || true)
RECONNECT_STATUS=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' -H "Last-Event-ID: $STOP_ID" \
    "http://127.0.0.1:$PORT_a/api/stream/answer?q=stop-run" || true)
e2e_check "stop: a reconnect with the id on replica a gets 204 (got $RECONNECT_STATUS), no new upstream request" \
    test "$RECONNECT_STATUS" = 204 -a "$(grep -c '"stop-run"' "$E2E_TMP/upstream.jsonl" || true)" = "$REQUESTS_BEFORE"

# --- 3. Redis killed mid-stream --------------------------------------------------------
e2e_log "3. Redis killed mid-stream"
OUT="$E2E_TMP/killed.out"
e2e_spawn killed-client curl -sN --max-time 60 -o "$OUT" "http://127.0.0.1:$PORT_a/api/stream/answer?q=killed-run"
CLIENT_PID=$E2E_LAST_PID
e2e_wait 10 grep -q '"token": 3' "$OUT"
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
wait "$CLIENT_PID" || true
e2e_check "the stream completes although Redis died: every token once, then [DONE]" \
    python3 -c '
import sys
text = open(sys.argv[1]).read()
data = [l[len("data: "):] for l in text.splitlines() if l.startswith("data: ")]
want = ["{\"token\": %d}" % n for n in range(1, int(sys.argv[2]) + 1)] + ["[DONE]"]
sys.exit(0 if data == want else "got %r" % data)
' "$OUT" "$TOKENS"
e2e_check "the lost Redis writes are counted in resume_store_errors_total" \
    e2e_wait 10 bash -c "[ \"\$(curl -fsS 'http://127.0.0.1:$ADMIN_a/metrics' | awk '\$1 == \"sse_gateway_resume_store_errors_total{route=\\\"chat\\\"}\" { print (\$2 > 0) }')\" = 1 ]"

e2e_finish
