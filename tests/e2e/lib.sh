# shellcheck shell=bash
# Helpers shared by the end-to-end scripts in tests/e2e/ (bash; source it, don't run it).
#
#   source "$(dirname "$0")/lib.sh"
#   e2e_init                      # temp dir in $E2E_TMP, cleanup trap, counters
#   e2e_spawn NAME cmd args...    # background process, logged to $E2E_TMP/NAME.log, killed at exit
#   e2e_check "what" cmd args...  # PASS/FAIL line from the command's exit status
#   e2e_finish                    # "N passed, M failed" and the exit status
#
# Processes are stopped by the PIDs recorded here, never by name.

E2E_PASSED=0
E2E_FAILED=0
E2E_PIDS=()
E2E_TMP=""

e2e_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

e2e_pass() {
    E2E_PASSED=$((E2E_PASSED + 1))
    printf 'PASS %s\n' "$*"
}

e2e_fail() {
    E2E_FAILED=$((E2E_FAILED + 1))
    printf 'FAIL %s\n' "$*"
}

# e2e_check DESCRIPTION COMMAND...: PASS when the command exits 0, FAIL otherwise; the
# command's output is shown under a FAIL only.
e2e_check() {
    local what=$1 output
    shift
    if output=$("$@" 2>&1); then
        e2e_pass "$what"
    else
        e2e_fail "$what"
        [ -n "$output" ] && printf '%s\n' "$output" | sed 's/^/     /' | head -n 40
    fi
    return 0
}

# Stops every recorded process (TERM, then KILL after 3 s) and removes the temp dir,
# unless E2E_KEEP_TMP=1 or something failed (then its path is printed).
e2e_cleanup() {
    local pid
    for pid in "${E2E_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 30); do
        local alive=0
        for pid in "${E2E_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${E2E_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "$E2E_TMP" ] && [ -d "$E2E_TMP" ]; then
        if [ "${E2E_KEEP_TMP:-0}" = 1 ] || [ "$E2E_FAILED" -gt 0 ]; then
            e2e_log "logs kept in $E2E_TMP"
        else
            rm -rf "$E2E_TMP"
        fi
    fi
}

e2e_init() {
    E2E_TMP=$(mktemp -d "${TMPDIR:-/tmp}/sse-gateway-e2e.XXXXXX")
    trap e2e_cleanup EXIT
    trap 'e2e_log "interrupted"; exit 130' INT
    trap 'e2e_log "terminated (time limit?)"; exit 143' TERM
}

# e2e_spawn NAME COMMAND...: runs the command in the background with its output in
# $E2E_TMP/NAME.log; its PID is recorded for cleanup and left in $E2E_LAST_PID.
e2e_spawn() {
    local name=$1
    shift
    "$@" >"$E2E_TMP/$name.log" 2>&1 &
    E2E_LAST_PID=$!
    E2E_PIDS+=("$E2E_LAST_PID")
}

# e2e_build_gateway: `cargo build --release` (CARGO_TARGET_DIR is honoured, relative to
# the repository root, the working directory); sets GATEWAY to the binary's absolute path.
e2e_build_gateway() {
    local target_dir=${CARGO_TARGET_DIR:-target}
    e2e_log "cargo build --release (target dir $target_dir)"
    CARGO_TARGET_DIR=$target_dir timeout 1800 cargo build --release --quiet || return 1
    GATEWAY="$target_dir/release/sse-gateway"
    case $GATEWAY in /*) ;; *) GATEWAY="$(pwd)/$GATEWAY" ;; esac
}

# e2e_python_venv VENV CHECK PACKAGE==VERSION...: a virtualenv at VENV with the pinned
# packages, made afresh unless CHECK (Python code) already succeeds in it. Needs
# Python's venv module (Debian's python3-venv).
e2e_python_venv() {
    local venv=$1 check=$2
    shift 2
    if "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        return 0
    fi
    e2e_log "installing $* into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    timeout 120 python3 -m venv "$venv" >&2 &&
        timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check "$@" >&2
}

# A TCP port free on 127.0.0.1 right now (the kernel picks it).
e2e_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# e2e_wait SECONDS COMMAND...: retries the command every 0.2 s until it succeeds;
# fails when the time is up.
e2e_wait() {
    local seconds=$1 deadline
    shift
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
}

# e2e_http_ok URL: the URL answers 200.
e2e_http_ok() {
    curl -fsS --max-time 2 -o /dev/null "$1"
}

# Prints the closing line and returns the script's exit status.
e2e_finish() {
    printf '%s passed, %s failed\n' "$E2E_PASSED" "$E2E_FAILED"
    [ "$E2E_FAILED" -eq 0 ]
}
