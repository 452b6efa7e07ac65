#!/usr/bin/env bash
# Builds sse-gateway with profile-guided optimisation: a release build that records
# which code an event's path runs, trained under profile.sh's paced and fast load, then
# a release build laid out by that profile. The event path is larger than the CPU's
# instruction cache (benches/load/README.md, "Less per event and per connection");
# the profile puts its hot code together and its cold code aside.
#
#   bash benches/load/pgo.sh                     # the binary: $TARGET/pgo/sse-gateway
#   bash benches/load/pgo.sh --seconds 30 --out /usr/local/bin/sse-gateway
#
# Options:
#   --seconds N   the training window of each scenario (default 15)
#   --out PATH    where the optimised binary is copied (default $TARGET/pgo/sse-gateway)
#
# Needs LLVM's profile tools of the Rust toolchain in use (`rustup component add
# llvm-tools`; added when missing), two cores or more, and what profile.sh needs
# (taskset, curl). The training runs on loopback, the gateway on core 0 and the load
# on core 1, as the benchmarks do; the two builds are whole-program LTO and take 3.5 to
# 5 minutes each on 2 cores. The profile's raw data and both builds stay under
# $TARGET/pgo/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
SECONDS_EACH=15
OUT_BIN=""
die() { echo "pgo.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_EACH=${2:?}; shift ;;
        --out) OUT_BIN=${2:?}; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
[[ "$SECONDS_EACH" =~ ^[0-9]+$ ]] && [ "$SECONDS_EACH" -ge 1 ] || die "--seconds must be a whole number of seconds"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

WORK=$TARGET_DIR/pgo
OUT_BIN=${OUT_BIN:-$WORK/sse-gateway}
HOST=$(cd "$REPO" && rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(cd "$REPO" && rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
if [ ! -x "$PROFDATA" ]; then
    log "adding the llvm-tools component (llvm-profdata)"
    rustup component add llvm-tools
    [ -x "$PROFDATA" ] || die "no llvm-profdata at $PROFDATA after adding llvm-tools"
fi

# --target keeps RUSTFLAGS off build scripts and proc macros: only the gateway's own
# code is instrumented, then optimised.
build() {
    local dir=$1 flags=$2
    (cd "$REPO" && CARGO_TARGET_DIR=$dir RUSTFLAGS="$flags" \
        cargo build --release --locked --quiet --bin sse-gateway --target "$HOST")
}

RAW=$WORK/raw
rm -rf "$RAW"
mkdir -p "$RAW"
log "building the instrumented gateway"
build "$WORK/generate" "-Cprofile-generate=$RAW"
INSTRUMENTED=$WORK/generate/$HOST/release/sse-gateway

# The events of a token stream, paced and as fast as read, batched and one per write;
# every stream also opens a connection and passes the route's rules and supervision.
# Code the training never runs is laid out as cold, so the features an operator turns
# on run in it too: the OpenAI chat preset, resume (memory store), and traces when
# Python is there for the OTLP sink.
train() {
    log "training: $*, ${SECONDS_EACH}s"
    bash "$REPO/benches/load/profile.sh" --tool none --seconds "$SECONDS_EACH" \
        --gateway-bin "$INSTRUMENTED" --scenario "$@" >/dev/null
}
train each-paced
train latency
train each-fast
train throughput
train each-paced --protocol openai-chat
train latency --resume "{ store: memory }"
if command -v python3 >/dev/null 2>&1; then train latency --otlp; fi
shopt -s nullglob
profiles=("$RAW"/*.profraw)
[ "${#profiles[@]}" -gt 0 ] || die "the training wrote no profile to $RAW (did the gateway exit cleanly?)"
"$PROFDATA" merge -o "$WORK/merged.profdata" "${profiles[@]}"
# cargo rebuilds when RUSTFLAGS change, not when a file they name does: the profile's
# name carries its digest, so a new profile is a new flag and a fresh build.
PROFILE=$WORK/profile-$(sha256sum "$WORK/merged.profdata" | cut -c1-16).profdata
mv "$WORK/merged.profdata" "$PROFILE"
log "merged ${#profiles[@]} raw profile(s) into $PROFILE"

log "building the optimised gateway"
build "$WORK/use" "-Cprofile-use=$PROFILE"
OPTIMISED=$WORK/use/$HOST/release/sse-gateway

# The optimised binary must forward a paced load: a short run, which has to see events.
log "checking the optimised gateway under load"
summary=$(bash "$REPO/benches/load/profile.sh" --tool none --scenario latency --streams 50 \
    --seconds 3 --gateway-bin "$OPTIMISED" | tail -n 1)
events=$(sed -n 's/^window: [0-9]* s, \([0-9]*\) events$/\1/p' <<<"$summary")
[ "${events:-0}" -gt 0 ] || die "the optimised gateway forwarded no event in its check ($summary)"
log "it forwarded $events events in 3 s"
install -D -m 0755 "$OPTIMISED" "$OUT_BIN"
log "profile-guided build: $OUT_BIN"
