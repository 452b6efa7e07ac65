//! `deploy/systemd/sse-gateway.service`: the unit keeps its hardening, reloads with
//! SIGHUP, gives the drain time to finish, and passes `systemd-analyze verify` (with
//! the real binary in place of the installed path, since verify checks that every
//! command exists) and `systemd-analyze security` with a low exposure score.
//!
//! `systemd-analyze` needs no running systemd, but it must be installed. Where it is
//! not (a non-Linux machine, a slim image), the checks that need it say so on stderr
//! and pass; `tests/e2e/systemd.sh` installs it and sets
//! `SSE_GATEWAY_REQUIRE_SYSTEMD_ANALYZE=1`, which makes a missing tool a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sse_gateway::config::defaults;
use sse_gateway::shutdown::after_drain;

const INSTALLED_BINARY: &str = "/usr/local/bin/sse-gateway";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/sse-gateway.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).expect("deploy/systemd/sse-gateway.service")
}

/// Every value of `key=` in the unit, in order.
fn values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().to_owned())
        .collect()
}

fn value(unit: &str, key: &str) -> String {
    let found = values(unit, key);
    assert_eq!(found.len(), 1, "{key}= should appear once: {found:?}");
    found[0].clone()
}

#[test]
fn the_unit_is_hardened_reloads_with_sighup_and_covers_the_drain() {
    let unit = unit();
    for (key, expected) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("DynamicUser", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("ExecReload", "kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(value(&unit, key), expected, "{key}");
    }
    assert_eq!(
        value(&unit, "ExecStart"),
        format!("{INSTALLED_BINARY} --config /etc/sse-gateway/gateway.yaml")
    );
    // A stop drains for drain_timeout, then takes at most after_drain more; systemd
    // must not SIGKILL before, or clients lose their closing events.
    let timeout: u64 = value(&unit, "TimeoutStopSec").parse().unwrap();
    let needed = defaults::DRAIN_TIMEOUT + after_drain(defaults::FINAL_SCRAPE_WAIT);
    assert!(
        Duration::from_secs(timeout) > needed,
        "TimeoutStopSec={timeout} must exceed drain_timeout + the final scrape wait ({needed:?})"
    );
}

/// The installed `systemd-analyze`, or why the checks that need it cannot run.
fn systemd_analyze() -> Option<Command> {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    let reason = match probe {
        Ok(output) if output.status.success() => return Some(Command::new("systemd-analyze")),
        Ok(output) => format!(
            "`systemd-analyze --version` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => format!("systemd-analyze is not installed ({error})"),
    };
    assert!(
        std::env::var("SSE_GATEWAY_REQUIRE_SYSTEMD_ANALYZE").as_deref() != Ok("1"),
        "{reason}"
    );
    eprintln!(
        "SKIPPED: {reason}; install systemd (Debian: apt-get install systemd) or run tests/e2e/systemd.sh"
    );
    None
}

/// The unit with the binary this test run built in place of the installed path, in a
/// directory of its own.
fn unit_with_built_binary(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sse-gateway-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sse-gateway.service");
    let text = unit().replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_sse-gateway"));
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Some(mut analyze) = systemd_analyze() else {
        return;
    };
    let (dir, path) = unit_with_built_binary("verify");
    // --man=no: the man page is installed by the operator (`sse-gateway man`), not here.
    let output = analyze
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // verify exits 0 on a misspelt value and only warns, so its warnings about this
    // unit count too (lines about the host's other units do not).
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("sse-gateway.service"))
        .collect();
    assert!(
        output.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn the_unit_has_a_low_exposure_score() {
    let Some(mut analyze) = systemd_analyze() else {
        return;
    };
    let (dir, path) = unit_with_built_binary("security");
    let output = analyze
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() && text.contains("--offline") {
        // systemd before 250 has no offline mode.
        eprintln!("SKIPPED: this systemd-analyze cannot score a unit offline:\n{text}");
        return;
    }
    let score: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for sse-gateway.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    // 0 is fully locked down, 10 is unprotected; systemd calls up to 2 "OK".
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}
