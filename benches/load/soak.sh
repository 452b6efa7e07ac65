#!/usr/bin/env bash
# Soak: sse-gateway carries N churning streams for M minutes while its config is
# reloaded every S seconds; checks that its memory stays flat, that every reload
# applies, and that no stream fails. Not run in CI (it takes half an hour). See
# benches/load/README.md ("Soak").
#
#   bash benches/load/soak.sh                      # 1,000 streams, 30 min, a reload a minute
#   bash benches/load/soak.sh --streams 200 --duration-min 2 --reload-every 20   # try-out
#
# Options:
#   --streams N           concurrent streams (default 1000)
#   --duration-min M      minutes of load (default 30)
#   --reload-every S      seconds between config reloads (default 60; 0: none, a
#                         control run for memory growth without reloads)
#   --sample-every S      seconds between samples of the gateway (default 10)
#   --gateway-bin PATH    soak this binary instead of building the repo's
#   --gateway-label TEXT  how the summary names that binary (such as its commit)
#   --output FILE         the markdown summary (default $TARGET/load/soak.md)
#   --max-growth-pct P    fail when RSS grew more than P % (default 10)
#   --max-growth-mib M    fail when RSS grew more than M MiB (default 16)
#   --max-failures N      fail when more than N streams failed (default 0)
#
# Load: the sse-load upstream sends one 200-byte event per second on each stream and
# ends it with `data: [DONE]` after 30-90 events (every second stream with the flawed
# `data:\n[DONE]`, which the route's repair rule fixes); the client closes each stream
# after 22.5-67.5 s unless it ended first, and replaces every stream that ends, so N
# stay open while ~25 connections a second come and go (at N = 1,000).
#
# Reloads alternate between a real change of the config file (the heartbeat toggles
# between 15s and 20s, the drop rule between two names; written to a temporary file
# and renamed over the config, as a ConfigMap update swaps it) and SIGHUP with the file
# unchanged. Each counts as confirmed once `sse_gateway_config_reloads_total{result=
# "success"}` on the admin port's /metrics has gone up by one (within 10 s) and
# /config shows the expected heartbeat.
#
# Every S seconds the gateway's VmRSS, VmHWM, open descriptors, threads and CPU time
# (/proc/PID) and its streams_active, reload and outcome counters (/metrics) go to
# samples.csv in the run directory ($TARGET/load/soak-*/).
#
# Verdict (exit 1 when any check fails, 2 on a setup error):
#   - RSS: the median of the samples in the first window after warm-up against the
#     median of the last window (warm-up min(2 min, M/5), windows min(5 min, M/4)):
#     growth at most --max-growth-pct and at most --max-growth-mib;
#   - every reload confirmed, none failed;
#   - client stream failures (refused, non-200, ended without the terminator, or an
#     `event: error`) at most --max-failures; no gateway stream outcome other than
#     terminator and client_closed;
#   - after the client has left: streams_active back to 0 and open descriptors at most
#     16 above the count before the load (the gateway closes its upstream connections
#     when a stream ends).
#
# Everything listens on 127.0.0.1; every process runs under `timeout` and is stopped by
# PID (a trap cleans up on any exit). No pinning: a soak is about memory over time, so
# the gateway runs with its production thread count.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

STREAMS=1000
DURATION_MIN=30
RELOAD_EVERY=60
SAMPLE_EVERY=10
GATEWAY_BIN=""
GATEWAY_LABEL=""
OUTPUT=""
MAX_GROWTH_PCT=10
MAX_GROWTH_MIB=16
MAX_FAILURES=0

# The load's shape (see the header).
EVENTS_PER_SEC=1
EVENT_SIZE=200
END_AFTER_EVENTS=60
CLOSE_AFTER_S=45
# Descriptors the gateway may hold after the load beyond those it held before it.
FD_SLACK=16

die() { echo "soak.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --streams) STREAMS=${2:?}; shift ;;
        --duration-min) DURATION_MIN=${2:?}; shift ;;
        --reload-every) RELOAD_EVERY=${2:?}; shift ;;
        --sample-every) SAMPLE_EVERY=${2:?}; shift ;;
        --gateway-bin) GATEWAY_BIN=${2:?}; shift ;;
        --gateway-label) GATEWAY_LABEL=${2:?}; shift ;;
        --output) OUTPUT=${2:?}; shift ;;
        --max-growth-pct) MAX_GROWTH_PCT=${2:?}; shift ;;
        --max-growth-mib) MAX_GROWTH_MIB=${2:?}; shift ;;
        --max-failures) MAX_FAILURES=${2:?}; shift ;;
        -h|--help) sed -n '2,54p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
