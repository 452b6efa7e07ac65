#!/usr/bin/env bash
# End to end: the gateway's traces reach a real OTLP/HTTP receiver, and the official
# openai SDK reads a stream whose usage the gateway asked for.
#
#   bash tests/e2e/telemetry/run.sh        (from anywhere)
#
# 1. Installs requirements.txt (opentelemetry-proto, protobuf, openai; pinned) into a
#    cached virtualenv, and builds the gateway (cargo build --release; CARGO_TARGET_DIR
#    is honoured).
# 2. On 127.0.0.1, free ports: receiver.py (decodes OTLP protobuf with
#    opentelemetry-proto), tests/e2e/flaky_upstream.py, and the gateway with
#    `telemetry.otlp` and an openai-chat route with `stream.usage: request`.
# 3. curl streams an answer whose first token comes after 3 s, with a W3C
#    traceparent; the openai SDK streams one with stream_options unset.
# 4. check_spans.py: exactly one server span per stream, the curl stream's span at
#    least 3 s long in the client's trace with the route, upstream, status, outcome,
#    events, bytes, rule hits, gen_ai usage and time to first chunk, its client span,
#    and the upstream's traceparent naming it; the SDK parsed every chunk.
# Prints PASS/FAIL per check and ends with "N passed, M failed".
set -euo pipefail

cd "$(dirname "$0")/../../.."
HERE=tests/e2e/telemetry
# shellcheck source=../lib.sh
source tests/e2e/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
REQUIREMENTS="$HERE/requirements.txt"
VENV="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sse-gateway-e2e/venv-telemetry-$(sha256sum "$REQUIREMENTS" | cut -c1-12)"
STREAM_SECONDS=3

e2e_init

# --- 1. installs and build -------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import opentelemetry.proto, openai' 2>/dev/null; then
    e2e_log "installing $REQUIREMENTS into $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! timeout 120 python3 -m venv "$VENV" >&2; then
        rm -rf "$VENV"
        SUDO=""
        [ "$(id -u)" = 0 ] || SUDO=sudo
        timeout 600 $SUDO apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive timeout 600 $SUDO apt-get install -y -q --no-install-recommends python3-venv >&2
        timeout 120 python3 -m venv "$VENV" >&2
    fi
    timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS" >&2
fi
e2e_log "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
timeout 1800 cargo build --release --quiet
GATEWAY="$CARGO_TARGET_DIR/release/sse-gateway"

# --- 2. processes ------------------------------------------------------------------------
SPANS="$E2E_TMP/spans.jsonl"
e2e_spawn receiver "$VENV/bin/python" "$HERE/receiver.py" "$E2E_TMP/receiver.port" "$SPANS"
e2e_spawn upstream python3 tests/e2e/flaky_upstream.py "$E2E_TMP/upstream.port"
e2e_wait 10 test -s "$E2E_TMP/receiver.port" || { e2e_fail "the receiver starts"; cat "$E2E_TMP/receiver.log" >&2; e2e_finish; exit 1; }
e2e_wait 10 test -s "$E2E_TMP/upstream.port" || { e2e_fail "the upstream starts"; e2e_finish; exit 1; }
PORT=$(e2e_free_port)
ADMIN_PORT=$(e2e_free_port)
GW="http://127.0.0.1:$PORT"
cat >"$E2E_TMP/gateway.yaml" <<YAML
listen: 127.0.0.1:$PORT
admin: { listen: 127.0.0.1:$ADMIN_PORT }
shutdown: { final_scrape_wait: 0 }   # this script scrapes; its stop need not wait for another
log: { format: json, level: info }
upstreams:
  flaky: { url: "http://127.0.0.1:$(cat "$E2E_TMP/upstream.port")" }
routes:
  - name: chat
    match: { path_prefix: /chat }
    upstream: flaky
    stream: { protocol: openai-chat, usage: request }
telemetry:
  otlp:
    endpoint: http://127.0.0.1:$(cat "$E2E_TMP/receiver.port")
    headers: { x-api-key: e2e-key }
    sample_ratio: 1.0
    service_name: e2e-gateway
YAML
e2e_check "sse-gateway check accepts the config" "$GATEWAY" check --config "$E2E_TMP/gateway.yaml"
e2e_spawn gateway "$GATEWAY" --config "$E2E_TMP/gateway.yaml"
if ! e2e_wait 15 e2e_http_ok "http://127.0.0.1:$ADMIN_PORT/readyz"; then
    e2e_fail "the gateway becomes ready"
    tail -n 20 "$E2E_TMP/gateway.log" >&2
    e2e_finish
    exit 1
fi

# --- 3. streams ----------------------------------------------------------------------------
TRACE_ID=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
PARENT_ID=$(python3 -c 'import secrets; print(secrets.token_hex(8))')
BODY='{"model":"e2e","messages":[{"role":"user","content":"hi"}],"stream":true}'
started=$SECONDS
curl -sN --max-time 30 -o "$E2E_TMP/curl.out" -H "traceparent: 00-$TRACE_ID-$PARENT_ID-01" \
    -H 'content-type: application/json' -d "$BODY" "$GW/chat/v1/chat/completions/chat?first=$STREAM_SECONDS" || true
took=$((SECONDS - started))
e2e_check "the ${STREAM_SECONDS}s stream ends with [DONE] after ${took}s, without the usage chunk" \
    bash -c "[ \"\$(grep -v '^\$' '$E2E_TMP/curl.out' | tail -n 1)\" = 'data: [DONE]' ] && ! grep -q usage '$E2E_TMP/curl.out' && [ $took -ge $STREAM_SECONDS ]"
e2e_check "the openai SDK, stream_options unset, parses every chunk and no usage chunk" \
    "$VENV/bin/python" "$HERE/sdk_client.py" "$GW/chat/v1"
UPSTREAM_TRACEPARENT=$(grep -o "traceparent 00-$TRACE_ID-[0-9a-f]*-[0-9a-f]*" "$E2E_TMP/upstream.log" | head -n 1 | cut -d' ' -f2)
e2e_check "the upstream got a traceparent in the client's trace ($UPSTREAM_TRACEPARENT)" test -n "$UPSTREAM_TRACEPARENT"

# --- 4. spans --------------------------------------------------------------------------------
while IFS=$'\t' read -r status what; do
    if [ "$status" = ok ]; then e2e_pass "$what"; else e2e_fail "$what"; fi
done < <(timeout 60 python3 "$HERE/check_spans.py" "$SPANS" "$TRACE_ID" "$PARENT_ID" "${UPSTREAM_TRACEPARENT:-none}" "$STREAM_SECONDS")
e2e_check "no span was dropped" \
    bash -c "curl -fsS 'http://127.0.0.1:$ADMIN_PORT/metrics' | grep -E '^sse_gateway_trace_spans_dropped_total' | awk '{ if (\$2 != 0) exit 1 }'"

e2e_finish
