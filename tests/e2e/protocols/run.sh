#!/usr/bin/env bash
# End-to-end tests of the protocol presets (docs/protocols.md) with the official clients,
# through the gateway, against a flawed upstream that speaks OpenAI Chat Completions,
# OpenAI Responses and Anthropic Messages (upstream.py):
#   - the `openai` Python SDK: chat.completions.create and responses.create, streaming
#   - the `anthropic` Python SDK: messages.stream
#   - the Vercel AI SDK: streamText with @ai-sdk/openai (chat and responses models) and
#     @ai-sdk/anthropic
#   - Debian's Chromium (playwright-core): the native EventSource on the openai-chat route
# for the scenarios clean, repaired, truncated, idle, reset, upstream_error, 502 and 504;
# and (failover.py) the openai SDK with max_retries=0 through a route whose first
# endpoint refuses connections, answered whole by the gateway's retry on the second.
# A truncated answer must reach every client as an error, never as a complete answer.
#
#   tests/e2e/protocols/run.sh                           routes with `stream.protocol`
#   tests/e2e/protocols/run.sh --without-presets         the same routes configured as the
#                                                        generic gateway is (README): the
#                                                        truncation rows fail there
#   tests/e2e/protocols/run.sh --expect-preset-failures  the proof that the suite tests the
#                                                        gateway: `truncated` without the
#                                                        presets; exits 0 only if every
#                                                        client's row failed
#   --scenarios clean,reset   only these scenarios
#
# Installs what is missing (chromium via apt-get; the AI SDK and playwright-core via
# npm ci; openai and anthropic in a cached virtualenv), builds the gateway with
# `cargo build --release` (CARGO_TARGET_DIR is honoured), prints the table and ends with
# `N passed, M failed`. What each client did (exception class and message, finish
# reason, text received), the config, the gateway's log and the upstream's request log
# are kept in $E2E_ARTIFACTS/protocols (default target/e2e/protocols).
# E2E_KEEP_TMP=1 keeps the temp dir.
set -euo pipefail

STARTED=$(date +%s.%N)
cd "$(dirname "$0")/../../.."
HERE=tests/e2e/protocols
# shellcheck source=../lib.sh
source tests/e2e/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
ARTIFACTS="${E2E_ARTIFACTS:-target/e2e}/protocols"
OPENAI_VERSION=3.57.0     # the clients suite's
ANTHROPIC_VERSION=2.14.0
VENV="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sse-gateway-e2e/venv-openai-$OPENAI_VERSION-anthropic-$ANTHROPIC_VERSION"
ALL_SCENARIOS=clean,repaired,truncated,idle,reset,upstream_error,502,504

MODE=presets
SCENARIOS=$ALL_SCENARIOS
EXPECT_FAILURES=0
while [ $# -gt 0 ]; do
    case "$1" in
        --without-presets) MODE=without-presets ;;
        --expect-preset-failures) MODE=without-presets; SCENARIOS=truncated; EXPECT_FAILURES=1 ;;
        --scenarios) SCENARIOS=$2; shift ;;
        *) echo "usage: $0 [--without-presets | --expect-preset-failures] [--scenarios a,b]" >&2; exit 2 ;;
    esac
    shift
done

