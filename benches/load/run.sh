#!/usr/bin/env bash
# Side-by-side load benchmark: direct (no proxy), NGINX, HAProxy and sse-gateway, on
# loopback, interleaved in one run (for each scenario, rounds of A B C D), medians
# reported as markdown. See benches/load/README.md.
#
#   bash benches/load/run.sh            # full run: results in benches/load/results.md
#   bash benches/load/run.sh --quick    # smoke run: results in $TARGET/load/results-quick.md
#
# Options:
#   --quick                 shorter windows, fewer streams, 1 round
#   --rounds N              rounds per scenario (default 3; quick 1)
#   --scenarios a,b         among latency,throughput,idle,each-paced,each-fast (default
#                           latency,throughput,idle); the each-* scenarios have the
#                           upstream write every event as its own write and HTTP chunk
#   --targets a,b           among direct,nginx,haproxy,gateway (default all)
#   --gateway-bin PATH      measure this sse-gateway binary instead of building the repo's
#   --gateway-label TEXT    how the results name that binary (such as a commit)
#   --baseline-bin PATH     also measure this sse-gateway binary (target "baseline", such
#                           as a build of the previous commit): before and after, interleaved
#   --baseline-label TEXT   how the results name the baseline binary
#   --gateway-protocol P    give the gateway's route `stream.protocol: P` (openai-chat,
#   --baseline-protocol P   openai-responses, anthropic; default none, i.e. sse); with the
#                           same binary as baseline, a preset's cost per event in one run
#   --gateway-endpoints N   give the gateway's upstream N endpoints (all the same upstream,
#   --baseline-endpoints N  priority order: the first takes every request) and the route
#                           `retry: { attempts: N }` when N > 1 (default 1: `url`, no retry);
#                           with the same binary as baseline, failover's cost in one run
#   --gateway-otlp          trace the gateway's requests (`telemetry.otlp`, sample_ratio
#   --baseline-otlp         1.0) to an OTLP/HTTP sink on loopback (otlp_sink.py, core 1);
#                           with the same binary as baseline, tracing's cost in one run
#   --gateway-resume R      give the gateway's route `stream.resume: R` (such as
#   --baseline-resume R     "{ store: memory }"); with the same binary as baseline,
#                           resume's cost per event in one run
#   --redis-url URL         `state.redis.url` of the gateway configs (for store: redis)
#   --syscalls              count the proxy's syscalls (perf stat, tracepoints), context
#                           switches (wake-ups), page faults and core migrations over the
#                           middle of each window; per event in the log, syscalls.txt
#                           in the run's directory and the result line (needs perf)
#   --output FILE           where the markdown goes
#   --max-wait SECONDS      longest wait for a quiet machine before each run (default 600)
#   --quiet-cores X         "quiet" means other processes use at most X cores (default 0.35)
#
# Each proxy runs on core 0 (taskset -c 0), the upstream and the client on core 1. The
# proxy's CPU time (utime+stime of /proc/PID/stat) and RSS (VmRSS) are read by the client
# at the exact edges of the measured window, and once before its first connection.
# Everything listens on 127.0.0.1; every process is bounded by `timeout` and stopped by PID.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

MODE=full
ROUNDS=""
SCENARIOS="latency,throughput,idle"
TARGETS="direct,nginx,haproxy,gateway"
GATEWAY_BIN=""
GATEWAY_LABEL=""
BASELINE_BIN=""
BASELINE_LABEL=""
GATEWAY_PROTOCOL=""
BASELINE_PROTOCOL=""
GATEWAY_ENDPOINTS=1
BASELINE_ENDPOINTS=1
GATEWAY_OTLP=0
BASELINE_OTLP=0
GATEWAY_RESUME=""
BASELINE_RESUME=""
REDIS_URL=""
SYSCALLS=0
OUTPUT=""
MAX_WAIT=600
QUIET_CORES=0.35

