#!/usr/bin/env bash
# End-to-end tests with real clients nobody here wrote, against a flawed upstream,
# through the gateway:
#   - Debian's Chromium (driven by playwright-core) running the blog's EventSource client
#   - the official `openai` Python SDK streaming chat completions
# for the scenarios blog, linger, no_done, silent, unicode, abandon (the user stops the
# answer early) and pause (past the heartbeat), see flawed_upstream.py; the SDK again on
# a resumable route (an id on every event) for blog and pause; then the browser's
# EventSource on a page from another origin than the gateway's (CORS): any origin
# without credentials, the listed origin withCredentials, and an origin the route does
# not list.
#
#   tests/e2e/clients/run.sh          (from the repo root; CARGO_TARGET_DIR is honoured)
#
# Installs what is missing (chromium via apt-get, playwright-core via npm ci, openai in a
# cached virtualenv), builds the gateway with `cargo build --release`, prints a pass
# table and ends with `N passed, M failed`. Screenshots, the gateway's log and the
# upstream's request log are kept in $E2E_ARTIFACTS (default target/e2e).
# E2E_KEEP_TMP=1 keeps the temp dir.
set -euo pipefail

STARTED=$(date +%s.%N)
cd "$(dirname "$0")/../../.."
HERE=tests/e2e/clients
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
ARTIFACTS="${E2E_ARTIFACTS:-target/e2e}"
OPENAI_VERSION=3.57.0
PLAYWRIGHT_VERSION=$(sed -n 's/.*"playwright-core": *"\([^"]*\)".*/\1/p' "$HERE/package.json")
VENV="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sse-gateway-e2e/venv-openai-$OPENAI_VERSION"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Runs a command in the background, recorded for the trap, and waits for it: an
# interrupted run stops it at once instead of after it ends.
run_bg() {
    "$@" &
    local pid=$! rc=0 p kept=()
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    PIDS=("${kept[@]}")  # ended: its PID is no longer ours to signal
    return "$rc"
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sse-e2e-clients.XXXXXX")
PIDS=()
STATUS=1
REPORTED=0
cleanup() {
    local pid i alive
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 30); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [ "${E2E_KEEP_TMP:-0}" = 1 ] || [ "$STATUS" != 0 ]; then
        # After the report the path was printed already: its last line stays last.
        [ "$REPORTED" = 1 ] || log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        timeout 600 $SUDO apt-get update -q >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 1200 $SUDO apt-get install -y -q --no-install-recommends "$@" >&2
}

# --- installs (each skipped when already present) -------------------------------------
if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian's chromium"
    apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing node and npm"
    apt_install nodejs npm
