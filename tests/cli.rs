//! The `sse-gateway` binary as an operator runs it: `check` on the shipped config and
//! on broken ones (exit code and the exact `FILE:LINE:COL: message` lines), `--help`,
//! `--version`, and `run` on the shipped config serving the demo stream.
//!
//! These drive a child process from plain threads, with no runtime to block, so the
//! std clock and sleep are the right tools here. One test compares `rewrite` with the
//! live route: that side runs in process, on the shared test support.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gateway_bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sse-gateway"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command.env_remove("RUST_LOG");
    command
}

fn check(config: &str) -> (i32, String, String) {
    check_with(&["check", "--config", config])
}

fn check_env_optional(config: &str) -> (i32, String, String) {
    check_with(&["check", "--env-optional", "--config", config])
}

/// `check` with the variables the fixtures name unset (or empty), whatever the
/// environment running the tests has.
fn check_with(args: &[&str]) -> (i32, String, String) {
    let output = gateway_bin()
        .args(args)
        .env_remove("SSE_GATEWAY_TEST_UNSET_KEY")
        .env_remove("SSE_GATEWAY_TEST_UNSET_URL")
        .env("SSE_GATEWAY_TEST_EMPTY_KEY", "")
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn shipped_config_passes_check() {
    let (code, stdout, stderr) = check("gateway.yaml");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("gateway.yaml: ok"), "{stdout}");
}