die() { echo "run.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --scenarios) SCENARIOS=${2:?}; shift ;;
        --targets) TARGETS=${2:?}; shift ;;
        --gateway-bin) GATEWAY_BIN=${2:?}; shift ;;
        --gateway-label) GATEWAY_LABEL=${2:?}; shift ;;
        --baseline-bin) BASELINE_BIN=${2:?}; shift ;;
        --baseline-label) BASELINE_LABEL=${2:?}; shift ;;
        --gateway-protocol) GATEWAY_PROTOCOL=${2:?}; shift ;;
        --baseline-protocol) BASELINE_PROTOCOL=${2:?}; shift ;;
        --gateway-endpoints) GATEWAY_ENDPOINTS=${2:?}; shift ;;
        --baseline-endpoints) BASELINE_ENDPOINTS=${2:?}; shift ;;
        --gateway-otlp) GATEWAY_OTLP=1 ;;
        --baseline-otlp) BASELINE_OTLP=1 ;;
        --gateway-resume) GATEWAY_RESUME=${2:?}; shift ;;
        --baseline-resume) BASELINE_RESUME=${2:?}; shift ;;
        --redis-url) REDIS_URL=${2:?}; shift ;;
        --syscalls) SYSCALLS=1 ;;
        --output) OUTPUT=${2:?}; shift ;;
        --max-wait) MAX_WAIT=${2:?}; shift ;;
        --quiet-cores) QUIET_CORES=${2:?}; shift ;;
        -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ "$ROUNDS" =~ ^[0-9]*$ ]] || die "--rounds must be a number"
if [ -z "$ROUNDS" ]; then
    if [ "$MODE" = quick ]; then ROUNDS=1; else ROUNDS=3; fi
fi
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || die "--rounds must be 1..20"

source "$REPO/benches/load/lib.sh"

# --- scenario parameters ---------------------------------------------------------
# name: streams, upstream pacing (events/s per stream, or "fast"), warm-up s, window s
EVENT_SIZE=200
if [ "$MODE" = quick ]; then
    LAT_STREAMS=100;  LAT_WARMUP=2;  LAT_WINDOW=5
    THR_STREAMS=32;   THR_WARMUP=2;  THR_WINDOW=5
    IDLE_STREAMS=1000; IDLE_WARMUP=11; IDLE_WINDOW=3
else
    LAT_STREAMS=500;  LAT_WARMUP=5;  LAT_WINDOW=20
    THR_STREAMS=32;   THR_WARMUP=3;  THR_WINDOW=15
    # Warm-up over 10 s: every stream has had at least one event before the window.
    IDLE_STREAMS=5000; IDLE_WARMUP=12; IDLE_WINDOW=10
fi

# --- file descriptors ------------------------------------------------------------
# 5,000 idle streams are ~10,000 descriptors in a proxy (client side + upstream side).
HARD_NOFILE=$(ulimit -Hn)
if [ "$HARD_NOFILE" != unlimited ] && [ "$HARD_NOFILE" -lt 1048576 ]; then
    ulimit -n "$HARD_NOFILE"
else
    ulimit -n 1048576
fi
NOFILE=$(ulimit -n)
NEED=$((2 * IDLE_STREAMS + 200))
if [ "$NOFILE" -lt "$NEED" ]; then
    IDLE_STREAMS=$(((NOFILE - 200) / 2))
    log "ulimit -n is $NOFILE: idle scenario reduced to $IDLE_STREAMS streams"
fi

# --- tools -------------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ "$SYSCALLS" = 1 ] && ! command -v perf >/dev/null 2>&1; then
    log "installing linux-perf (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)

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
if [ -n "$BASELINE_BIN" ]; then
    [ -x "$BASELINE_BIN" ] || die "no baseline binary at $BASELINE_BIN"
    BASELINE_LABEL=${BASELINE_LABEL:-$BASELINE_BIN}
    # the baseline runs right before the gateway in each round
    case ",$TARGETS," in
        *,baseline,*) ;;
        *,gateway,*) TARGETS=$(echo ",$TARGETS," | sed 's/,gateway,/,baseline,gateway,/; s/^,//; s/,$//') ;;
        *) TARGETS="$TARGETS,baseline" ;;
    esac
fi
CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet \
    --manifest-path "$REPO/benches/load/tool/Cargo.toml"
