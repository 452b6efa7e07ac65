#!/usr/bin/env bash
# Profiles sse-gateway under one of run.sh's scenarios, with valgrind (installed from
# Debian when missing): the gateway runs under the tool on core 0 (one worker thread),
# the sse-load upstream and client on core 1, all on 127.0.0.1.
#
#   bash benches/load/profile.sh                         # callgrind, throughput scenario
#   bash benches/load/profile.sh --tool callgrind --scenario latency
#   bash benches/load/profile.sh --tool massif --scenario idle --streams 2000
#   bash benches/load/profile.sh --scenario each-paced --target nginx --cache-sim
#
#   --tool callgrind   instructions per function over the measured window only
#                      (instrumentation is switched on after warm-up and off after the
#                      window); prints Ir per forwarded event, the top functions
#                      (inclusive and self) and malloc calls per event
#   --tool perf        the gateway runs natively: perf record (cpu-clock samples, user and
#                      kernel) and perf stat of syscalls over the window; prints CPU µs,
#                      syscalls per forwarded event and the top symbols
#   --tool massif      heap at its peak with every stream open, by allocation site; prints
#                      heap bytes per open stream
#   --tool none        the gateway runs natively with nothing attached: the scenario's
#                      load alone, for a binary that records its own profile (pgo.sh)
#   --scenario S       throughput (32 streams, as fast as read), latency (500 x 20/s),
#                      idle (N streams, one event / 10 s), each-paced and each-fast
#                      (as latency and throughput, every event its own upstream write)
#   --streams N        override the scenario's stream count
#   --seconds N        measured window (default 15)
#   --gateway-bin PATH profile this binary instead of building the repo's
#   --target T         gateway (default) or nginx: NGINX as run.sh configures it, in one
#                      process (master_process off); callgrind or perf, the paced scenarios
#                      only (each-paced, latency), where every event is one writev, so
#                      the window's events are its calls to writev
#   --cache-sim        callgrind simulates this machine's caches (L1d, and L2 as the last
#                      level): misses per event, and per function in the annotations
#   --endpoints N      the upstream has N endpoints (the same server; the first takes
#                      every request) and the route `retry: { attempts: N }` (as run.sh's
#                      --gateway-endpoints; default 1: a `url`, no retry)
#   --otlp             trace every request (`telemetry.otlp`, sample_ratio 1.0) to an
#                      OTLP/HTTP sink on loopback (otlp_sink.py, core 1)
#   --resume R         give the route `stream.resume: R` (such as "{ store: memory }"),
#                      as run.sh's --gateway-resume
#   --protocol P       give the route `stream.protocol: P` (openai-chat: the upstream's
#                      events are chat completion chunks), as run.sh's --gateway-protocol
#
# Output (callgrind.out, massif.out, annotations) goes to $TARGET/load/profile-*/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
TOOL_NAME=callgrind
SCENARIO=throughput
STREAMS=""
SECONDS_WINDOW=15
GATEWAY_BIN=""
ENDPOINTS=1
OTLP=0
RESUME=""
PROTOCOL=""
TARGET_NAME=gateway
CACHE_SIM=0
die() { echo "profile.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --tool) TOOL_NAME=${2:?}; shift ;;
        --scenario) SCENARIO=${2:?}; shift ;;
        --streams) STREAMS=${2:?}; shift ;;
        --seconds) SECONDS_WINDOW=${2:?}; shift ;;
        --gateway-bin) GATEWAY_BIN=${2:?}; shift ;;
        --endpoints) ENDPOINTS=${2:?}; shift ;;
        --otlp) OTLP=1 ;;
        --resume) RESUME=${2:?}; shift ;;
        --protocol) PROTOCOL=${2:?}; shift ;;
        --target) TARGET_NAME=${2:?}; shift ;;
        --cache-sim) CACHE_SIM=1 ;;
        -h|--help) sed -n '2,43p' "$0"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
case "$TOOL_NAME" in callgrind|massif|perf|none) ;; *) die "--tool is callgrind, perf, massif or none" ;; esac
case "$TARGET_NAME" in
    gateway) ;;
    nginx)
        case "$TOOL_NAME" in callgrind|perf) ;; *) die "--target nginx is for --tool callgrind or perf" ;; esac
        case "$SCENARIO" in each-paced|latency) ;; *) die "--target nginx needs a paced scenario (each-paced, latency)" ;; esac ;;
    *) die "--target is gateway or nginx" ;;