# in_range VALUE LOW HIGH: VALUE is a whole number in LOW..HIGH
in_range() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }
in_range "$STREAMS" 1 20000 || die "--streams must be 1..20000"
in_range "$DURATION_MIN" 1 1440 || die "--duration-min must be 1..1440"
if [ "$RELOAD_EVERY" != 0 ]; then
    in_range "$RELOAD_EVERY" 5 86400 || die "--reload-every must be 0 or 5..86400 (seconds)"
fi
# A readable "every S s" for the log and the summary.
if [ "$RELOAD_EVERY" = 0 ]; then RELOAD_TEXT="no config reloads"; else RELOAD_TEXT="a config reload every $RELOAD_EVERY s"; fi
in_range "$SAMPLE_EVERY" 1 3600 || die "--sample-every must be 1..3600 (seconds)"
in_range "$MAX_FAILURES" 0 1000000000 || die "--max-failures must be a number"
[[ "$MAX_GROWTH_PCT" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--max-growth-pct must be a number"
[[ "$MAX_GROWTH_MIB" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--max-growth-mib must be a number"

DURATION_S=$((DURATION_MIN * 60))
# Warm-up: every stream of the first generation has ended (the longest live 90 s) and
# the allocator has seen a full churn cycle.
WARMUP_S=$((DURATION_S / 5 < 120 ? DURATION_S / 5 : 120))
WINDOW_S=$((DURATION_S / 4 < 300 ? DURATION_S / 4 : 300))

source "$REPO/benches/load/lib.sh"

# --- file descriptors --------------------------------------------------------------
# N streams are ~2N descriptors in the gateway (client side + upstream side) and N in
# the client.
HARD_NOFILE=$(ulimit -Hn)
if [ "$HARD_NOFILE" != unlimited ] && [ "$HARD_NOFILE" -lt 1048576 ]; then
    ulimit -n "$HARD_NOFILE"
else
    ulimit -n 1048576
fi
[ "$(ulimit -n)" -ge $((2 * STREAMS + 200)) ] ||
    die "ulimit -n is $(ulimit -n): $STREAMS streams need $((2 * STREAMS + 200))"

# --- tools ---------------------------------------------------------------------------
if ! command -v curl >/dev/null 2>&1; then
    log "installing curl (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends curl >/dev/null
fi

log "building (CARGO_TARGET_DIR=$TARGET_DIR)"
if [ -z "$GATEWAY_BIN" ]; then
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet)
    GATEWAY_BIN=$TARGET_DIR/release/sse-gateway
    GATEWAY_DESC="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [ -n "$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        GATEWAY_DESC="$GATEWAY_DESC + uncommitted changes in src/"
    fi
else
    GATEWAY_DESC=${GATEWAY_LABEL:-$GATEWAY_BIN}
fi
[ -x "$GATEWAY_BIN" ] || die "no gateway binary at $GATEWAY_BIN"
CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet \
    --manifest-path "$REPO/benches/load/tool/Cargo.toml"
TOOL=$TARGET_DIR/release/sse-load

RUN_DIR=$TARGET_DIR/load/soak-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
OUTPUT=${OUTPUT:-$TARGET_DIR/load/soak.md}
mkdir -p "$(dirname "$OUTPUT")"
SAMPLES=$RUN_DIR/samples.csv
RELOADS=$RUN_DIR/reloads.csv

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --- the gateway's config ------------------------------------------------------------
# write_config GEN: the README's example stream rules on one route; GEN 0 and 1 differ
# in the heartbeat and the drop rule's name (a real change for a reload). The clocks
# never fire at one event a second. Written next to the config and renamed over it, so
# the gateway's file watcher never reads half a file.
heartbeat_of() { if [ "$1" = 0 ]; then echo 15s; else echo 20s; fi; }
write_config() {
    local gen=$1 pings
    if [ "$gen" = 0 ]; then pings=upstream-pings; else pings=upstream-pings-b; fi
    cat >"$RUN_DIR/gateway.yaml.next" <<EOF
# soak.sh config, generation $gen
listen: 127.0.0.1:$PORT
admin: { listen: 127.0.0.1:$ADMIN }
drain_timeout: 1s
log: { format: json, level: info }
upstreams:
  soak:
    url: http://127.0.0.1:$UP
    connect_timeout: 2s
    header_timeout: 30s
routes:
  - name: soak
    match: { path_prefix: /v1/stream, methods: [GET, POST] }
    upstream: soak
    stream:
$(design_stream_rules "$pings")
      stuck_after: 5m
      idle_timeout: 10m
      heartbeat: $(heartbeat_of "$gen")
      max_duration: 1h
      max_event_size: 1MiB
EOF
    mv -f "$RUN_DIR/gateway.yaml.next" "$RUN_DIR/gateway.yaml"
}

# --- readings ----------------------------------------------------------------------
METRICS_URL=""
CONFIG_URL=""
scrape() { curl -fsS --max-time 5 "$METRICS_URL" 2>/dev/null || true; }

# The counters soak.sh follows, one line: streams_active streams_stuck reloads_ok
# reloads_failed terminator client_closed error_outcomes rule_hits requests
metric_values() {
    scrape | awk '
        function v(x) { return x + 0 }
        /^sse_gateway_streams_active\{/ { active += v($NF) }
        /^sse_gateway_streams_stuck\{/ { stuck += v($NF) }
        /^sse_gateway_config_reloads_total\{/ {
            if ($0 ~ /result="success"/) ok = v($NF); else if ($0 ~ /result="failure"/) bad = v($NF)
        }
        /^sse_gateway_stream_duration_seconds_count\{/ {
            if ($0 ~ /outcome="terminator"/) term += v($NF)
            else if ($0 ~ /outcome="client_closed"/) closed += v($NF)
            else errors += v($NF)
        }
        /^sse_gateway_rule_hits_total\{/ { hits += v($NF) }
        /^sse_gateway_http_requests_total\{/ { requests += v($NF) }
        END { printf "%d %d %d %d %d %d %d %d %d\n", active, stuck, ok, bad, term, closed, errors, hits, requests }'
}

# The gateway's process: rss_kib hwm_kib fds threads cpu_s
proc_values() {
    local pid=$1 rss hwm threads fds cpu
    read -r rss hwm threads < <(awk '
        /^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } /^Threads:/ { t = $2 }
        END { print r + 0, h + 0, t + 0 }' "/proc/$pid/status" 2>/dev/null || echo "0 0 0")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{
        sub(/^.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / hz }' \
        "/proc/$pid/stat" 2>/dev/null || echo 0)
    echo "$rss $hwm $fds $threads $cpu"
}

# sample PHASE T_S: one row of samples.csv
sample() {
    local phase=$1 t=$2 p m
    p=$(proc_values "$GW_PID")
    m=$(metric_values)
    echo "$phase $t $p $m" | tr ' ' , >>"$SAMPLES"
}

# --- one reload ----------------------------------------------------------------------
# reload N: the Nth reload; odd ones change the file, even ones send SIGHUP. Appends a
# row to reloads.csv and counts RELOADS_CONFIRMED / RELOADS_UNCONFIRMED.
GEN=0
RELOADS_CONFIRMED=0
RELOADS_UNCONFIRMED=0
RELOAD_MAX_MS=0
reload() {
    local n=$1 how ok0 bad0 ok bad t0 waited heartbeat="" result
    read -r _ _ ok0 bad0 _ < <(metric_values)
    t0=$(now_ms)
    if [ $((n % 2)) = 1 ]; then
        how="file"
        GEN=$((1 - GEN))
        write_config "$GEN"
    else
        how=SIGHUP
        kill -HUP "$GW_PID"
    fi
    result=unconfirmed
    ok=$ok0
    bad=$bad0
    for _ in $(seq 1 100); do
        sleep 0.1
        read -r _ _ ok bad _ < <(metric_values)
        if [ "$bad" -gt "$bad0" ]; then result=failed; break; fi
        if [ "$ok" -gt "$ok0" ]; then
            heartbeat=$(curl -fsS --max-time 5 "$CONFIG_URL" 2>/dev/null |
                grep -o '"heartbeat": *"[^"]*"' | head -1 | sed 's/.*: *"//; s/"$//' || true)
            if [ "$heartbeat" = "$(heartbeat_of "$GEN")" ]; then result=ok; else result=wrong-config; fi
            break
        fi
    done
    waited=$(($(now_ms) - t0))
    echo "$n,$how,$GEN,$result,$waited,$ok0,$ok,$bad0,$bad,$heartbeat" >>"$RELOADS"
    if [ "$result" = ok ]; then
        RELOADS_CONFIRMED=$((RELOADS_CONFIRMED + 1))
        if [ "$waited" -gt "$RELOAD_MAX_MS" ]; then RELOAD_MAX_MS=$waited; fi
    else
        RELOADS_UNCONFIRMED=$((RELOADS_UNCONFIRMED + 1))
        log "reload $n ($how): $result (success $ok0 -> $ok, failure $bad0 -> $bad, heartbeat '$heartbeat')"
    fi
}

# --- start ---------------------------------------------------------------------------
read -r UP PORT ADMIN < <("$TOOL" ports 3)
METRICS_URL=http://127.0.0.1:$ADMIN/metrics
CONFIG_URL=http://127.0.0.1:$ADMIN/config
LIFETIME=$((DURATION_S + 600))
START_TIME=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "soak: $STREAMS streams, $DURATION_MIN min, $RELOAD_TEXT; sse-gateway $GATEWAY_DESC; run dir $RUN_DIR"

start_bg "$RUN_DIR/upstream.log" "$LIFETIME" \
    "$TOOL" upstream --listen "127.0.0.1:$UP" --event-size "$EVENT_SIZE" \
    --events-per-sec "$EVENTS_PER_SEC" --end-after "$END_AFTER_EVENTS" \
    --flawed-end-every 2 --max-seconds "$LIFETIME"
UP_PID=$BG_PID
wait_port "$UP" || die "upstream did not listen (see $RUN_DIR/upstream.log)"

write_config 0
"$GATEWAY_BIN" check --config "$RUN_DIR/gateway.yaml" >/dev/null ||
    die "the soak config does not pass check ($RUN_DIR/gateway.yaml)"
start_bg "$RUN_DIR/gateway.log" "$LIFETIME" "$GATEWAY_BIN" --config "$RUN_DIR/gateway.yaml"
GW_PID=$BG_PID
GW_WRAPPER=$BG_WRAPPER
wait_port "$PORT" || die "sse-gateway did not listen (see $RUN_DIR/gateway.log)"
wait_port "$ADMIN" || die "sse-gateway's admin port did not listen"
for _ in $(seq 1 100); do
    curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "phase,t_s,rss_kib,hwm_kib,fds,threads,cpu_s,streams_active,streams_stuck,reloads_ok,reloads_failed,terminator,client_closed,error_outcomes,rule_hits,requests" >"$SAMPLES"
echo "n,how,generation,result,ms,success_before,success_after,failure_before,failure_after,heartbeat" >"$RELOADS"
sleep 1
sample before 0

CLIENT_OUT=$RUN_DIR/client.json
timeout -k 5 $((DURATION_S + 180)) "$TOOL" client \
    --url "http://127.0.0.1:$PORT/v1/stream?q=soak" --streams "$STREAMS" \
    --warmup 0 --duration "$DURATION_S" --connect-timeout 60 \
    --reopen --close-after "$CLOSE_AFTER_S" --progress 60 \
    --watch-pid "$GW_PID" --own-pid "$UP_PID" \
    --tag "run=soak" >"$CLIENT_OUT" 2>"$RUN_DIR/client.log" &
CLIENT_WRAPPER=$!
STARTED+=("$CLIENT_WRAPPER")

# --- the soak: samples and reloads until the client is done ----------------------------
T0=$(now_ms)
NEXT_SAMPLE=$T0
# No reloads at all with --reload-every 0: the first one is never due.
if [ "$RELOAD_EVERY" = 0 ]; then NEXT_RELOAD=$((T0 + 2 * DURATION_S * 1000 + 86400000)); else NEXT_RELOAD=$((T0 + RELOAD_EVERY * 1000)); fi
NEXT_LOG=$((T0 + 60000))
RELOAD_N=0
GATEWAY_DIED=""
while kill -0 "$CLIENT_WRAPPER" 2>/dev/null; do
    if ! kill -0 "$GW_PID" 2>/dev/null; then
        GATEWAY_DIED=yes
        log "the gateway exited during the soak (see $RUN_DIR/gateway.log)"
        break
    fi
    NOW=$(now_ms)
    if [ "$NOW" -ge "$NEXT_SAMPLE" ]; then
        sample load "$(awk -v a="$NOW" -v b="$T0" 'BEGIN { printf "%.1f", (a - b) / 1000 }')"
        NEXT_SAMPLE=$((NEXT_SAMPLE + SAMPLE_EVERY * 1000))
    fi
    # No reload in the last seconds: the client may be gone before it is confirmed.
    if [ "$NOW" -ge "$NEXT_RELOAD" ] && [ "$NOW" -lt $((T0 + DURATION_S * 1000 - 10000)) ]; then
        RELOAD_N=$((RELOAD_N + 1))
        reload "$RELOAD_N"
        NEXT_RELOAD=$((NEXT_RELOAD + RELOAD_EVERY * 1000))
    fi
    if [ "$NOW" -ge "$NEXT_LOG" ]; then
        IFS=, read -r _ t rss _ fds _ _ active _ ok bad _ <<<"$(tail -1 "$SAMPLES")"
        log "t=${t}s RSS $((rss / 1024)) MiB, $fds fds, $active streams active; reloads $RELOADS_CONFIRMED confirmed, $RELOADS_UNCONFIRMED not"
        NEXT_LOG=$((NEXT_LOG + 60000))
    fi
    sleep 0.5
done
wait "$CLIENT_WRAPPER" 2>/dev/null || true

# --- after the load: every stream gone, descriptors back -----------------------------
AFTER_ACTIVE=""
if [ -z "$GATEWAY_DIED" ] && kill -0 "$GW_PID" 2>/dev/null; then
    for _ in $(seq 1 150); do
        read -r AFTER_ACTIVE _ < <(metric_values)
        [ "$AFTER_ACTIVE" = 0 ] && break
        sleep 0.1
    done
    # Let the kernel and the runtime finish closing sockets before counting them.
    sleep 5
    sample after "$(awk -v a="$(now_ms)" -v b="$T0" 'BEGIN { printf "%.1f", (a - b) / 1000 }')"
    read -r AFTER_ACTIVE _ < <(metric_values)
else
    GATEWAY_DIED=yes
fi
# A graceful stop: SIGTERM, as Kubernetes does; the drain has nothing left to wait for.
GW_EXIT=""
if [ -z "$GATEWAY_DIED" ]; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    # The admin listener waits for one more scrape after a drain (README): give it one.
    sleep 1
    scrape >/dev/null
    set +e
    wait "$GW_WRAPPER"
    GW_EXIT=$?
    set -e
fi
ELAPSED=$(($(date +%s) - START_TIME))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the verdict ---------------------------------------------------------------------
CLIENT_LINE=$(grep '^{' "$CLIENT_OUT" | tail -1 || true)
jnum() { echo "$CLIENT_LINE" | grep -o "\"$1\":[0-9.]*" | head -1 | cut -d: -f2; }
median() { sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) print "";
    else if (NR % 2) print v[(NR + 1) / 2];
    else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# col NAME: the column's values of the load rows with FROM <= t < TO
col() {
    awk -F, -v name="$1" -v from="$2" -v to="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next }
        $1 == "load" && $2 + 0 >= from && $2 + 0 < to { print $c }' "$SAMPLES"
}
phase_value() {
    awk -F, -v name="$1" -v phase="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == name) c = i; next }
        $1 == phase { v = $c } END { print v }' "$SAMPLES"
}
LAST_T=$(awk -F, '$1 == "load" { t = $2 } END { print t + 0 }' "$SAMPLES")
FIRST_FROM=$WARMUP_S
FIRST_TO=$((WARMUP_S + WINDOW_S))
LAST_FROM=$(awk -v t="$LAST_T" -v w="$WINDOW_S" 'BEGIN { printf "%.1f", t - w + 0.05 }')
LAST_TO=$((DURATION_S + 3600))

RSS_FIRST=$(col rss_kib "$FIRST_FROM" "$FIRST_TO" | median)
RSS_LAST=$(col rss_kib "$LAST_FROM" "$LAST_TO" | median)
FDS_FIRST=$(col fds "$FIRST_FROM" "$FIRST_TO" | median)
FDS_LAST=$(col fds "$LAST_FROM" "$LAST_TO" | median)
THREADS_FIRST=$(col threads "$FIRST_FROM" "$FIRST_TO" | median)
THREADS_LAST=$(col threads "$LAST_FROM" "$LAST_TO" | median)
ACTIVE_FIRST=$(col streams_active "$FIRST_FROM" "$FIRST_TO" | median)
ACTIVE_LAST=$(col streams_active "$LAST_FROM" "$LAST_TO" | median)
N_FIRST=$(col rss_kib "$FIRST_FROM" "$FIRST_TO" | wc -l)
N_LAST=$(col rss_kib "$LAST_FROM" "$LAST_TO" | wc -l)
RSS_BEFORE=$(phase_value rss_kib before)
RSS_AFTER=$(phase_value rss_kib after)
FDS_BEFORE=$(phase_value fds before)
FDS_AFTER=$(phase_value fds after)
THREADS_BEFORE=$(phase_value threads before)
THREADS_AFTER=$(phase_value threads after)
HWM=$(awk -F, 'NR > 1 && $4 + 0 > h { h = $4 + 0 } END { print h + 0 }' "$SAMPLES")
# After warm-up: lowest and highest RSS, and the least-squares trend in KiB per minute.
read -r RSS_MIN RSS_MAX RSS_SLOPE < <(awk -F, -v from="$WARMUP_S" '
    $1 == "load" && $2 + 0 >= from {
        t = $2 / 60; r = $3 + 0; n++; st += t; sr += r; stt += t * t; str += t * r
        if (n == 1 || r < lo) lo = r; if (r > hi) hi = r }
    END {
        d = n * stt - st * st
        printf "%d %d %.1f\n", lo, hi, (n > 1 && d > 0) ? (n * str - st * sr) / d : 0 }' "$SAMPLES")
# The RSS median of each window-long span of the load, in MiB: the shape of the curve.
RSS_SPANS=$(awk -F, -v w="$WINDOW_S" '$1 == "load" { print int($2 / w), $3 }' "$SAMPLES" |
    sort -k1,1n -k2,2n | awk '
        function flush() { if (n) printf "%s%.1f", (out++ ? ", " : ""), (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2) / 1024 }
        $1 != span { flush(); span = $1; n = 0 }
        { v[++n] = $2 }
        END { flush(); print "" }')
LAST_ROW=$(awk -F, '$1 == "load" { row = $0 } END { print row }' "$SAMPLES")
IFS=, read -r _ _ _ _ _ _ CPU_END _ _ _ _ TERMINATOR CLIENT_CLOSED ERROR_OUTCOMES RULE_HITS _ <<<"$LAST_ROW"
AFTER_ROW=$(awk -F, '$1 == "after" { row = $0 } END { print row }' "$SAMPLES")
if [ -n "$AFTER_ROW" ]; then
    IFS=, read -r _ _ _ _ _ _ CPU_END _ _ _ _ TERMINATOR CLIENT_CLOSED ERROR_OUTCOMES RULE_HITS _ <<<"$AFTER_ROW"
fi

OPENS=$(jnum opens)
FAILURES=$(jnum failures)
CONNECT_FAILURES=$(jnum connect_failures)
STATUS_FAILURES=$(jnum status_failures)
STREAM_ERRORS=$(jnum stream_errors)
ERROR_EVENTS=$(jnum error_events)
COMPLETED=$(jnum completed)
CLOSED=$(jnum closed)
EVENTS=$(jnum events)
whole() { if [ -n "${1:-}" ]; then printf "%.0f" "$1"; fi; }
P50=$(whole "$(jnum p50_us)")
P99=$(whole "$(jnum p99_us)")
P999=$(whole "$(jnum p999_us)")
GW_CPU_SHARE=$(jnum proxy_cpu_share)

# verdict_of CHECK: the table's verdict of a check (yes or no)
verdict_of() { if [ "$1" = yes ]; then echo ok; else echo "**FAILED**"; fi; }

# RSS
RSS_CHECK=no
RSS_TEXT="not measured (too few samples)"
if [ -n "$RSS_FIRST" ] && [ -n "$RSS_LAST" ]; then
    read -r GROWTH_KIB GROWTH_PCT < <(awk -v a="$RSS_FIRST" -v b="$RSS_LAST" \
        'BEGIN { printf "%d %.2f\n", b - a, (a > 0 ? 100 * (b - a) / a : 0) }')
    if awk -v g="$GROWTH_KIB" -v p="$GROWTH_PCT" -v mp="$MAX_GROWTH_PCT" -v mm="$MAX_GROWTH_MIB" \
        'BEGIN { exit !(p <= mp && g <= mm * 1024) }'; then RSS_CHECK=yes; fi
    RSS_TEXT=$(awk -v a="$RSS_FIRST" -v b="$RSS_LAST" -v g="$GROWTH_KIB" -v p="$GROWTH_PCT" \
        'BEGIN { printf "%.1f MiB → %.1f MiB: %+d KiB (%+.2f %%)", a / 1024, b / 1024, g, p }')
fi
RSS_VERDICT=$(verdict_of "$RSS_CHECK")

# reloads
RELOAD_CHECK=no
# At least one reload, unless none was asked for.
if [ "$RELOADS_UNCONFIRMED" = 0 ] && { [ "$RELOAD_N" -gt 0 ] || [ "$RELOAD_EVERY" = 0 ]; }; then
    RELOAD_CHECK=yes
fi
RELOAD_FAILED_METRIC=$(tail -1 "$SAMPLES" | cut -d, -f11)
[ "${RELOAD_FAILED_METRIC:-0}" = 0 ] || RELOAD_CHECK=no
RELOAD_VERDICT=$(verdict_of "$RELOAD_CHECK")
RELOADS_FILE=$(awk -F, '$2 == "file" && $4 == "ok"' "$RELOADS" | wc -l)
RELOADS_HUP=$(awk -F, '$2 == "SIGHUP" && $4 == "ok"' "$RELOADS" | wc -l)

# streams
STREAM_CHECK=no
if [ -n "$CLIENT_LINE" ] && [ -n "$FAILURES" ] && [ "$FAILURES" -le "$MAX_FAILURES" ]; then STREAM_CHECK=yes; fi
STREAM_VERDICT=$(verdict_of "$STREAM_CHECK")
OUTCOME_CHECK=no
[ "${ERROR_OUTCOMES:-1}" = 0 ] && OUTCOME_CHECK=yes
OUTCOME_VERDICT=$(verdict_of "$OUTCOME_CHECK")

# after the load
AFTER_CHECK=no
if [ -z "$GATEWAY_DIED" ] && [ "$AFTER_ACTIVE" = 0 ] && [ -n "$FDS_AFTER" ] &&
    [ "$FDS_AFTER" -le $((FDS_BEFORE + FD_SLACK)) ]; then AFTER_CHECK=yes; fi
AFTER_VERDICT=$(verdict_of "$AFTER_CHECK")
ALIVE_CHECK=no
[ -z "$GATEWAY_DIED" ] && ALIVE_CHECK=yes
ALIVE_VERDICT=$(verdict_of "$ALIVE_CHECK")
VERDICT=PASS
for check in "$RSS_CHECK" "$RELOAD_CHECK" "$STREAM_CHECK" "$OUTCOME_CHECK" "$AFTER_CHECK" "$ALIVE_CHECK"; do
    [ "$check" = yes ] || VERDICT=FAIL
done

mib() { awk -v k="$1" 'BEGIN { if (k == "") print "—"; else printf "%.1f", k / 1024 }'; }
or_dash() { if [ -n "${1:-}" ]; then echo "$1"; else echo "—"; fi; }
thousands() { if [ -z "${1:-}" ]; then echo "—"; else echo "$1" | sed ':a; s/\B[0-9]\{3\}\>/,&/; ta'; fi; }

{
    echo "# sse-gateway soak"
    echo
    echo "**$VERDICT**: $(thousands "$STREAMS") churning streams for $DURATION_MIN min, $RELOAD_TEXT."
    echo
    echo "- Run $(date -u -d "@$START_TIME" +%Y-%m-%dT%H:%MZ), took $((ELAPSED / 60)) min $((ELAPSED % 60)) s; sse-gateway $GATEWAY_DESC (default worker threads, log level info)."
    echo "- Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(uname -sr); load average $LOAD_BEFORE at the start, $LOAD_AFTER at the end (the soak's own load included; nothing pinned)."
    echo "- Load: one route with the README's example stream rules; the upstream sends one $EVENT_SIZE-byte event a second per stream and ends each stream with \`data: [DONE]\` after 30–90 events (every second stream with the flawed \`data:\\n[DONE]\` the repair rule fixes); the client closes each stream after 22.5–67.5 s unless it ended first, and replaces every stream that ends."
    echo "- Reloads: alternately a changed config file (heartbeat 15s ↔ 20s, drop rule renamed; renamed over the old file) and SIGHUP with the file unchanged; each confirmed by \`sse_gateway_config_reloads_total{result=\"success\"}\` +1 on /metrics and the expected heartbeat on /config."
    echo "- RSS windows: warm-up ${WARMUP_S} s; first window ${FIRST_FROM}–${FIRST_TO} s ($N_FIRST samples), last window the final ${WINDOW_S} s ($N_LAST samples); a sample every $SAMPLE_EVERY s."
    echo
    echo "| check | measured | limit | verdict |"
    echo "|---|---|---|---|"
    echo "| RSS growth, median of the first window → median of the last | $RSS_TEXT | ≤ $MAX_GROWTH_PCT % and ≤ $MAX_GROWTH_MIB MiB | $RSS_VERDICT |"
    echo "| config reloads | $RELOADS_CONFIRMED confirmed ($RELOADS_FILE file changes, $RELOADS_HUP SIGHUP), $RELOADS_UNCONFIRMED not confirmed; reload failures on /metrics: ${RELOAD_FAILED_METRIC:-—}; slowest confirmation $RELOAD_MAX_MS ms | all confirmed, none failed | $RELOAD_VERDICT |"
    echo "| client stream failures | $(or_dash "$FAILURES") of $(thousands "$OPENS") streams opened (connect $(or_dash "$CONNECT_FAILURES"), status $(or_dash "$STATUS_FAILURES"), ended without [DONE] or with an error $(or_dash "$STREAM_ERRORS"), \`event: error\` $(or_dash "$ERROR_EVENTS")) | ≤ $MAX_FAILURES | $STREAM_VERDICT |"
    echo "| gateway error outcomes (not terminator or client_closed) | $(or_dash "$ERROR_OUTCOMES") | 0 | $OUTCOME_VERDICT |"
    echo "| after the load: streams_active, open fds | $(or_dash "$AFTER_ACTIVE"); $(or_dash "$FDS_AFTER") fds (before the load: $(or_dash "$FDS_BEFORE")) | 0; ≤ before + $FD_SLACK | $AFTER_VERDICT |"
    echo "| gateway alive through the soak | $(if [ -z "$GATEWAY_DIED" ]; then echo "yes; exit code $(or_dash "$GW_EXIT") on SIGTERM"; else echo no; fi) | yes | $ALIVE_VERDICT |"
    echo
    echo "| gateway | before the load | first window | last window | after the load |"
    echo "|---|---:|---:|---:|---:|"
    echo "| RSS, MiB (median) | $(mib "$RSS_BEFORE") | $(mib "$RSS_FIRST") | $(mib "$RSS_LAST") | $(mib "$RSS_AFTER") |"
    echo "| open fds (median) | $(or_dash "$FDS_BEFORE") | $(or_dash "$FDS_FIRST") | $(or_dash "$FDS_LAST") | $(or_dash "$FDS_AFTER") |"
    echo "| threads (median) | $(or_dash "$THREADS_BEFORE") | $(or_dash "$THREADS_FIRST") | $(or_dash "$THREADS_LAST") | $(or_dash "$THREADS_AFTER") |"
    echo "| streams_active (median) | 0 | $(or_dash "$ACTIVE_FIRST") | $(or_dash "$ACTIVE_LAST") | $(or_dash "$AFTER_ACTIVE") |"
    echo
    echo "- RSS median of each successive $WINDOW_S s of the load (MiB, warm-up included): $RSS_SPANS."
    echo "- RSS after warm-up: lowest $(mib "$RSS_MIN") MiB, highest $(mib "$RSS_MAX") MiB, trend $RSS_SLOPE KiB/min (least squares); VmHWM $(mib "$HWM") MiB."
    echo "- Streams: $(thousands "$OPENS") opened, $(thousands "$COMPLETED") ended with [DONE], $(thousands "$CLOSED") closed by the client; gateway outcomes terminator $(thousands "$TERMINATOR"), client_closed $(thousands "$CLIENT_CLOSED") (the client's exit closes the last $(thousands "$STREAMS")); $(thousands "$RULE_HITS") rule hits (repaired terminators); $(thousands "$EVENTS") stamped events received."
    echo "- Latency through the gateway over the whole run: p50 $(or_dash "$P50") µs, p99 $(or_dash "$P99") µs, p99.9 $(or_dash "$P999") µs; gateway CPU $(awk -v s="${GW_CPU_SHARE:-}" 'BEGIN { if (s == "") print "—"; else printf "%.0f %%", 100 * s }') of a core during the load ($(or_dash "$CPU_END") s in all)."
    echo "- Raw: \`${RUN_DIR#"$REPO"/}/\` (samples.csv, reloads.csv, client.json, logs)."
} >"$OUTPUT"
cat "$OUTPUT"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s: $VERDICT; summary in $OUTPUT"
[ "$VERDICT" = PASS ]