TOOL=$TARGET_DIR/release/sse-load

RUN_DIR=$TARGET_DIR/load/run-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
JSONL=$RUN_DIR/results.jsonl
: > "$JSONL"
if [ -z "$OUTPUT" ]; then
    if [ "$MODE" = quick ]; then
        OUTPUT=$TARGET_DIR/load/results-quick.md
    else
        OUTPUT=$REPO/benches/load/results.md
    fi
fi

# start_pinned LOG CPU SECONDS CMD...: start_bg with CMD pinned to CPU
start_pinned() {
    local logfile=$1 cpu=$2 secs=$3
    shift 3
    start_bg "$logfile" "$secs" taskset -c "$cpu" "$@"
}

# cores used by everything on the machine over 2 s (nothing of ours runs between runs)
busy_cores() {
    local a b
    a=$(head -1 /proc/stat)
    sleep 2
    b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN {
        split(a, x); split(b, y);
        for (i = 2; i <= 9; i++) { t += y[i] - x[i] }
        idle = (y[5] - x[5]) + (y[6] - x[6]);
        printf "%.2f", (t > 0 ? n * (t - idle) / t : 0) }'
}

# waits (polling every 30 s, up to MAX_WAIT s) until other processes use at most
# QUIET_CORES cores; prints the last reading
wait_quiet() {
    local waited=0 bg
    bg=$(busy_cores)
    while awk -v b="$bg" -v q="$QUIET_CORES" 'BEGIN { exit !(b > q) }' && [ "$waited" -lt "$MAX_WAIT" ]; do
        log "machine busy ($bg cores used by others; load $(cut -d' ' -f1-3 /proc/loadavg)); waiting 30 s"
        sleep 28
        waited=$((waited + 30))
        bg=$(busy_cores)
    done
    echo "$bg"
}

# --- configs -----------------------------------------------------------------------

write_haproxy_conf() {
    local dir=$1 port=$2 up=$3 max_conn=$4
    cat >"$dir/haproxy.cfg" <<EOF
# 1 thread; http-no-delay: forward each event at once (interactive streams).
global
    nbthread 1
    maxconn $((max_conn + 100))
defaults
    mode http
    option http-no-delay
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout http-request 30s
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    server up 127.0.0.1:$up
EOF
}