esac
[ "$CACHE_SIM" = 0 ] || [ "$TOOL_NAME" = callgrind ] || die "--cache-sim is for --tool callgrind"
[[ "$SECONDS_WINDOW" =~ ^[0-9]+$ ]] && [ "$SECONDS_WINDOW" -le 300 ] || die "--seconds must be 0..300"
source "$REPO/benches/load/lib.sh"

case "$SCENARIO" in
    throughput) STREAMS=${STREAMS:-32}; PACING=(--fast --batch 32); WARMUP=3 ;;
    latency) STREAMS=${STREAMS:-500}; PACING=(--events-per-sec 20); WARMUP=3 ;;
    each-paced) STREAMS=${STREAMS:-500}; PACING=(--events-per-sec 20 --write-each); WARMUP=3 ;;
    each-fast) STREAMS=${STREAMS:-32}; PACING=(--fast --write-each); WARMUP=3 ;;
    idle) STREAMS=${STREAMS:-5000}; PACING=(--events-per-sec 0.1); WARMUP=12 ;;
    *) die "unknown scenario $SCENARIO" ;;
esac
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)

case "$TOOL_NAME" in perf) PKG=linux-perf; BIN=perf ;; none) PKG=""; BIN=true ;; *) PKG=valgrind; BIN=valgrind ;; esac
command -v "$BIN" >/dev/null 2>&1 || {
    log "installing $PKG (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$PKG" >/dev/null
}
if [ "$TARGET_NAME" = nginx ]; then
    command -v nginx >/dev/null 2>&1 || {
        log "installing nginx (Debian)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
    }
elif [ -z "$GATEWAY_BIN" ]; then
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet)
    GATEWAY_BIN=$TARGET_DIR/release/sse-gateway
fi
CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet --manifest-path "$REPO/benches/load/tool/Cargo.toml"
LOAD=$TARGET_DIR/release/sse-load

OUT=$TARGET_DIR/load/profile-$TOOL_NAME-$SCENARIO-$TARGET_NAME-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
events_total() {
    if [ "$TARGET_NAME" = nginx ]; then echo 0; return; fi
    curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^sse_gateway_stream_events_total/ { s += $2 } END { print s + 0 }'
}
# streams open through the proxy: the gateway counts them; NGINX's are its client
# connections
streams_open() {
    if [ "$TARGET_NAME" = nginx ]; then
        ss -Htn state established "( sport = :$PORT )" | wc -l
    else
        curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^sse_gateway_streams_active/ { s += $2 } END { print s + 0 }'
    fi
}
# the level-N data (or unified) cache of core 0 as valgrind's SIZE,ASSOC,LINE
cache_of() {
    local index
    for index in /sys/devices/system/cpu/cpu0/cache/index*; do
        [ "$(cat "$index/level")" = "$1" ] && [ "$(cat "$index/type")" != Instruction ] || continue
        echo "$(($(sed 's/K$//' "$index/size") * 1024)),$(cat "$index/ways_of_associativity"),$(cat "$index/coherency_line_size")"
        return 0
    done
    return 1
}

read -r UP PORT ADMIN OTLP_PORT < <("$LOAD" ports 4)
TARGET="{ url: \"http://127.0.0.1:$UP\", connect_timeout: 2s, header_timeout: 30s }"
RETRY=""
if [ "$ENDPOINTS" -gt 1 ]; then
    list=$(for i in $(seq "$ENDPOINTS"); do printf '{ name: e%s, url: "http://127.0.0.1:%s" }\n' "$i" "$UP"; done | paste -sd, -)
    TARGET="{ endpoints: [$list], connect_timeout: 2s, header_timeout: 30s }"
    RETRY="    retry: { attempts: $ENDPOINTS }"
fi
LIFETIME=$((WARMUP + SECONDS_WINDOW + 300))
TELEMETRY=""
if [ "$OTLP" = 1 ]; then
    timeout -k 5 "$LIFETIME" taskset -c 1 python3 "$REPO/benches/load/otlp_sink.py" "$OTLP_PORT" >"$OUT/otlp.log" 2>&1 &
    STARTED+=($!)
    TELEMETRY="telemetry: { otlp: { endpoint: \"http://127.0.0.1:$OTLP_PORT\", sample_ratio: 1.0 } }"