e2e_init
log() { e2e_log "$@"; }
# An ended process's PID is no longer ours to signal at cleanup.
forget_pid() {
    local p kept=()
    for p in "${E2E_PIDS[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
    E2E_PIDS=("${kept[@]}")
}

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
# node_modules must hold exactly the versions package-lock.json pins.
if ! (cd "$HERE" && node -e '
        const lock = require("./package-lock.json").packages;
        for (const [p, v] of Object.entries(lock)) {
          if (p && require("./" + p + "/package.json").version !== v.version) process.exit(1);
        }' 2>/dev/null); then
    log "installing the AI SDK and playwright-core (npm ci)"
    (cd "$HERE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >&2)
fi
if ! "$VENV/bin/python" -c 'import openai, anthropic, sys; sys.exit((openai.__version__, anthropic.__version__) != (sys.argv[1], sys.argv[2]))' \
        "$OPENAI_VERSION" "$ANTHROPIC_VERSION" 2>/dev/null; then
    log "installing openai==$OPENAI_VERSION anthropic==$ANTHROPIC_VERSION into $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! timeout 120 python3 -m venv "$VENV" >&2; then
        rm -rf "$VENV"
        apt_install python3-venv
        timeout 120 python3 -m venv "$VENV" >&2
    fi
    timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check \
        "openai==$OPENAI_VERSION" "anthropic==$ANTHROPIC_VERSION" >&2
fi

# --- the gateway ------------------------------------------------------------------------
log "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
timeout 1800 cargo build --release
GATEWAY="$CARGO_TARGET_DIR/release/sse-gateway"

TESTS_STARTED=$(date +%s.%N)
TMP=$E2E_TMP
mkdir -p "$ARTIFACTS"
rm -f "$ARTIFACTS"/*

python3 "$HERE/upstream.py" --plan >"$TMP/plan.json"
: >"$TMP/upstream.jsonl"
e2e_spawn upstream python3 "$HERE/upstream.py" --port-file "$TMP/upstream.port" --log "$TMP/upstream.jsonl" \
    --page "$HERE/page.html"
e2e_wait 5 test -s "$TMP/upstream.port" || { log "the upstream did not start"; cat "$TMP/upstream.log" >&2; exit 1; }
UPSTREAM_PORT=$(cat "$TMP/upstream.port")

# Free ports: the gateway's two, and one nobody listens on (the refusing upstream).
read -r PORT ADMIN_PORT REFUSED_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')

CONFIG_ARGS=(--port "$PORT" --admin-port "$ADMIN_PORT" --upstream-port "$UPSTREAM_PORT" --refused-port "$REFUSED_PORT")
if [ "$MODE" = without-presets ]; then
    # A gateway that knows the presets gets `protocol: sse` said explicitly; today's
    # rejects the key, and gets the routes as the README configures them.
    python3 "$HERE/gateway_config.py" --mode presets "${CONFIG_ARGS[@]}" >"$TMP/presets-probe.yaml"
    if timeout 30 "$GATEWAY" check --config "$TMP/presets-probe.yaml" >/dev/null 2>&1; then
        CONFIG_ARGS+=(--sse-key)
    fi
fi
python3 "$HERE/gateway_config.py" --mode "$MODE" "${CONFIG_ARGS[@]}" >"$TMP/gateway.yaml"
cp "$TMP/gateway.yaml" "$ARTIFACTS/gateway-$MODE.yaml"
if ! timeout 30 "$GATEWAY" check --config "$TMP/gateway.yaml" >"$TMP/check.txt" 2>&1; then
    cat "$TMP/check.txt" >&2
    [ "$MODE" = presets ] && log "this gateway does not accept the protocol presets (routes[].stream.protocol) yet;" \
        "run with --without-presets"
    E2E_FAILED=1
    exit 1
fi
e2e_spawn gateway "$GATEWAY" --config "$TMP/gateway.yaml"
GATEWAY_PID=$E2E_LAST_PID
if ! e2e_wait 10 e2e_http_ok "http://127.0.0.1:$ADMIN_PORT/healthz"; then
    log "the gateway did not become healthy"
    tail -n 30 "$TMP/gateway.log" >&2
    E2E_FAILED=1
    exit 1
fi
log "mode $MODE: gateway on 127.0.0.1:$PORT (admin $ADMIN_PORT), upstream on 127.0.0.1:$UPSTREAM_PORT"

# --- the clients, all at once (each call has its own nonce and model) --------------------
log "clients: openai $OPENAI_VERSION, anthropic $ANTHROPIC_VERSION (Python); the AI SDK (node $(node --version));" \
    "Chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'); scenarios $SCENARIOS"
BASE="http://127.0.0.1:$PORT"
e2e_spawn py timeout 60 "$VENV/bin/python" "$HERE/py_clients.py" --base "$BASE" --log "$TMP/upstream.jsonl" \
    --scenarios "$SCENARIOS" --out "$TMP/py.json"
PY_PID=$E2E_LAST_PID
e2e_spawn ai timeout 60 node "$HERE/ai_sdk.mjs" --base "$BASE" --log "$TMP/upstream.jsonl" \
    --scenarios "$SCENARIOS" --out "$TMP/ai.json"
AI_PID=$E2E_LAST_PID
e2e_spawn browser timeout 90 node "$HERE/browser.mjs" --base "$BASE" --log "$TMP/upstream.jsonl" \
    --scenarios "$SCENARIOS" --out "$TMP/browser.json" --profile "$TMP/chromium-profile" --artifacts "$ARTIFACTS"
BROWSER_PID=$E2E_LAST_PID
for pid in "$PY_PID" "$AI_PID" "$BROWSER_PID"; do
    rc=0
    wait "$pid" || rc=$?
    [ "$rc" = 0 ] || log "a client runner (pid $pid) exited with $rc"
    forget_pid "$pid"
done

# Failover: the openai SDK through a route whose first endpoint refuses connections.
FAILOVER_STATUS=0
if [ "$MODE" = presets ]; then
    timeout 60 "$VENV/bin/python" "$HERE/failover.py" --base "$BASE" \
        --admin "http://127.0.0.1:$ADMIN_PORT" --plan "$TMP/plan.json" || FAILOVER_STATUS=1
fi

# The outcomes by route; then the gateway is stopped, so its log is complete (once
# scraped, it waits for a final scrape before it exits: it gets one).
curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/metrics.txt" 2>/dev/null || true
kill -TERM "$GATEWAY_PID" 2>/dev/null || true
curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null || true
grep -E '^sse_gateway_stream_duration_seconds_count.* [1-9]' "$TMP/metrics.txt" | sed 's/^/    /' >&2 || true
if e2e_wait 5 bash -c "! kill -0 $GATEWAY_PID"; then
    forget_pid "$GATEWAY_PID"
else
    log "the gateway was still running 5 s after SIGTERM"
fi

for f in gateway.log upstream.jsonl upstream.log py.log ai.log browser.log metrics.txt; do
    [ -f "$TMP/$f" ] && cp "$TMP/$f" "$ARTIFACTS/"
done

set +e
REPORT_ARGS=()
[ "$EXPECT_FAILURES" = 1 ] && REPORT_ARGS+=(--expect-failures)
python3 "$HERE/report.py" --plan "$TMP/plan.json" --mode "$MODE" --scenarios "$SCENARIOS" \
    --result "$TMP/py.json" --result "$TMP/ai.json" --result "browser=$TMP/browser.json" \
    --out "$ARTIFACTS/verdicts.json" --started "$STARTED" --tests-started "$TESTS_STARTED" "${REPORT_ARGS[@]}"
STATUS=$?
set -e
[ "$FAILOVER_STATUS" = 0 ] || STATUS=1
printf 'what each client did: %s\n' "$(cd "$ARTIFACTS" && pwd)/verdicts.json"
[ "$STATUS" = 0 ] || E2E_FAILED=1
exit "$STATUS"