write_gateway_conf() {
    local dir=$1 port=$2 admin=$3 up=$4 bin=$5 protocol=${6:-} endpoints=${7:-1} otlp=${8:-} resume=${9:-}
    local target="    url: http://127.0.0.1:$up" retry=""
    if [ "$endpoints" -gt 1 ]; then
        target="    endpoints:"
        for i in $(seq "$endpoints"); do
            target="$target
      - { name: e$i, url: \"http://127.0.0.1:$up\" }"
        done
        retry="    retry: { attempts: $endpoints }"
    fi
    local telemetry=""
    [ -n "$otlp" ] && telemetry="telemetry: { otlp: { endpoint: \"http://127.0.0.1:$otlp\", sample_ratio: 1.0 } }"
    # Whole lines, made here: a `}` inside ${VAR:+...} would end the expansion.
    local state_line="" resume_line=""
    [ -n "$REDIS_URL" ] && state_line="state: { redis: { url: $REDIS_URL } }"
    [ -n "$resume" ] && resume_line="      resume: $resume"
    cat >"$dir/gateway.yaml" <<EOF
# The example route's rules (docs/architecture.md) on a GET/POST passthrough route; clocks on but long
# enough never to fire; warn-level logs.
listen: 127.0.0.1:$port
admin: { listen: 127.0.0.1:$admin }
drain_timeout: 1s
log: { format: json, level: warn }
$state_line
upstreams:
  bench:
$target
    connect_timeout: 2s
    header_timeout: 30s
routes:
  - name: bench
    match: { path_prefix: /v1/stream, methods: [GET, POST] }
    upstream: bench
    stream:
$(design_stream_rules)
${protocol:+      protocol: $protocol}
$resume_line
      stuck_after: 5m
      idle_timeout: 10m
      heartbeat: 5m
      max_duration: 1h
      max_event_size: 1MiB
$retry
$telemetry
EOF
    "$bin" check --config "$dir/gateway.yaml" >/dev/null
}

# --- one measured run ----------------------------------------------------------------
run_one() {
    local scenario=$1 target=$2 round=$3
    local streams warmup window pacing desc
    case "$scenario" in
        latency) streams=$LAT_STREAMS; warmup=$LAT_WARMUP; window=$LAT_WINDOW
                 pacing=(--events-per-sec 20)
                 desc="$streams streams x 20 events/s, $EVENT_SIZE-byte events, ${window}s window" ;;
        throughput) streams=$THR_STREAMS; warmup=$THR_WARMUP; window=$THR_WINDOW
                 pacing=(--fast --batch 32)
                 desc="$streams streams, events as fast as they are read (32 per upstream write), $EVENT_SIZE-byte events, ${window}s window" ;;
        # Token-shaped: every event is its own upstream write and its own chunk.
        each-paced) streams=$LAT_STREAMS; warmup=$LAT_WARMUP; window=$LAT_WINDOW
                 pacing=(--events-per-sec 20 --write-each)
                 desc="$streams streams x 20 events/s, each event its own upstream write and chunk, $EVENT_SIZE-byte events, ${window}s window" ;;
        each-fast) streams=$THR_STREAMS; warmup=$THR_WARMUP; window=$THR_WINDOW
                 pacing=(--fast --write-each)
                 desc="$streams streams, events as fast as they are read, each its own upstream write and chunk, $EVENT_SIZE-byte events, ${window}s window" ;;
        idle) streams=$IDLE_STREAMS; warmup=$IDLE_WARMUP; window=$IDLE_WINDOW
                 pacing=(--events-per-sec 0.1)
                 desc="$streams open streams, one $EVENT_SIZE-byte event every 10 s each, ${window}s window" ;;
        *) die "unknown scenario $scenario" ;;
    esac
    local dir=$RUN_DIR/$scenario-$round-$target
    mkdir -p "$dir"
    local bg
    bg=$(wait_quiet)
    local up port admin
    local otlp_port
    read -r up port admin otlp_port < <("$TOOL" ports 4)
    local lifetime=$((warmup + window + 180))

    start_pinned "$dir/upstream.log" 1 "$lifetime" \
        "$TOOL" upstream --listen "127.0.0.1:$up" --event-size "$EVENT_SIZE" \
        --max-seconds "$lifetime" "${pacing[@]}"
    local own=(--own-pid "$BG_PID")
    wait_port "$up" || die "upstream did not listen (see $dir/upstream.log)"

    local url watch=() proxy_pid=""
    case "$target" in
        direct)
            url=http://127.0.0.1:$up/v1/stream ;;
        nginx)
            write_nginx_conf "$dir" "$port" "$up" "$streams"
            start_pinned "$dir/proxy.log" 0 "$lifetime" \
                "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e stderr
            own+=(--own-pid "$BG_PID")
            wait_port "$port" || die "nginx did not listen (see $dir/proxy.log)"
            # The master only supervises: the worker is the proxy.
            proxy_pid=$(child_of "$BG_PID") || die "no nginx worker"
            STARTED+=("$proxy_pid")
            url=http://127.0.0.1:$port/v1/stream ;;
        haproxy)
            write_haproxy_conf "$dir" "$port" "$up" "$streams"
            start_pinned "$dir/proxy.log" 0 "$lifetime" "$HAPROXY" -db -f "$dir/haproxy.cfg"
            proxy_pid=$BG_PID
            wait_port "$port" || die "haproxy did not listen (see $dir/proxy.log)"
            url=http://127.0.0.1:$port/v1/stream ;;
        gateway|baseline)
            local bin=$GATEWAY_BIN protocol=$GATEWAY_PROTOCOL endpoints=$GATEWAY_ENDPOINTS otlp=$GATEWAY_OTLP resume=$GATEWAY_RESUME
            [ "$target" = baseline ] && bin=$BASELINE_BIN protocol=$BASELINE_PROTOCOL endpoints=$BASELINE_ENDPOINTS otlp=$BASELINE_OTLP resume=$BASELINE_RESUME
            [ -n "$bin" ] || die "target baseline needs --baseline-bin"
            if [ "$otlp" = 1 ]; then
                start_pinned "$dir/otlp.log" 1 "$lifetime" python3 "$REPO/benches/load/otlp_sink.py" "$otlp_port"
                own+=(--own-pid "$BG_PID")
                wait_port "$otlp_port" || die "the OTLP sink did not listen (see $dir/otlp.log)"
            else
                otlp_port=""
            fi
            write_gateway_conf "$dir" "$port" "$admin" "$up" "$bin" "$protocol" "$endpoints" "$otlp_port" "$resume"
            # One worker thread: tokio's multi-thread builder reads TOKIO_WORKER_THREADS.
            start_pinned "$dir/proxy.log" 0 "$lifetime" \
                env TOKIO_WORKER_THREADS=1 "$bin" --config "$dir/gateway.yaml"
            proxy_pid=$BG_PID
            wait_port "$port" || die "sse-gateway did not listen (see $dir/proxy.log)"
            url=http://127.0.0.1:$port/v1/stream ;;
        *) die "unknown target $target" ;;
    esac
    [ -n "$proxy_pid" ] && watch=(--watch-pid "$proxy_pid")
    sleep 0.5

    log "$scenario round $round: $target ($streams streams; other load $bg cores)"
    # Syscalls over the middle of the window (its first and last 2 s left out, so the
    # count never reaches into the warm-up or the close): per event with the window's
    # event rate.
    local counter="" counted=$((window - 4))
    if [ "$SYSCALLS" = 1 ] && [ -n "$proxy_pid" ] && [ "$counted" -gt 0 ]; then
        (sleep $((warmup + 3)) && perf stat -x, -e "$SYSCALL_EVENTS" -p "$proxy_pid" \
            -o "$dir/syscalls.txt" -- sleep "$counted") >/dev/null 2>&1 &
        counter=$!
    fi
    local line
    line=$(timeout -k 5 $((warmup + window + 120)) taskset -c 1 "$TOOL" client \
        --url "$url" --streams "$streams" --warmup "$warmup" --duration "$window" \
        --connect-timeout 60 "${watch[@]}" "${own[@]}" \
        --tag "scenario=$scenario" --tag "target=$target" --tag "round=$round" \
        --tag "mode=$MODE" --tag "desc=$desc" --tag "bg_cores=$bg" \
        2>"$dir/client.log" | tail -1) || true
    [ -n "$counter" ] && wait "$counter"
    if [[ "$line" == "{"* ]] && [ -n "$counter" ] && [ -s "$dir/syscalls.txt" ]; then
        local rate per_event
        rate=$(echo "$line" | grep -o '"events_per_s":[0-9.]*' | cut -d: -f2)
        # "syscalls_per_event":X,"syscalls_read_per_event":Y,... (flat, as the report
        # reads them) from perf's CSV lines (count,unit,event,...)
        per_event=$(awk -F, -v r="$rate" -v s="$counted" '
            $3 ~ /sys_enter/ && $1 ~ /^[0-9]+$/ && ($1 > 0 || $3 ~ /sys_enter$/) {
                name = $3; sub(/.*sys_enter_?/, "", name)
                key = (name == "" ? "syscalls_per_event" : "syscalls_" name "_per_event")
                out = out sprintf("%s\"%s\":%.4f", (out == "" ? "" : ","), key, $1 / (r * s))
            }
            # the scheduler'"'"'s and the memory manager'"'"'s side: wake-ups (a thread that
            # slept and ran again is one switch out), faults, moves to another core
            $3 ~ /^(context-switches|page-faults|cpu-migrations)$/ && $1 ~ /^[0-9]+$/ {
                key = $3; gsub(/-/, "_", key)
                out = out sprintf("%s\"%s_per_event\":%.4f", (out == "" ? "" : ","), key, $1 / (r * s))
            }
            END { print out }' "$dir/syscalls.txt")
        [ -n "$per_event" ] && line="${line%\}},$per_event}"
        log "  syscalls per event: $per_event"
    fi
    if [[ "$line" == "{"* ]]; then
        echo "$line" >>"$JSONL"
        log "  $(echo "$line" | grep -o '"events_per_s":[0-9.]*\|"p99_us":[0-9.]*\|"failures":[0-9]*\|"proxy_cpu_s_per_m_events":[0-9.]*\|"proxy_rss_per_stream_kib":[0-9.-]*' | tr '\n' ' ')"
    else
        log "  client produced no result (see $dir/client.log)"
    fi
    cleanup
    # Let the kernel settle the closed connections before the next run.
    sleep 1
}

