# shellcheck shell=bash
# Shared by run.sh, profile.sh and soak.sh: starting and stopping the processes of a
# run, and the route's example stream rules. Sourced, not run; the sourcing script
# defines `die`.

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# --- process handling ------------------------------------------------------------
# PIDs of the `timeout` wrappers and of the real processes this script started; all
# are stopped on any exit.
STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    STARTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# child PID of a process (the first), waiting up to 5 s for it to appear
child_of() {
    local parent=$1 kids
    for _ in $(seq 1 100); do
        kids=$(cat "/proc/$parent/task/$parent/children" 2>/dev/null || true)
        if [ -n "$kids" ]; then echo "${kids%% *}"; return 0; fi
        sleep 0.05
    done
    return 1
}

# start_bg LOG SECONDS CMD...: runs CMD under `timeout`; sets BG_PID to the real
# process (timeout's child; taskset and env exec it) and BG_WRAPPER to `timeout`
BG_PID=""
BG_WRAPPER=""
start_bg() {
    local logfile=$1 secs=$2
    shift 2
    timeout -k 5 "$secs" "$@" >"$logfile" 2>&1 &
    BG_WRAPPER=$!
    STARTED+=("$BG_WRAPPER")
    BG_PID=$(child_of "$BG_WRAPPER") || die "$1 did not start (see $logfile)"
    STARTED+=("$BG_PID")
}

# wait_port PORT [SECONDS]: true once 127.0.0.1:PORT accepts (default: within 10 s)
wait_port() {
    local port=$1 tries=$((${2:-10} * 20))
    for _ in $(seq 1 "$tries"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# write_nginx_conf DIR PORT UPSTREAM_PORT MAX_CONNECTIONS [MAIN_DIRECTIVES]: DIR/nginx.conf,
# NGINX as run.sh compares it (NOFILE must be set); MAIN_DIRECTIVES go in the main
# context (profile.sh: "master_process off;", one process for valgrind)
write_nginx_conf() {
    local dir=$1 port=$2 up=$3 max_conn=$4 main=${5:-}
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
# 1 worker, proxy_buffering off: the usual SSE setup.
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
$main
pid $dir/nginx.pid;
error_log stderr warn;
events {
    worker_connections $((3 * max_conn + 1000));
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    upstream sse { server 127.0.0.1:$up; keepalive 64; }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://sse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
EOF
}

# design_stream_rules [PINGS_RULE_NAME]: the example route's `rules` and `terminator`
# of a route's `stream` section, indented for it
design_stream_rules() {
    cat <<EOF2
      rules:
        - repair: orphan_lines
        - replace: { pattern: '(?m)^data:\r?\n', with: 'data:' }
        - replace: { scope: data, pattern: '"text":', with: '"value":' }
        - drop: { pattern: '^:', name: ${1:-upstream-pings} }
      terminator: { data: "[DONE]", forward: true, on_upstream_eof: synthesize }
EOF2
}