fi
cat >"$OUT/gateway.yaml" <<EOF
listen: 127.0.0.1:$PORT
admin: { listen: 127.0.0.1:$ADMIN }
drain_timeout: 1s
log: { format: json, level: warn }
upstreams:
  bench: $TARGET
routes:
  - name: bench
    match: { path_prefix: /v1/stream, methods: [GET, POST] }
    upstream: bench
    stream:
$(design_stream_rules)
      stuck_after: 5m
      idle_timeout: 10m
      heartbeat: 5m
      max_duration: 1h
      max_event_size: 1MiB
${RESUME:+      resume: $RESUME}
${PROTOCOL:+      protocol: $PROTOCOL}
$RETRY
$TELEMETRY
EOF

timeout -k 5 "$LIFETIME" taskset -c 1 "$LOAD" upstream --listen "127.0.0.1:$UP" \
    --max-seconds "$LIFETIME" "${PACING[@]}" >"$OUT/upstream.log" 2>&1 &
STARTED+=($!)
case "$TOOL_NAME" in
    callgrind) VG=(--tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out") ;;
    massif) VG=(--tool=massif --threshold=0.5 --detailed-freq=1000000 --max-snapshots=200 --massif-out-file="$OUT/massif.out") ;;
esac
if [ "$CACHE_SIM" = 1 ]; then
    D1=$(cache_of 1) && LL=$(cache_of 2) || die "cannot read the caches' sizes from /sys"
    VG+=(--cache-sim=yes "--D1=$D1" "--LL=$LL")
    log "cache simulation: D1 $D1, LL (this machine's L2) $LL (size,ways,line)"
fi
case "$TOOL_NAME" in perf|none) VALGRIND=() ;; *) VALGRIND=(valgrind "${VG[@]}") ;; esac
if [ "$TARGET_NAME" = nginx ]; then
    write_nginx_conf "$OUT" "$PORT" "$UP" "$STREAMS" "master_process off;"
    timeout -k 5 "$LIFETIME" taskset -c 0 \
        "${VALGRIND[@]}" "$(command -v nginx)" -p "$OUT" -c "$OUT/nginx.conf" -e stderr >"$OUT/nginx.log" 2>&1 &
else
    timeout -k 5 "$LIFETIME" taskset -c 0 env TOKIO_WORKER_THREADS=1 \
        "${VALGRIND[@]}" "$GATEWAY_BIN" --config "$OUT/gateway.yaml" >"$OUT/gateway.log" 2>&1 &
fi
WRAPPER=$!
STARTED+=("$WRAPPER")
VG_PID=$(child_of "$WRAPPER") || die "$TARGET_NAME did not start"
STARTED+=("$VG_PID")
wait_port "$UP" 30 || die "upstream did not listen"
wait_port "$PORT" 30 || die "$TARGET_NAME did not listen (see $OUT/$TARGET_NAME.log)"

log "$TOOL_NAME, $SCENARIO: $TARGET_NAME, $STREAMS streams, warm-up ${WARMUP}s, window ${SECONDS_WINDOW}s (pid $VG_PID)"
# The client outlives the window; its own numbers are those of a gateway under valgrind.
timeout -k 5 $((WARMUP + SECONDS_WINDOW + 200)) taskset -c 1 "$LOAD" client \
    --url "http://127.0.0.1:$PORT/v1/stream" --streams "$STREAMS" --connect-timeout 120 \
    --warmup 0 --duration $((WARMUP + SECONDS_WINDOW + 60)) >"$OUT/client.json" 2>"$OUT/client.log" &
CLIENT=$!
STARTED+=("$CLIENT")
# wait until every stream is open, then the warm-up
for _ in $(seq 1 600); do
    open=$(streams_open)
    [ "$open" -ge "$STREAMS" ] && break
    sleep 0.2
done
log "$open streams open"
sleep "$WARMUP"