# The syscalls --syscalls counts: all of them, and the ones a proxy's event loop makes.
SYSCALL_EVENTS=raw_syscalls:sys_enter,context-switches,page-faults,cpu-migrations
if [ "$SYSCALLS" = 1 ]; then
    for call in read recvfrom readv write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl futex; do
        if [ -d "/sys/kernel/tracing/events/syscalls/sys_enter_$call" ]; then
            SYSCALL_EVENTS="$SYSCALL_EVENTS,syscalls:sys_enter_$call"
        fi
    done
fi

# --- the run -------------------------------------------------------------------------
START_TIME=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "mode $MODE, $ROUNDS round(s), scenarios $SCENARIOS, targets $TARGETS; load $LOAD_BEFORE; results in $RUN_DIR"
IFS=, read -r -a scenario_list <<<"$SCENARIOS"
IFS=, read -r -a target_list <<<"$TARGETS"
for scenario in "${scenario_list[@]}"; do
    for round in $(seq 1 "$ROUNDS"); do
        for target in "${target_list[@]}"; do
            run_one "$scenario" "$target" "$round"
        done
    done
done
ELAPSED=$(($(date +%s) - START_TIME))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

summary() {
    grep -o "\"$1\":\"*[0-9.]*" "$JSONL" | sed 's/.*://; s/"//g' | sort -n | awk '
        { v[NR] = $1 } END { if (NR) printf "median %.2f, max %.2f", v[int((NR + 1) / 2)], v[NR] }'
}
BG=$(summary bg_cores)
DURING=$(summary other_cores)
# the raw lines beside the table (results.md -> results.jsonl)
RAW=${OUTPUT%.md}.jsonl
cp "$JSONL" "$RAW"
NAMES=()
[ -n "$GATEWAY_LABEL" ] && NAMES+=(--name "gateway=sse-gateway $GATEWAY_LABEL")
[ -n "$BASELINE_BIN" ] && NAMES+=(--name "baseline=sse-gateway $BASELINE_LABEL")
"$TOOL" report --input "$JSONL" --output "$OUTPUT" "${NAMES[@]}" \
    --note "Run $(date -u +%Y-%m-%dT%H:%MZ), $MODE mode, $ROUNDS round(s) per scenario, targets interleaved per round; took $((ELAPSED / 60)) min $((ELAPSED % 60)) s." \
    --note "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(uname -sr); proxies on core 0, upstream and client on core 1." \
    --note "Quiet check: cores used by other processes in the 2 s before each run: ${BG:-n/a}; during each measured window (machine busy time less the benchmark's own processes): ${DURING:-n/a}; load average $LOAD_BEFORE at the start, $LOAD_AFTER at the end (the benchmark's own load included)." \
    --note "sse-gateway $GATEWAY_DESC${BASELINE_BIN:+; sse-gateway baseline $BASELINE_LABEL}, TOKIO_WORKER_THREADS=1, the docs/architecture.md example rules; $($NGINX -v 2>&1 | sed 's/^nginx version: //'), 1 worker, proxy_buffering off; $($HAPROXY -v | head -1 | awk '{print "HAProxy " $3}'), nbthread 1, option http-no-delay." \
    --note "Latency = client receive time - upstream send time (CLOCK_MONOTONIC) per event; proxy CPU = utime+stime of the proxy process (NGINX: its worker) over the window; RSS growth per stream = (VmRSS with every stream open - VmRSS before the first connection) / open streams." \
    --note "Raw results: ${RAW#"$REPO"/}"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s; table written to $OUTPUT"