/// A file saved with a byte order mark (as editors on Windows save it) reads as one
/// without: valid, and its problems at the same line and column.
#[test]
fn a_byte_order_mark_is_no_problem() {
    let dir = std::env::temp_dir().join(format!("sse-gateway-bom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with_bom = |name: &str, from: &str| {
        let path = dir.join(name);
        let text = std::fs::read(from).unwrap();
        std::fs::write(&path, [b"\xef\xbb\xbf".as_slice(), &text].concat()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (code, stdout, stderr) = check(&with_bom("gateway.yaml", "gateway.yaml"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok ("), "{stdout}");
    let broken = with_bom(
        "unknown_key.yaml",
        "tests/fixtures/configs/unknown_key.yaml",
    );
    let (code, _, stderr) = check(&broken);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("unknown_key.yaml:6:5: routes[0].macth: unknown field"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_design_example_passes_check() {
    let (code, stdout, stderr) = check("tests/fixtures/configs/valid/design.yaml");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok (1 route, 2 upstreams)"), "{stdout}");
}

#[test]
fn every_example_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let (code, stdout, stderr) = check(path.to_str().unwrap());
            assert_eq!(code, 0, "{}: {stderr}", path.display());
            assert!(stdout.contains(": ok ("), "{stdout}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "one example per protocol");
}

/// Each broken config, and every line `check` must print for it.
const BROKEN: &[(&str, &[&str])] = &[
    (
        "unknown_key.yaml",
        &["unknown_key.yaml:6:5: routes[0].macth: unknown field `macth`, expected one of `name`, `match`, `upstream`, `request`"],
    ),
    (
        // One header under two spellings: which value went upstream was an accident.
        "header_set_twice.yaml",
        &[
            "header_set_twice.yaml:9:26: routes[0].request.headers.set.x-a: header x-a is set twice (also as X-A)",
            "header_set_twice.yaml:15:26: routes[1].request.headers.set.Y-B: header Y-B is set twice (also as y-b)",
        ],
    ),
    (
        // A retry with nothing to retry on.
        "retry_on_nothing.yaml",
        &["retry_on_nothing.yaml:11:18: routes[0].retry.on: an empty list retries nothing"],
    ),
    (
        // `routes` written without its `- `: one problem, not also "missing `routes`".
        "routes_not_a_list.yaml",
        &["routes_not_a_list.yaml:4:3: routes: invalid type: map, expected a sequence"],
    ),
    (
        // An upstream's name is its key: located there, not at its first value.
        "bad_upstream_name.yaml",
        &["bad_upstream_name.yaml:3:3: upstreams.the assistant: invalid upstream name \"the assistant\""],
    ),
    (
        // Located at the second `upstream`, the one to remove, not at the mapping.
        "duplicate_key.yaml",
        &["duplicate_key.yaml:8:5: invalid YAML: routes[0]: duplicate entry with key \"upstream\""],
    ),
    (
        "duplicate_route.yaml",
        &["duplicate_route.yaml:7:11: routes[1].name: duplicate route name \"chat\" (also routes[0].name)"],
    ),
    (
        "unknown_upstream.yaml",
        &["unknown_upstream.yaml:6:15: routes[0].upstream: unknown upstream \"assistant\" (defined: demo)"],
    ),
    (
        "bad_url.yaml",
        &["bad_url.yaml:3:10: upstreams.assistant.url: invalid upstream url \"ftp://127.0.0.1:8000\": the scheme must be http or https"],
    ),
    (
        "bad_port.yaml",
        &["bad_port.yaml:3:10: upstreams.assistant.url: invalid upstream url \"http://127.0.0.1:83626\": the port must be a number from 1 to 65535"],
    ),
    (
        "zero_timeouts.yaml",
        &[
            "zero_timeouts.yaml:4:21: upstreams.assistant.header_timeout: header_timeout must be longer than 0 (such as 30s): at 0 every request would fail",
            "zero_timeouts.yaml:7:49: routes[0].match.methods: an empty list matches no request: list the methods (such as [GET, POST]) or leave `methods` out for all",
        ],
    ),
    (
        "admin_port_taken.yaml",
        &["admin_port_taken.yaml:2:18: admin.listen: admin.listen 127.0.0.1:18080 is the same port as listen 0.0.0.0:18080: metrics and health must not share the public port"],
    ),
    (
        "bad_duration.yaml",
        &["bad_duration.yaml:4:21: upstreams.assistant.header_timeout: invalid duration \"5 minutes\": expected an integer and a unit (ms, s, m, h, d), such as 250ms or 30s"],
    ),
    (
        "missing_env.yaml",
        &["missing_env.yaml:10:22: routes[0].request.headers.set.x-api-key: environment variable SSE_GATEWAY_TEST_UNSET_KEY is not set"],
    ),
    (
        "overlapping_prefix.yaml",
        &["overlapping_prefix.yaml:8:14: routes[1].match: route \"chat-v2\" matches the same path /api/stream as routes[0] with overlapping methods"],
    ),
    (
        "bad_yaml.yaml",
        &["bad_yaml.yaml:3:1: invalid YAML: did not find expected ',' or '}'"],
    ),
    (
        "bad_traffic.yaml",
        &[
            "bad_traffic.yaml:3:5: upstreams.assistant: give one of `url`, `endpoints` or `demo`",
            "bad_traffic.yaml:9:17: upstreams.pool.endpoints[1].name: duplicate endpoint name \"a\" (also endpoints[0])",
            "bad_traffic.yaml:10:25: upstreams.pool.health.failures: failures must be at least 1",
            "bad_traffic.yaml:15:28: routes[0].limits.max_streams: max_streams must be at least 1",
            "bad_traffic.yaml:15:53: routes[0].limits.per_client.header: invalid header name \"bad header\"",
            "bad_traffic.yaml:16:24: routes[0].retry.attempts: attempts counts the first request too: between 2 and 10",
            "bad_traffic.yaml:16:41: routes[0].retry.on[1]: cannot retry on 500: use one of connect, timeout, 429, 502, 503, 504, before_content",
        ],
    ),
    (
        "bad_log_level.yaml",
        &["bad_log_level.yaml:1:15: log.level: invalid log level \"inof\": `inof` is not a level (use error, warn, info, debug, trace or off); to log a target, write `inof=LEVEL`"],
    ),
    (
        "bad_listen.yaml",
        &["bad_listen.yaml:1:9: listen: invalid address \"localhost\": expected IP:PORT"],
    ),
    (
        "unknown_top_level.yaml",
        &[
            "unknown_top_level.yaml:1:1: missing `routes`: define at least one route",
            "unknown_top_level.yaml:3:1: route: unknown key `route` (expected one of: listen, admin, drain_timeout, shutdown, log, upstreams, routes, telemetry, state, trusted_proxies)",
        ],
    ),
    (
        "bad_method_and_path.yaml",
        &[
            "bad_method_and_path.yaml:5:27: routes[0].match.path_prefix: invalid path \"api/stream\": it must start with /",
            "bad_method_and_path.yaml:5:54: routes[0].match.methods[1]: invalid HTTP method \"FETCH ME\"",
            "bad_method_and_path.yaml:8:15: routes[0].request.method: invalid HTTP method \"P OST\"",
        ],
    ),
    (
        "many_problems.yaml",
        &[
            "many_problems.yaml:1:9: listen: invalid address \"0.0.0.0:99999\"",
            "many_problems.yaml:5:22: upstreams.assistant.connect_timeout: invalid duration \"1.5s\"",
            "many_problems.yaml:7:10: upstreams.backup.url: invalid upstream url \"not a url\"",
            "many_problems.yaml:11:15: routes[0].upstream: unknown upstream \"nowhere\" (defined: assistant, backup)",
            "many_problems.yaml:12:11: routes[1].name: invalid route name \"bad name!\"",
            "many_problems.yaml:21:11: routes[2].request.headers.set.connection: header connection is managed by the gateway",
        ],
    ),
    (
        "bad_protocol.yaml",
        &[
            "bad_protocol.yaml:9:24: routes[0].stream.complete_when: protocol openai-chat brings its own completion evidence; complete_when is for protocol: sse",
            "bad_protocol.yaml:15:38: routes[1].stream.complete_when.data_matches: invalid regex \"(\": unclosed group",
            "bad_protocol.yaml:20:17: routes[2].stream.protocol: unknown variant `openai`, expected one of `openai-chat`, `openai-responses`, `anthropic`, `sse`",
            "bad_protocol.yaml:24:43: routes[3].stream.usage: usage: request adds stream_options.include_usage, which only protocol: openai-chat has (this route's protocol is anthropic)",
            "bad_protocol.yaml:28:45: routes[4].stream.usage: unknown variant `always`, expected `passthrough` or `request`",
        ],
    ),
    (
        "bad_stream.yaml",
        &[
            "bad_stream.yaml:9:31: routes[0].stream.rules[0].replace.pattern: invalid regex \"(unclosed\": unclosed group",
            "bad_stream.yaml:10:13: routes[0].stream.rules[1]: a rule is exactly one of",
            "bad_stream.yaml:11:41: routes[0].stream.rules[2].drop.scope: unknown variant `everything`, expected `event` or `data`",
            "bad_stream.yaml:12:21: routes[0].stream.terminator: give exactly one of `data`",
        ],
    ),
    (
        // Shape problems do not hide the cross-field ones: each of the six is printed.
        "shape_and_cross.yaml",
        &[
            "shape_and_cross.yaml:7:30: routes[0].request.body_timeout: invalid duration \"30\"",
            "shape_and_cross.yaml:8:11: routes[1].name: duplicate route name \"chat\" (also routes[0].name)",
            "shape_and_cross.yaml:9:14: routes[1].match: route \"chat\" matches the same path /api/stream as routes[0] with overlapping methods",
            "shape_and_cross.yaml:11:16: routes[1].request.bodyy: unknown field `bodyy`",
            "shape_and_cross.yaml:14:15: routes[2].upstream: unknown upstream \"nowhere\" (defined: demo)",
            "shape_and_cross.yaml:15:31: routes[2].stream.max_event_size: invalid size \"1mb\": expected an integer and a unit (B, KiB, MiB, GiB, KB, MB, GB)",
        ],
    ),
    (
        // What used to be accepted as a guess: an empty variable (reported once, not
        // again as a bad url), a misspelt method, a size without or with a wrong unit;
        // each section of a route is read on its own, so none hides another's problem.
        "silent_guesses.yaml",
        &[
            "silent_guesses.yaml:3:21: upstreams.assistant.url: environment variable SSE_GATEWAY_TEST_EMPTY_KEY is set but empty",
            "silent_guesses.yaml:6:55: routes[0].match.methods[1]: invalid HTTP method \"PSOT\": use a standard method (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH)",
            "silent_guesses.yaml:9:22: routes[0].request.max_body_size: invalid size \"1024\"",
            "silent_guesses.yaml:11:23: routes[0].stream.max_event_size: invalid size \"2mib\"",
            "silent_guesses.yaml:14:16: routes[0].response.headers.set.connection: header connection is managed by the gateway",
            "silent_guesses.yaml:19:15: routes[1].request.method: invalid HTTP method \"FETCH\"",
        ],
    ),
    (
        "bad_cors.yaml",
        &[
            "bad_cors.yaml:8:23: routes[0].cors.allow_origins[0]: `*` cannot go with allow_credentials: true",
            "bad_cors.yaml:8:28: routes[0].cors.allow_origins[1]: invalid origin \"https://app.example.com/\": an origin has no path",
            "bad_cors.yaml:8:56: routes[0].cors.allow_origins[2]: invalid origin \"app.example.com\": expected http:// or https://",
            "bad_cors.yaml:10:23: routes[0].cors.allow_headers[0]: invalid header name \"bad header\"",
            "bad_cors.yaml:14:11: routes[0].response.headers.set.connection: header connection is managed by the gateway per connection",
            "bad_cors.yaml:15:11: routes[0].response.headers.set.content-length: header content-length frames the response body",
            "bad_cors.yaml:17:18: routes[0].response.headers.remove[0]: header transfer-encoding is managed by the gateway per connection",
        ],
    ),
    (
        "bad_trusted_proxies.yaml",
        &[
            "bad_trusted_proxies.yaml:3:5: trusted_proxies[1]: \"10.1.2.3/8\" has host bits set below its /8; write the range's first address, 10.0.0.0/8",
            "bad_trusted_proxies.yaml:4:5: trusted_proxies[2]: invalid address range \"ingress.internal\": expected an IP address or CIDR such as 10.0.0.0/8, 192.168.1.7 or fd00::/8",
        ],
    ),
    (
        "empty.yaml",
        &["empty.yaml: the file is empty; it needs at least `upstreams` and `routes`"],
    ),
    (
        // Two problems in each section: serde stops at the first, the second is found
        // once the first key is taken out.
        "two_in_a_section.yaml",
        &[
            "two_in_a_section.yaml:4:5: upstreams.assistant.conect_timeout: unknown field `conect_timeout`",
            "two_in_a_section.yaml:5:21: upstreams.assistant.header_timeout: invalid duration \"1.5s\"",
            "two_in_a_section.yaml:8:14: routes[0].match.path_prefx: unknown field `path_prefx`",
            "two_in_a_section.yaml:9:5: routes[0].upstreem: unknown field `upstreem`",
            "two_in_a_section.yaml:11:17: routes[0].stream.protocol: unknown variant `openai`",
            "two_in_a_section.yaml:12:7: routes[0].stream.max_event_sise: unknown field `max_event_sise`",
        ],
    ),
    (
        // The values beside a misspelt key are checked too; the mappings that lost
        // one (`spare` its url, `match` its path) are not also said to miss it.
        "values_beside_a_misspelt_key.yaml",
        &[
            "values_beside_a_misspelt_key.yaml:5:10: upstreams.up.url: invalid upstream url \"ftp://h\"",
            "values_beside_a_misspelt_key.yaml:6:5: upstreams.up.conect_timeout: unknown field `conect_timeout`",
            "values_beside_a_misspelt_key.yaml:7:25: upstreams.up.health.failures: failures must be at least 1",
            "values_beside_a_misspelt_key.yaml:9:5: upstreams.spare.ulr: unknown field `ulr`",
            "values_beside_a_misspelt_key.yaml:12:14: routes[0].match.path_prefx: unknown field `path_prefx`",
            "values_beside_a_misspelt_key.yaml:12:40: routes[0].match.methods[0]: invalid HTTP method \"PSOT\"",
            "values_beside_a_misspelt_key.yaml:15:23: routes[0].stream.max_event_size: max_event_size must be between 1B and 1GiB",
            "values_beside_a_misspelt_key.yaml:16:25: routes[0].stream.resume.window: window must be more than 0 and at most 1h",
            "values_beside_a_misspelt_key.yaml:17:7: routes[0].stream.heartbeet: unknown field `heartbeet`",
        ],
    ),
];

#[test]
fn broken_configs_fail_check_with_every_problem_located() {
    assert!(BROKEN.len() >= 8);
    for (file, expected) in BROKEN {
        let path = format!("tests/fixtures/configs/{file}");
        let (code, stdout, stderr) = check(&path);
        assert_eq!(code, 1, "{file} must fail check:\n{stderr}");
        assert!(stdout.is_empty(), "{file}: {stdout}");
        let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&path)).collect();
        assert_eq!(
            problems.len(),
            expected.len(),
            "{file}: expected {} problem lines and a summary, got:\n{stderr}",
            expected.len()
        );
        for (line, want) in problems.iter().zip(expected.iter()) {
            let want = format!("tests/fixtures/configs/{want}");
            assert!(
                line.starts_with(&want),
                "{file}:\n  got  {line}\n  want {want}"
            );
        }
        let summary = format!("{} problem", expected.len());
        assert!(
            stderr.lines().last().unwrap().starts_with(&summary),
            "{stderr}"
        );
    }
}

/// An upstream's `tls.ca_file` is read by `check`, not only looked up: a file with no
/// certificate in it fails with its place in the config, as a start would fail.
#[test]
fn check_reads_an_upstreams_ca_file() {
    let dir = std::env::temp_dir().join(format!("sse-gateway-ca-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.yaml");
    let ca_file = dir.join("ca.pem");
    let yaml = format!(
        "upstreams:\n  private:\n    url: https://127.0.0.1:9443\n    tls: {{ ca_file: \"{}\" }}\n\
         routes:\n  - {{ name: chat, match: {{ path_prefix: /api }}, upstream: private }}\n",
        ca_file.display()
    );
    std::fs::write(&config, yaml).unwrap();
    let config = config.to_str().unwrap();

    std::fs::write(&ca_file, "not a certificate\n").unwrap();
    let (code, _, stderr) = check(config);
    assert_eq!(code, 1, "{stderr}");
    let want = format!("{config}:4:21: upstreams.private.tls.ca_file: CA file");
    assert!(stderr.starts_with(&want), "want {want}\n got {stderr}");
    assert!(stderr.contains("no PEM certificate in it"), "{stderr}");

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let (code, _, stderr) = check(config);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn unreadable_config_is_exit_1_with_the_reason() {
    let (code, _, stderr) = check("no/such/gateway.yaml");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no/such/gateway.yaml: cannot read the config file"),
        "{stderr}"
    );
}

#[test]
fn help_and_version_are_readable() {
    let help = gateway_bin().arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for needle in ["--config <FILE>", "check", "run", "Exit codes"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let version = gateway_bin().arg("--version").output().unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    // The commit the binary was built from: this checkout's HEAD, or "unknown" where
    // the source is not a git checkout.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8(o.stdout).unwrap().trim().to_owned(),
        );
    let commit = std::env::var("SSE_GATEWAY_COMMIT").unwrap_or(head);
    assert_eq!(
        version.trim(),
        format!(
            "sse-gateway {} (commit {commit})",
            env!("CARGO_PKG_VERSION")
        )
    );
    let bad = gateway_bin().arg("--no-such-flag").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// An empty `SSE_GATEWAY_CONFIG` (a template that rendered nothing) is as unset.
#[test]
fn an_empty_sse_gateway_config_is_as_unset() {
    let output = gateway_bin()
        .arg("check")
        .env("SSE_GATEWAY_CONFIG", "")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.starts_with("gateway.yaml: ok"), "{stdout}");
}

#[test]
fn sse_gateway_config_names_the_config_and_config_wins_over_it() {
    let from_env = gateway_bin()
        .arg("check")
        .env(
            "SSE_GATEWAY_CONFIG",
            "tests/fixtures/configs/valid/design.yaml",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8(from_env.stdout).unwrap();
    assert_eq!(from_env.status.code(), Some(0));
    assert!(
        stdout.starts_with("tests/fixtures/configs/valid/design.yaml: ok"),
        "{stdout}"
    );
    let flag = gateway_bin()
        .args(["check", "--config", "gateway.yaml"])
        .env("SSE_GATEWAY_CONFIG", "no/such/file.yaml")
        .output()
        .unwrap();
    let stdout = String::from_utf8(flag.stdout).unwrap();
    assert!(stdout.starts_with("gateway.yaml: ok"), "{stdout}");
}

/// `sse-gateway man | head`: a reader that stops early wanted no more; the command
/// ends quietly with 0, as `cat` would under a shell that ignores SIGPIPE. Its stdout
/// is a pipe whose reading end is closed before it starts, so every write fails.
#[test]
fn output_to_a_reader_that_left_is_no_failure() {
    let commands: [&[&str]; 4] = [
        &["man"],
        &["check", "--config", "gateway.yaml"],
        &["completions", "bash"],
        &[
            "--config",
            "gateway.yaml",
            "rewrite",
            "--route",
            "chat",
            "tests/fixtures/incident.sse",
        ],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = gateway_bin()
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("cannot write"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn completions_and_man_page_are_generated_from_the_command_line() {
    for (shell, needle) in [
        ("bash", "complete -F _sse__gateway"),
        ("zsh", "#compdef sse-gateway"),
        ("fish", "complete -c sse-gateway"),
    ] {
        let output = gateway_bin().args(["completions", shell]).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains(needle), "{shell} lacks {needle}:\n{script}");
        for subcommand in ["check", "rewrite", "completions", "man"] {
            assert!(script.contains(subcommand), "{shell} lacks {subcommand}");
        }
    }
    let bad = gateway_bin().args(["completions", "cmd"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));

    let man = gateway_bin().arg("man").output().unwrap();
    assert_eq!(man.status.code(), Some(0));
    let man = String::from_utf8(man.stdout).unwrap();
    assert!(man.contains(".TH sse-gateway 1"), "{man}");
    for needle in ["SSE_GATEWAY_CONFIG", "\\-\\-config", "check"] {
        assert!(man.contains(needle), "the man page lacks {needle}:\n{man}");
    }
}

/// `man` writes one page, the only one installed: each command's synopsis and options
/// are on it, and it points at no `sse-gateway-check(1)` page that nothing writes.
#[test]
fn man_page_documents_every_command_and_its_options() {
    let man = gateway_bin().arg("man").output().unwrap();
    assert_eq!(man.status.code(), Some(0));
    let man = String::from_utf8(man.stdout).unwrap();
    for needle in [
        "sse\\-gateway check",
        "\\-\\-env\\-optional",
        "sse\\-gateway rewrite",
        "\\-\\-route",
        "CAPTURE",
        "sse\\-gateway completions",
        "SHELL",
    ] {
        assert!(man.contains(needle), "the man page lacks {needle}:\n{man}");
    }
    assert!(
        !man.contains("(1)"),
        "the man page points at other pages:\n{man}"
    );
    assert_eq!(man.matches(".TH ").count(), 1, "{man}");
}

/// `run` on a copy of the shipped config (on a free port): the demo stream arrives
/// with the question answered, one log line is written for it, and SIGTERM ends the
/// process with exit code 0.
/// The shipped config with its listener on `listen` and its admin port on any free
/// one, written to a temporary directory named after `test`: the directory and file.
fn shipped_config_listening_on(listen: &str, test: &str) -> (PathBuf, PathBuf) {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml"))
            .unwrap();
    let config = shipped
        .replace("127.0.0.1:8080", listen)
        .replace("127.0.0.1:8079", "127.0.0.1:0");
    let dir = std::env::temp_dir().join(format!("sse-gateway-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, config).unwrap();
    (dir, path)
}

#[test]
fn run_serves_the_demo_stream_from_the_shipped_config() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (dir, path) = shipped_config_listening_on(&format!("127.0.0.1:{port}"), "cli");

    let mut child = gateway_bin()
        .args(["--config", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => panic!("gateway did not listen: {error}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /api/stream?q=ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let logged: Vec<String> = stderr.lines().map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit");

    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.contains("content-type: text/event-stream"), "{reply}");
    assert!(reply.contains(r#"{"value":"Hello! "}"#), "{reply}");
    assert!(
        reply.contains(r#"\"ping\""#),
        "the demo answers the question: {reply}"
    );
    // The shipped stream section repairs the demo's flaws: no token is lost to a
    // stray newline after `data:`, pings are dropped, the terminator ends it all.
    assert!(!reply.contains("data:\n"), "{reply}");
    assert!(!reply.contains(": ping"), "{reply}");
    assert!(reply.contains("data:[DONE]\n\n\r\n0\r\n\r\n"), "{reply}");
    assert!(
        logged.iter().any(|l| l.contains("stream finished")
            && l.contains("route=\"chat\"")
            && l.contains("outcome=\"terminator\"")),
        "one log line per finished stream, without colour codes when not a terminal:\n{}",
        logged.join("\n")
    );
}

/// `RUST_LOG=inof` is a filter that would silence every line: it is not used, the
/// gateway says why, and logs at `log.level`.
#[test]
fn an_invalid_rust_log_is_said_and_does_not_silence_the_log() {
    let (dir, path) = shipped_config_listening_on("127.0.0.1:0", "rust-log");
    let mut child = gateway_bin()
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "inof")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // Liveness only: a gateway that never logs is stopped after 10 s, and fails below.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn({
        let pid = pid.clone();
        move || {
            let waited = finished.recv_timeout(Duration::from_secs(10));
            if waited == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
    });
    let mut logged = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let listening = line.contains("gateway listening");
        logged.push(line);
        if listening {
            break;
        }
    }
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    child.wait().unwrap();
    drop(done);
    watchdog.join().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let logged = logged.join("\n");
    assert!(
        logged.contains("RUST_LOG is not used: invalid log level \"inof\": `inof` is not a level"),
        "{logged}"
    );
    assert!(logged.contains("gateway listening"), "{logged}");
}

fn rewrite(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = gateway_bin()
        .arg("rewrite")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn rewrite_repairs_an_incident_capture_with_the_shipped_rules() {
    let (code, stdout, stderr) = rewrite(
        &[
            "--config",
            "gateway.yaml",
            "--route",
            "chat",
            "tests/fixtures/incident.sse",
        ],
        b"",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "data:{\"value\":\"Hel\"}\n\ndata: {\"value\":\"lo\"}\n\ndata:{\"value\":\", world\"}\n\ndata:[DONE]\n\n"
    );
    assert!(stderr.contains("6 events in"), "{stderr}");
    assert!(stderr.contains("outcome: terminator"), "{stderr}");
    assert!(stderr.contains("rule repair#0        3 hits"), "{stderr}");
    assert!(stderr.contains("rule upstream-pings  2 hits"), "{stderr}");
}

#[test]
fn rewrite_reads_stdin_and_completes_a_cut_capture() {
    let (code, stdout, stderr) = rewrite(
        &["--route", "chat", "-"],
        b"data: {\"value\":\"cut\"}\n\ndata: {\"value\":\"of",
    );
    assert_eq!(code, 0, "{stderr}");
    // The unterminated tail is completed, and the terminator synthesized.
    assert_eq!(
        stdout,
        "data: {\"value\":\"cut\"}\n\ndata: {\"value\":\"of\n\ndata: [DONE]\n\n"
    );
    assert!(stderr.contains("outcome: upstream_eof"), "{stderr}");
}

#[test]
fn rewrite_refuses_unknown_routes_and_unreadable_captures() {
    let (code, stdout, stderr) = rewrite(&["--route", "nope", "tests/fixtures/incident.sse"], b"");
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("unknown route \"nope\" (routes: chat)"),
        "{stderr}"
    );

    let (code, _, stderr) = rewrite(&["--route", "chat", "tests/fixtures/missing.sse"], b"");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read tests/fixtures/missing.sse"),
        "{stderr}"
    );
}

#[test]
fn rewrite_shows_a_truncated_answer_and_an_upstream_error_event() {
    let half =
        b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";
    let args = [
        "--config",
        "examples/openai-chat.yaml",
        "--route",
        "chat",
        "-",
    ];
    let (code, stdout, stderr) = rewrite(&args, half);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("outcome: truncated"), "{stderr}");
    assert!(
        stdout.contains("\"type\":\"upstream_incomplete\""),
        "{stdout}"
    );
    assert!(stdout.ends_with("data: [DONE]\n\n"), "{stdout}");

    let error = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let args = [
        "--config",
        "examples/anthropic.yaml",
        "--route",
        "messages",
        "-",
    ];
    let (code, stdout, stderr) = rewrite(&args, error);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("outcome: upstream_error_event"), "{stderr}");
    assert_eq!(stdout.as_bytes(), error);
}

#[test]
fn check_env_optional_warns_of_an_unset_secret_and_still_fails_an_unset_url() {
    let path = "tests/fixtures/configs/offline_secrets.yaml";
    let (code, stdout, stderr) = check(path);
    assert_eq!(code, 1, "without the flag an unset secret fails:\n{stderr}");
    let (code, stdout_optional, stderr_optional) = check_env_optional(path);
    assert_eq!(code, 0, "{stderr_optional}");
    assert!(stdout.is_empty());
    assert_eq!(
        stdout_optional.trim(),
        format!("{path}: ok (1 route, 1 upstream, 1 warning)")
    );
    assert_eq!(
        stderr_optional.trim(),
        format!("{path}:12:26: routes[0].request.headers.set.authorization: warning: environment variable SSE_GATEWAY_TEST_UNSET_KEY is not set (set it, or give a default with ${{SSE_GATEWAY_TEST_UNSET_KEY:-value}})")
    );

    let path = "tests/fixtures/configs/offline_url.yaml";
    let (code, stdout, stderr) = check_env_optional(path);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let problem = format!(
        "{path}:4:15: upstreams.llm.url: environment variable SSE_GATEWAY_TEST_UNSET_URL is not set"
    );
    assert!(stderr.starts_with(&problem), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("1 problem in tests/fixtures/configs/offline_url.yaml"),
        "{stderr}"
    );
}

#[test]
fn rewrite_needs_none_of_the_routes_header_secrets() {
    let mut child = gateway_bin()
        .args([
            "rewrite",
            "--config",
            "tests/fixtures/configs/offline_secrets.yaml",
        ])
        .args(["--route", "chat", "-"])
        .env_remove("SSE_GATEWAY_TEST_UNSET_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let capture =
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(capture.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with(capture), "{stdout}");
    assert!(
        stdout.contains("upstream_incomplete"),
        "the cut capture is truncated: {stdout}"
    );
    assert!(!stderr.contains("SSE_GATEWAY_TEST_UNSET_KEY"), "{stderr}");
}

/// `rewrite` on a capture writes what the live route sends for the same upstream
/// stream. On a route with `usage: request` and `resume`, a client that did not ask
/// for usage gets no usage chunk, and every event ends in an `id: KEY-SEQ` line (`KEY`
/// random per stream, so compared as `KEY`).
#[tokio::test]
async fn rewrite_writes_what_the_live_route_sends() {
    let capture = std::fs::read("tests/fixtures/usage/openai-chat.sse").unwrap();
    let upstream = support::ScriptedUpstream::bind().await;
    let yaml = format!(
        "upstreams:\n  assistant:\n    url: {}\n\
         routes:\n  - name: chat\n    match: {{ path_prefix: /v1/chat }}\n    upstream: assistant\n\
         \x20   stream: {{ protocol: openai-chat, usage: request, resume: {{}} }}\n",
        upstream.url()
    );
    let gateway = support::start_gateway(&yaml).await;
    let request = http::Request::post("/v1/chat")
        .header("host", "x")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"gpt-4o-mini","messages":[],"stream":true}"#,
        )))
        .unwrap();
    let served = capture.clone();
    let (response, asked) = tokio::join!(support::send(gateway.addr, request), async {
        let mut exchange = upstream.accept().await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
            served.len()
        );
        exchange.write(head.as_bytes()).await;
        exchange.write(&served).await;
        exchange.request
    });
    assert_eq!(response.status(), http::StatusCode::OK);
    let live = support::body_text(response).await;
    let asked = String::from_utf8(asked.body).unwrap();
    assert!(
        asked.contains(r#""include_usage":true"#),
        "the gateway asked for usage: {asked}"
    );
    assert!(!live.contains("\"usage\":{"), "{live}");
    assert!(live.contains("\nid: "), "{live}");

    let dir = std::env::temp_dir().join(format!("sse-gateway-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, &yaml).unwrap();
    // Blocks the test's runtime while the child runs: the live stream above is over.
    let (code, rewritten, stderr) = rewrite(
        &["--config", path.to_str().unwrap(), "--route", "chat"],
        &capture,
    );
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(unkeyed(&rewritten), unkeyed(&live));
}

/// `stream` with the key of its `id: KEY-SEQ` lines written as `KEY`; one key for the
/// whole stream, 22 characters.
fn unkeyed(stream: &str) -> String {
    let mut keys = std::collections::BTreeSet::new();
    let lines: Vec<String> = stream
        .split('\n')
        .map(|line| match line.strip_prefix("id: ") {
            Some(id) => {
                let (key, seq) = id.rsplit_once('-').expect("KEY-SEQ");
                keys.insert(key.to_owned());
                format!("id: KEY-{seq}")
            }
            None => line.to_owned(),
        })
        .collect();
    assert!(keys.len() <= 1, "one key per stream: {keys:?}");
    assert!(keys.iter().all(|key| key.len() == 22), "{keys:?}");
    lines.join("\n")
}
