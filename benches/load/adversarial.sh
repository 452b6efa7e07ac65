#!/usr/bin/env bash
# Adversarial load: the hardening cases at full size, against the release binary, each
# printing what held. Not run in CI (it takes about two minutes); the test suite keeps a
# small version of each (tests/adversarial/connections.rs). See benches/load/README.md
# ("Adversarial").
#
#   bash benches/load/adversarial.sh [--gateway-bin PATH] [--connections N]
#
#   1. floods: N HTTP/1 slowloris connections (a header byte every 10 s) and N h2c
#      connections (half with the preface only, half with half a HEADERS frame) to the
#      public port at once; how many the gateway closed, and when (its header deadline
#      is 30 s), and whether the port still answers meanwhile.
#   2. admin: the gateway under `ulimit -n 1024`, 1,100 idle connections to its admin
#      port; /healthz asked 20 times meanwhile, and the gateway's CPU.
#   3. reloads while a stream is open (an event every 100 ms from a paced upstream):
#      a config nested 60,000 levels deep (refused), then 22,000 routes in 3.7 MB
#      (applied); the largest gap between events, /healthz's slowest answer.
#
# Options:
#   --gateway-bin PATH   run this binary instead of building the repository's release
#   --connections N      connections per protocol in step 1 (default 2000)
#   --steps LIST         which steps to run, such as 13 (default 123)
#
# Exit 1 when something did not hold, 2 on a setup error. The clients and the upstream
# are adversarial.py (Python 3, stdlib only). Everything listens on 127.0.0.1; every
# process runs under `timeout` and is stopped by PID.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
HERE="$REPO/benches/load"
GATEWAY_BIN=""
CONNECTIONS=2000
STEPS=123

die() { echo "adversarial.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --gateway-bin) GATEWAY_BIN=${2:?}; shift ;;
        --connections) CONNECTIONS=${2:?}; shift ;;
        --steps) STEPS=${2:?}; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ "$CONNECTIONS" =~ ^[0-9]+$ ]] || die "--connections must be a number"
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
command -v python3 >/dev/null || die "python3 is needed"
# Step 1 holds 2N connections in the client and the gateway.
ulimit -n $((CONNECTIONS * 2 + 1024)) 2>/dev/null || die "cannot raise the descriptor limit for $CONNECTIONS connections"

if [ -z "$GATEWAY_BIN" ]; then
    log "building the release binary"
    (cd "$REPO" && cargo build --release --quiet --bin sse-gateway) || die "build failed"
    GATEWAY_BIN="$TARGET_DIR/release/sse-gateway"
fi
[ -x "$GATEWAY_BIN" ] || die "no binary at $GATEWAY_BIN"

RUN=$(mktemp -d "${TMPDIR:-/tmp}/sse-gateway-adversarial.XXXXXX")
PY="python3 $HERE/adversarial.py"
PUBLIC=18480 ADMIN=19480 UPSTREAM=17480
FAILED=0

# write_config FILE EXTRA_ROUTES: the stream route to the paced upstream, plus
# EXTRA_ROUTES generated ones
write_config() {
    local file=$1 extra=$2
    {
        echo "listen: 127.0.0.1:$PUBLIC"
        echo "admin: { listen: 127.0.0.1:$ADMIN }"
        echo "log: { level: info }"
        echo "upstreams:"
        echo "  paced: { url: http://127.0.0.1:$UPSTREAM }"
        echo "routes:"
        echo "  - name: chat"
        echo "    match: { path_prefix: /api/stream }"
        echo "    upstream: paced"
        echo "    stream: { heartbeat: 0 }"
        if [ "$extra" -gt 0 ]; then
            python3 - "$extra" <<'EOF2'
import sys
for i in range(int(sys.argv[1])):
    print(f"  - name: r{i}\n    match: {{ path_prefix: /api/generated/{i} }}\n"
          f"    upstream: paced\n    request: {{ method: POST }}\n"
          f"    stream:\n      rules: [ {{ repair: orphan_lines }} ]")
EOF2
        fi
    } >"$file"
}

# start_gateway NAME [ULIMIT]: starts the gateway on $RUN/gateway.yaml; GW_PID
start_gateway() {
    local name=$1 limit=${2:-}
    if [ -n "$limit" ]; then
        start_bg "$RUN/$name.log" 600 sh -c "ulimit -n $limit && exec \"\$0\" --config \"\$1\"" "$GATEWAY_BIN" "$RUN/gateway.yaml"
    else
        start_bg "$RUN/$name.log" 600 "$GATEWAY_BIN" --config "$RUN/gateway.yaml"
    fi
    GW_PID=$BG_PID
    wait_port "$ADMIN" || die "the gateway did not start (see $RUN/$name.log)"
}

stop_gateway() {
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$GW_PID" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
}

start_bg "$RUN/upstream.log" 900 $PY upstream --port "$UPSTREAM"
wait_port "$UPSTREAM" || die "the upstream did not start"
write_config "$RUN/gateway.yaml" 0

if [[ "$STEPS" == *1* ]]; then
    log "1. floods: $CONNECTIONS HTTP/1 slowloris and $CONNECTIONS h2c connections"
    start_gateway floods
    $PY floods --public "$PUBLIC" --connections "$CONNECTIONS" || FAILED=1
    stop_gateway
fi

if [[ "$STEPS" == *2* ]]; then
    log "2. admin: 1100 idle connections, the gateway under ulimit -n 1024"
    start_gateway admin 1024
    $PY admin --admin "$ADMIN" --connections 1100 --pid "$GW_PID" || FAILED=1
    stop_gateway
fi

if [[ "$STEPS" == *3* ]]; then
log "3. reloads while a stream is open"
start_gateway reload
python3 -c "n=60000; print('routes: ' + '[' * n + ']' * n)" >"$RUN/deep.yaml"
$PY reload --public "$PUBLIC" --admin "$ADMIN" --config "$RUN/gateway.yaml" --new "$RUN/deep.yaml" --log "$RUN/reload.log" \
    --label "a config nested 60,000 deep ($(du -k "$RUN/deep.yaml" | cut -f1) KiB)" --expect failure || FAILED=1
grep -m1 -o 'error="[^"]*deeper[^"]*"' "$RUN/reload.log" | sed 's/^/  logged: /' || true
write_config "$RUN/big.yaml" 22000
$PY reload --public "$PUBLIC" --admin "$ADMIN" --config "$RUN/gateway.yaml" --new "$RUN/big.yaml" --log "$RUN/reload.log" \
    --label "22,000 routes ($(du -k "$RUN/big.yaml" | cut -f1) KiB)" --expect success || FAILED=1
stop_gateway
fi

if [ "$FAILED" = 0 ]; then log "everything held (logs in $RUN)"; else log "something did not hold (logs in $RUN)"; fi
exit "$FAILED"