cpu_ticks() { awk '{ sub(/.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' "/proc/$VG_PID/stat"; }
EV0=$(events_total)
T0=$(cpu_ticks)
case "$TOOL_NAME" in
    callgrind)
        callgrind_control -i on "$VG_PID" >/dev/null
        sleep "$SECONDS_WINDOW"
        callgrind_control -i off "$VG_PID" >/dev/null ;;
    perf)
        SYSCALLS=task-clock,raw_syscalls:sys_enter
        for call in read recvfrom readv write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl futex clock_gettime; do
            if [ -d "/sys/kernel/tracing/events/syscalls/sys_enter_$call" ]; then
                SYSCALLS="$SYSCALLS,syscalls:sys_enter_$call"
            fi
        done
        perf stat -e "$SYSCALLS" -p "$VG_PID" -o "$OUT/syscalls.txt" -- sleep "$SECONDS_WINDOW" &
        STAT=$!
        perf record -e cpu-clock -F 2999 -p "$VG_PID" -o "$OUT/perf.data" -- sleep "$SECONDS_WINDOW" \
            >"$OUT/perf-record.log" 2>&1
        wait "$STAT" || true ;;
    massif|none) sleep "$SECONDS_WINDOW" ;;
esac
T1=$(cpu_ticks)
EV1=$(events_total)
EVENTS=$((EV1 - EV0))
[ "$TARGET_NAME" = nginx ] || log "$EVENTS events forwarded in the window"
if [ "$TOOL_NAME" = callgrind ]; then callgrind_control -d "$VG_PID" >/dev/null; sleep 1; fi
kill -TERM "$CLIENT" 2>/dev/null || true
kill -TERM "$VG_PID" 2>/dev/null || true
for _ in $(seq 1 300); do kill -0 "$VG_PID" 2>/dev/null || break; sleep 0.1; done
cleanup

