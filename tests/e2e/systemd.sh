#!/usr/bin/env bash
# The systemd unit, checked by systemd's own tools: `systemd-analyze verify` (syntax,
# every command present) and `systemd-analyze security` (exposure score), through
# `cargo test --test systemd` with a missing systemd-analyze made a failure rather
# than a skip.
#
#   bash tests/e2e/systemd.sh          (from the repository root)
#
# Installs Debian's systemd package when systemd-analyze is missing (needs root or
# sudo). systemd-analyze needs no running systemd: it works in a container whose PID
# 1 is something else. Prints PASS/FAIL and ends with "N passed, M failed".
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=tests/e2e/lib.sh
source tests/e2e/lib.sh

if ! command -v systemd-analyze >/dev/null; then
    e2e_log "installing Debian's systemd package (for systemd-analyze)"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    timeout 600 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    timeout 600 $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
e2e_log "$(systemd-analyze --version | head -n 1)"

e2e_check "cargo test --test systemd (systemd-analyze verify and security)" \
    env SSE_GATEWAY_REQUIRE_SYSTEMD_ANALYZE=1 timeout 1800 cargo test --quiet --test systemd
e2e_finish