fi
if [ "$(node -p "try { require('./$HERE/node_modules/playwright-core/package.json').version } catch (e) { '' }")" \
        != "$PLAYWRIGHT_VERSION" ]; then
    log "installing playwright-core $PLAYWRIGHT_VERSION (npm ci)"
    (cd "$HERE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >&2)
fi
if ! "$VENV/bin/python" -c 'import openai, sys; sys.exit(openai.__version__ != sys.argv[1])' \
        "$OPENAI_VERSION" 2>/dev/null; then
    log "installing openai==$OPENAI_VERSION into $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! timeout 120 python3 -m venv "$VENV" >&2; then
        rm -rf "$VENV"
        apt_install python3-venv
        timeout 120 python3 -m venv "$VENV" >&2
    fi
    timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
fi

# --- the gateway ------------------------------------------------------------------------
log "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
timeout 1800 cargo build --release
GATEWAY="$CARGO_TARGET_DIR/release/sse-gateway"

TESTS_STARTED=$(date +%s.%N)
mkdir -p "$ARTIFACTS"
rm -f "$ARTIFACTS"/browser-*.png

# The flawed upstream (binds 127.0.0.1:0 and tells its port through a file).
python3 "$HERE/flawed_upstream.py" --plan >"$TMP/plan.json"
: >"$TMP/upstream.jsonl"
python3 "$HERE/flawed_upstream.py" --port-file "$TMP/upstream.port" --log "$TMP/upstream.jsonl" \
    --page "$HERE/page.html" 2>"$TMP/upstream.stderr" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$TMP/upstream.port" ] && break; sleep 0.05; done
[ -s "$TMP/upstream.port" ] || { log "the flawed upstream did not start"; cat "$TMP/upstream.stderr" >&2; exit 1; }
UPSTREAM_PORT=$(cat "$TMP/upstream.port")

# Two free ports for the gateway (public and admin).
read -r PORT ADMIN_PORT < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')

cat >"$TMP/gateway.yaml" <<EOF
listen: 127.0.0.1:$PORT
admin:
  listen: 127.0.0.1:$ADMIN_PORT
log:
  format: json
  level: info
upstreams:
  flawed:
    url: http://127.0.0.1:$UPSTREAM_PORT
    connect_timeout: 2s
    header_timeout: 10s
routes:
  - name: chat                       # the blog's EventSource: GET -> the assistant's POST
    match: { path_prefix: /api/stream, methods: [GET] }
    upstream: flawed
    request:
      path_prefix: /v1/assistant/stream
      method: POST
      body: query_as_json
      headers:
        set:
          accept: text/event-stream
    cors:                            # the page on the upstream's origin, with cookies
      allow_origins: ["http://127.0.0.1:$UPSTREAM_PORT"]
      allow_credentials: true
    stream:
      rules:
        - repair: orphan_lines
        - drop: { pattern: '^:', name: upstream-pings }
      terminator: { data: "[DONE]", forward: true, on_upstream_eof: synthesize }
      idle_timeout: 2s
      stuck_after: 1s
      heartbeat: 500ms
  - name: public                     # the same stream for any origin, without credentials
    match: { path_prefix: /api/public, methods: [GET] }
    upstream: flawed
    request:
      path_prefix: /v1/assistant/stream
      method: POST
      body: query_as_json
      headers:
        set:
          accept: text/event-stream
    cors: { allow_origins: ["*"] }
    stream:
      rules:
        - repair: orphan_lines
        - drop: { pattern: '^:', name: upstream-pings }
      terminator: { data: "[DONE]", forward: true, on_upstream_eof: synthesize }
      idle_timeout: 2s
      stuck_after: 1s
      heartbeat: 500ms
  - name: openai                     # OpenAI-compatible API, passed through
    match: { path_prefix: /v1 }
    upstream: flawed
    stream:
      rules:
        - repair: orphan_lines
        - drop: { pattern: '^:', name: upstream-pings }
      terminator: { data: "[DONE]", forward: true, on_upstream_eof: synthesize }
      idle_timeout: 2s
      stuck_after: 1s
      heartbeat: 500ms
  - name: openai-resumable           # the same API with resume: an id on every event
    match: { path_prefix: /resume/v1 }
    upstream: flawed
    request: { path_prefix: /v1 }
    stream:
      rules:
        - repair: orphan_lines     # the upstream's pings go through: comments are kept
      terminator: { data: "[DONE]", forward: true, on_upstream_eof: synthesize }
      idle_timeout: 2s
      stuck_after: 1s
      heartbeat: 500ms
      resume: { window: 30s }
  - name: page                       # the test page, same origin as the EventSource URL
    match: { path_prefix: /page, methods: [GET] }
    upstream: flawed
EOF

timeout 30 "$GATEWAY" check --config "$TMP/gateway.yaml" >&2
"$GATEWAY" --config "$TMP/gateway.yaml" >"$TMP/gateway.log" 2>&1 &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/healthz" 2>/dev/null && break
    kill -0 "$GATEWAY_PID" 2>/dev/null || break
    sleep 0.1
done
if ! curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/healthz"; then
    log "the gateway did not become healthy"
    tail -n 30 "$TMP/gateway.log" >&2
    exit 1
fi
log "gateway on 127.0.0.1:$PORT (admin $ADMIN_PORT), flawed upstream on 127.0.0.1:$UPSTREAM_PORT"

# --- the clients ------------------------------------------------------------------------
log "browser: Chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), playwright-core $PLAYWRIGHT_VERSION"
run_bg timeout 120 node "$HERE/browser.mjs" --base "http://127.0.0.1:$PORT" --log "$TMP/upstream.jsonl" \
    --plan "$TMP/plan.json" --out "$TMP/browser.json" --profile "$TMP/chromium-profile" \
    --artifacts "$ARTIFACTS" --page-origin "http://127.0.0.1:$UPSTREAM_PORT" \
    --refused-origin "http://localhost:$UPSTREAM_PORT" --cors-out "$TMP/browser-cors.json" >&2 \
    || log "browser.mjs exited with $?"

log "openai-sdk: openai $OPENAI_VERSION"
run_bg timeout 90 "$VENV/bin/python" "$HERE/openai_client.py" --base-url "http://127.0.0.1:$PORT/v1" \
    --log "$TMP/upstream.jsonl" --plan "$TMP/plan.json" --out "$TMP/openai.json" >&2 \
    || log "openai_client.py exited with $?"

# Once a stream carries ids, the SDK's decoder makes an event of every blank line and
# fails on one without data: the upstream's pings (blog) and the heartbeats (pause)
# must reach it without blank lines of their own.
log "openai-sdk: openai $OPENAI_VERSION on the resumable route"
run_bg timeout 90 "$VENV/bin/python" "$HERE/openai_client.py" --base-url "http://127.0.0.1:$PORT/resume/v1" \
    --log "$TMP/upstream.jsonl" --plan "$TMP/plan.json" --scenarios blog,pause \
    --out "$TMP/openai-resumable.json" >&2 \
    || log "openai_client.py (resumable route) exited with $?"

# What the gateway says about the streams it served (outcomes by route).
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/metrics.txt" 2>/dev/null || true
grep -E '^sse_gateway_stream_duration_seconds_count|^sse_gateway_rule_hits_total' "$TMP/metrics.txt" \
    | sed 's/^/    /' >&2 || true

cp "$TMP/gateway.log" "$TMP/upstream.jsonl" "$TMP/browser.json" "$TMP/openai.json" "$TMP/openai-resumable.json" \
    "$TMP/browser-cors.json" "$ARTIFACTS/" 2>/dev/null || true
# Rows of their own in the pass table: the cross-origin runs (browser only).
EXTRA_ROWS=()
while IFS= read -r row; do EXTRA_ROWS+=(--extra "$row"); done < <(python3 -c '
import json, sys
names = ["cors_any_origin", "cors_credentials", "cors_refused_origin"]
try:
    results = json.load(open(sys.argv[1], encoding="utf-8"))
except (OSError, ValueError) as e:
    results = {n: {"pass": False, "problems": ["no result from the browser (%s)" % e]} for n in names}
for n in names:
    r = results.get(n) or {"pass": False, "problems": ["no result"]}
    print("browser " + n + "=" + ("pass" if r.get("pass") else "fail:" + "; ".join(r.get("problems", []))))
' "$TMP/browser-cors.json")
# The SDK on the resumable route, one row per scenario.
while IFS= read -r row; do EXTRA_ROWS+=(--extra "$row"); done < <(python3 -c '
import json, sys
try:
    results = json.load(open(sys.argv[1], encoding="utf-8"))
except (OSError, ValueError) as e:
    results = {}
for n in ["blog", "pause"]:
    r = results.get(n) or {"pass": False, "problems": ["no result"]}
    verdict = "pass" if r.get("pass") else "fail:" + "; ".join(r.get("problems", []))
    print("openai-sdk resumable " + n + "=" + verdict)
' "$TMP/openai-resumable.json")
SHOT="$ARTIFACTS/browser-blog.png"
if [ -s "$SHOT" ] && [ "$(head -c 8 "$SHOT" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
    SHOT_VERDICT=pass
    printf 'screenshot of the streamed answer: %s\n' "$(cd "$(dirname "$SHOT")" && pwd)/$(basename "$SHOT")"
else
    SHOT_VERDICT="fail:no PNG at $SHOT"
fi

log "temp dir: $TMP (kept when something fails or E2E_KEEP_TMP=1)"
set +e
REPORTED=1
python3 "$HERE/report.py" --plan "$TMP/plan.json" \
    --result "browser=$TMP/browser.json" --result "openai-sdk=$TMP/openai.json" \
    "${EXTRA_ROWS[@]}" --extra "screenshot=$SHOT_VERDICT" --started "$STARTED" --tests-started "$TESTS_STARTED"
STATUS=$?
set -e
exit "$STATUS"