case "$TOOL_NAME" in
    callgrind)
        FILE=$(ls -S "$OUT"/callgrind.out* | head -1)
        callgrind_annotate --inclusive=yes "$FILE" >"$OUT/inclusive.txt" 2>/dev/null || true
        callgrind_annotate "$FILE" >"$OUT/self.txt" 2>/dev/null || true
        callgrind_annotate --tree=caller --inclusive=yes "$FILE" >"$OUT/callers.txt" 2>/dev/null || true
        TOTAL=$(grep -m1 'PROGRAM TOTALS' "$OUT/self.txt" | awk '{gsub(",", "", $1); print $1}')
        # calls to the C allocator and to writev in the window (callgrind compresses
        # names: "(id) name" defines an id, later "(id)" alone refers to it)
        ALLOC_CALLS=$(awk '
            /^c?fn=/ {
                s = $0; sub(/^c?fn=/, "", s); nm = s
                if (match(s, /^\([0-9]+\)/)) {
                    id = substr(s, 1, RLENGTH); rest = substr(s, RLENGTH + 1); sub(/^ /, "", rest)
                    if (rest != "") names[id] = rest
                    nm = names[id]
                }
                if ($0 ~ /^cfn=/) callee = nm
                next
            }
            /^calls=/ {
                split($0, a, /[= ]/)
                if (callee == "malloc" || callee == "calloc" || callee == "realloc" || callee == "writev") n[callee] += a[2]
                callee = ""
            }
            END { printf "%d %d %d %d", n["malloc"], n["calloc"], n["realloc"], n["writev"] }' "$FILE")
        read -r MALLOC CALLOC REALLOC WRITEV <<<"$ALLOC_CALLS"
        if [ "$TARGET_NAME" = nginx ]; then
            # one writev per event in the paced scenarios (NGINX writes each event as
            # it reads it)
            EVENTS=$WRITEV
            log "$EVENTS events forwarded in the window (calls to writev)"
        fi
        {
            echo "window: $SECONDS_WINDOW s, $EVENTS events, $TOTAL instructions ($TARGET_NAME)"
            if [ "$EVENTS" -gt 0 ]; then
                echo "instructions per event: $((TOTAL / EVENTS))"
                awk -v m="$MALLOC" -v c="$CALLOC" -v r="$REALLOC" -v w="$WRITEV" -v e="$EVENTS" 'BEGIN {
                    printf "allocator calls per event: malloc %.2f, calloc %.2f, realloc %.2f; writev %.2f per event\n", m / e, c / e, r / e, w / e }'
                if [ "$CACHE_SIM" = 1 ]; then
                    # the totals line of every simulated event: Ir Dr Dw I1mr D1mr D1mw
                    # ILmr DLmr DLmw (percentages dropped)
                    awk -v e="$EVENTS" '
                        /^Events shown:/ { for (i = 3; i <= NF; i++) name[i - 2] = $i; n = NF - 2 }
                        /PROGRAM TOTALS/ {
                            line = $0; gsub(/\([^)]*\)/, "", line); gsub(/,/, "", line)
                            split(line, v, " ")
                            for (i = 1; i <= n; i++) c[name[i]] = v[i]
                            printf "per event: data reads %.0f, writes %.0f; L1d misses %.1f (read %.1f, write %.1f); L2 misses %.1f (read %.1f, write %.1f); L1i misses %.1f\n",
                                c["Dr"] / e, c["Dw"] / e, (c["D1mr"] + c["D1mw"]) / e, c["D1mr"] / e, c["D1mw"] / e,
                                (c["DLmr"] + c["DLmw"]) / e, c["DLmr"] / e, c["DLmw"] / e, c["I1mr"] / e
                        }' "$OUT/self.txt"
                fi
            fi
            echo
            echo "== top inclusive =="
            sed -n '/^Ir/,$p' "$OUT/inclusive.txt" | head -60
            echo
            echo "== top self =="
            sed -n '/^Ir/,$p' "$OUT/self.txt" | head -45
        } | tee "$OUT/summary.txt"
        ;;
    perf)
        # CPU seconds over the events' window, in clock ticks as `cpu_ticks` gives them
        CPU_TICKS=$((T1 - T0))
        if [ "$TARGET_NAME" = nginx ]; then
            # one writev per event in the paced scenarios, as under callgrind; the
            # window is perf stat's own, shorter than the one between T0 and T1 (perf
            # record starts and writes its file), so the CPU is perf stat's task-clock
            EVENTS=$(awk '$2 == "syscalls:sys_enter_writev" { gsub(",", "", $1); print $1 + 0 }' "$OUT/syscalls.txt")
            EVENTS=${EVENTS:-0}
            CPU_TICKS=$(awk -v hz="$(getconf CLK_TCK)" '$2 == "msec" && $3 == "task-clock" { gsub(",", "", $1); printf "%d", $1 / 1000 * hz }' "$OUT/syscalls.txt")
            CPU_TICKS=${CPU_TICKS:-0}
            log "$EVENTS events forwarded in the window (calls to writev)"
        fi
        perf report -i "$OUT/perf.data" --no-children --sort dso --stdio >"$OUT/by-dso.txt" 2>/dev/null || true
        perf report -i "$OUT/perf.data" --no-children --sort sym --stdio >"$OUT/by-symbol.txt" 2>/dev/null || true
        {
            echo "window: $SECONDS_WINDOW s, $EVENTS events"
            if [ "$EVENTS" -gt 0 ]; then
                awk -v t="$CPU_TICKS" -v hz="$(getconf CLK_TCK)" -v e="$EVENTS" 'BEGIN {
                    printf "CPU: %.2f s, %.3f µs per event (%.2f s per million events)\n", t / hz, t / hz / e * 1e6, t / hz / e * 1e6 }'
                echo "syscalls per event:"
                awk -v e="$EVENTS" '/sys_enter/ { gsub(",", "", $1); if ($1 + 0 > 0) printf "  %-40s %10d  %.4f per event\n", $2, $1, $1 / e }' "$OUT/syscalls.txt"
            fi
            echo
            echo "== by object (cpu-clock samples) =="
            grep -v '^#' "$OUT/by-dso.txt" | grep -v '^$' | head -8
            echo
            echo "== top symbols =="
            grep -v '^#' "$OUT/by-symbol.txt" | grep -v '^$' | head -45
        } | tee "$OUT/summary.txt"
        ;;
    massif)
        ms_print "$OUT/massif.out" >"$OUT/massif.txt" 2>/dev/null || true
        PEAK=$(grep -o 'mem_heap_B=[0-9]*' "$OUT/massif.out" | cut -d= -f2 | sort -n | tail -1)
        {
            echo "peak heap: $PEAK bytes with $STREAMS streams open: $((PEAK / STREAMS)) bytes per stream (startup heap included)"
            echo
            sed -n '/^--------------------------------------------------------------------------------$/,$p' "$OUT/massif.txt" | grep -m1 -B2 -A80 'heap allocation functions'
        } | tee "$OUT/summary.txt"
        ;;
    none) echo "window: $SECONDS_WINDOW s, $EVENTS events" | tee "$OUT/summary.txt" ;;
esac
log "profile in $OUT"
