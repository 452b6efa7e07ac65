//! Operating the real binary as a child process: reload on file change and on SIGHUP
//! (new streams get the new rules and the demo's new pace, running streams keep
//! theirs, a broken file keeps the old config, a file still being written is not
//! applied cut), and draining on SIGTERM.

mod support;

use std::time::Duration;

use http_body_util::BodyExt;
use support::*;
use tokio::net::TcpStream;

/// A config whose one rule renames `cat` to `animal` in the data.
fn config(upstream: &str, animal: &str) -> String {
    format!(
        "listen: LISTEN
admin: {{ listen: ADMIN }}
drain_timeout: 1s
upstreams:
  assistant: {{ url: {upstream} }}
routes:
  - name: chat
    match: {{ path_prefix: /api/stream }}
    upstream: assistant
    stream:
      rules:
        - replace: {{ scope: data, pattern: cat, with: {animal}, name: rename }}
      terminator: {{ data: \"[DONE]\" }}
      heartbeat: 0
"
    )
}

/// Opens a stream, has the upstream send `data: cat`, returns what the client got,
/// with the stream and the upstream exchange still open.
async fn open_stream(
    gateway: std::net::SocketAddr,
    upstream: &ScriptedUpstream,
) -> (Events, Exchange, bytes::Bytes) {
    let (response, mut exchange) = tokio::join!(get(gateway, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
    });
    let mut body = Events::new(response.into_body());
    exchange.send_chunk(b"data: cat\n\n").await;
    let first = next_data(&mut body).await.unwrap();
    (body, exchange, first)
}

#[tokio::test]
async fn reload_applies_new_rules_to_new_streams_and_keeps_the_old_ones_running() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = GatewayProcess::start("reload", &config(&upstream.url(), "dog")).await;
    // The startup load counts as the latest load: an alert on the gauges needs no reload.
    let started = gateway.metrics().await;
    assert_eq!(
        started.get("sse_gateway_config_last_reload_success", &[]),
        1.0
    );
    let loaded_at = started.get("sse_gateway_config_last_reload_timestamp_seconds", &[]);
    assert!(loaded_at > 1.6e9, "a Unix time: {loaded_at}");

    let (mut old_body, mut old_exchange, first) = open_stream(gateway.addr, &upstream).await;
    assert_eq!(first, "data: dog\n\n");

    // A file change (rename over the file, as a ConfigMap update does).
    gateway.replace_config(&config(&upstream.url(), "lion"));
    gateway.reloads_reach("success", 1.0).await;
    let (_new_body, _new_exchange, first) = open_stream(gateway.addr, &upstream).await;
    assert_eq!(first, "data: lion\n\n", "a new stream gets the new rule");
    old_exchange.send_chunk(b"data: cat\n\n").await;
    assert_eq!(
        next_data(&mut old_body).await.unwrap(),
        "data: dog\n\n",
        "the stream opened before the reload keeps its rules"
    );

    // SIGHUP: written in place without a rename, then signalled.
    let text = config(&upstream.url(), "tiger");
    let current = std::fs::read_to_string(&gateway.config).unwrap();
    let listen = current.lines().find(|l| l.starts_with("listen:")).unwrap();
    let admin = current.lines().find(|l| l.starts_with("admin:")).unwrap();
    let shown_log = || async {
        let config = body_text(get(gateway.admin, "/config").await).await;
        serde_json::from_str::<serde_json::Value>(&config).unwrap()["log"].clone()
    };
    let log_before = shown_log().await;
    // The log settings change too: they take effect on restart only.
    let text = text.replace("listen: LISTEN", listen).replace(
        "admin: { listen: ADMIN }",
        &format!("{admin}\nlog: {{ level: trace }}"),
    );
    std::fs::write(&gateway.config, text).unwrap();
    gateway.signal("HUP");
    gateway.reloads_reach("success", 2.0).await;
    let (_body, _exchange, first) = open_stream(gateway.addr, &upstream).await;
    assert_eq!(first, "data: tiger\n\n");
    assert_eq!(
        shown_log().await,
        log_before,
        "/config shows the log settings in force"
    );

    // A broken file: the running config stays, the errors are logged with locations.
    gateway.replace_config(
        &config(&upstream.url(), "tiger").replace("pattern: cat", "pattern: '(unclosed'"),
    );
    gateway.reloads_reach("failure", 1.0).await;
    let (_body, _exchange, first) = open_stream(gateway.addr, &upstream).await;
    assert_eq!(first, "data: tiger\n\n", "the broken file changed nothing");
    let log = gateway.log_text();
    let config_path = gateway.config.display().to_string();
    assert!(
        log.lines().any(|l| l.contains("config reload failed")
            && l.contains(&format!("{config_path}:12:"))
            && l.contains("routes[0].stream.rules[0].replace.pattern: invalid regex \\\"(unclosed\\\": unclosed group")),
        "the error is logged with its location:\n{log}"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get("sse_gateway_config_reloads_total", &[("result", "success")]),
        2.0
    );
    // The refused file turns the gauge to 0; the timestamp stays that of the config in
    // force (the SIGHUP reload), at or after the startup one.
    assert_eq!(
        metrics.get("sse_gateway_config_last_reload_success", &[]),
        0.0
    );
    let applied_at = metrics.get("sse_gateway_config_last_reload_timestamp_seconds", &[]);
    assert!(applied_at >= loaded_at, "{applied_at} < {loaded_at}");
}

/// The built-in demo upstream pacing its tokens `token_interval` apart.
fn demo_config(token_interval: &str) -> String {
    format!(
        "listen: LISTEN
admin: {{ listen: ADMIN }}
drain_timeout: 1s
upstreams:
  demo: {{ demo: {{ token_interval: {token_interval} }} }}
routes:
  - name: demo
    match: {{ path_prefix: /api/demo }}
    upstream: demo
"
    )
}

/// A reload that changes the demo's `token_interval` paces the streams opened after it
/// (a stream already running keeps its pace, as it keeps its rules), and `/config`
/// shows the value in force.
#[tokio::test]
async fn a_reload_applies_the_demos_token_interval_to_new_streams() {
    let gateway = GatewayProcess::start("demo-pace", &demo_config("1h")).await;
    let mut old = get(gateway.addr, "/api/demo").await.into_body();
    let ping = old.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(ping, ": ping\n\n", "the demo's first event comes at once");

    gateway.replace_config(&demo_config("1ms"));
    gateway.reloads_reach("success", 1.0).await;
    let shown = body_text(get(gateway.admin, "/config").await).await;
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["upstreams"]["demo"]["demo"]["token_interval"], "1ms");
    // A token an hour apart would never end within the liveness bound.
    let answer = body_text(get(gateway.addr, "/api/demo").await).await;
    assert!(answer.ends_with("data:\n[DONE]\n\n"), "{answer}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), old.frame())
            .await
            .is_err(),
        "the stream opened before the reload keeps its pace"
    );
}

/// Two routes on an upstream that refuses connections: a route that exists answers
/// 502, one that does not 404.
const TWO_ROUTES: &str = "listen: LISTEN
admin: { listen: ADMIN }
upstreams:
  assistant: { url: \"http://127.0.0.1:1\", connect_timeout: 200ms }
routes:
  - name: a
    match: { path_prefix: /api/a }
    upstream: assistant
  - name: b
    match: { path_prefix: /api/b }
    upstream: assistant
";

#[tokio::test]
async fn a_file_rewritten_in_place_is_applied_only_once_it_holds_still() {
    use std::io::Write;

    let gateway = GatewayProcess::start("in-place", TWO_ROUTES).await;
    assert_eq!(
        get(gateway.addr, "/api/b").await.status(),
        502,
        "route b exists"
    );
    let current = std::fs::read_to_string(&gateway.config).unwrap();
    let cut = current.find("  - name: b").unwrap();
    let (head, tail) = (current[..cut].to_owned(), current[cut..].to_owned());

    // Rewritten in place by a slow writer: route `a`, then comment lines for more than
    // two polls, then route `b`. Every cut in between is valid YAML without `b`; the
    // writes come far more often than the settle time, so no two reads agree until the
    // file is whole.
    let path = gateway.config.clone();
    let writer = tokio::spawn(async move {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.write_all(head.as_bytes()).unwrap();
        for line in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            file.write_all(format!("# written slowly, line {line}\n").as_bytes())
                .unwrap();
        }
        file.write_all(tail.as_bytes()).unwrap();
    });
    let mut statuses = Vec::new();
    while !writer.is_finished() {
        statuses.push(get(gateway.addr, "/api/b").await.status().as_u16());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.await.unwrap();
    assert!(
        statuses.iter().all(|&status| status == 502),
        "route b was missing while the file was written: {statuses:?}\n{}",
        gateway.log_text()
    );

    // The whole file, once still, is applied: one reload, route `b` in it.
    gateway.reloads_reach("success", 1.0).await;
    assert_eq!(get(gateway.addr, "/api/b").await.status(), 502);
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get("sse_gateway_config_reloads_total", &[("result", "failure")]),
        0.0
    );
}

#[tokio::test]
async fn sigterm_drains_then_ends_streams_with_outcome_shutdown_and_exits_0() {
    let upstream = ScriptedUpstream::bind().await;
    let mut gateway = GatewayProcess::start("drain", &config(&upstream.url(), "dog")).await;
    let (mut silent_body, _silent_exchange, _) = open_stream(gateway.addr, &upstream).await;
    let (mut finishing_body, mut finishing_exchange, _) =
        open_stream(gateway.addr, &upstream).await;
    assert_eq!(get(gateway.admin, "/readyz").await.status(), 200);
    // Prometheus scrapes this gateway: after the drain it waits for one more scrape.
    assert_eq!(
        gateway.metrics().await.outcome_count("chat", "shutdown"),
        0.0
    );

    gateway.signal("TERM");
    // Readiness fails first, so Kubernetes stops sending traffic.
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while get(gateway.admin, "/readyz").await.status() != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        TcpStream::connect(gateway.addr).await.is_err(),
        "no new connection is accepted while draining"
    );

    // A stream that finishes within the drain time ends normally.
    finishing_exchange
        .send_chunk(b"data: cat\n\ndata: [DONE]\n\n")
        .await;
    assert_eq!(
        next_data(&mut finishing_body).await.unwrap(),
        "data: dog\n\n"
    );
    assert_eq!(
        next_data(&mut finishing_body).await.unwrap(),
        "data: [DONE]\n\n"
    );
    assert_eq!(next_data(&mut finishing_body).await, None);

    // A silent one is ended at the drain time with the shutdown error and the terminator.
    let error = next_data(&mut silent_body).await.unwrap();
    let error = String::from_utf8(error.to_vec()).unwrap();
    let events = client_events(&error);
    assert_eq!(events[0].event, "error", "{error}");
    let json: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(json["error"]["type"], "shutdown");
    assert_eq!(json["error"]["route"], "chat");
    assert_eq!(
        next_data(&mut silent_body).await.unwrap(),
        "data: [DONE]\n\n"
    );
    assert_eq!(next_data(&mut silent_body).await, None);

    // The drain's outcomes reach the final scrape, and then the process exits 0,
    // well within drain_timeout (1s) plus the final scrape's wait.
    let deadline = tokio::time::Instant::now() + LIVENESS;
    let metrics = loop {
        let metrics = gateway.metrics().await;
        let counted = metrics.outcome_count("chat", "shutdown") > 0.0;
        if counted || tokio::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        metrics.outcome_count("chat", "shutdown"),
        1.0,
        "{}",
        metrics.text
    );
    assert_eq!(metrics.outcome_count("chat", "terminator"), 1.0);
    assert_eq!(gateway.exit_code(Duration::from_secs(10)).await, Some(0));
    let log = gateway.log_text();
    assert!(log.contains("outcome=\"shutdown\""), "{log}");
    assert!(log.contains("outcome=\"terminator\""), "{log}");
}

/// Waits until `/readyz` says 503: the gateway has taken the stop signal.
async fn draining(gateway: &GatewayProcess) {
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while get(gateway.admin, "/readyz").await.status() != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the gateway's log has `line` (within [`LIVENESS`]); `missing` says
/// what its absence means.
async fn logged(gateway: &GatewayProcess, line: &str, missing: &str) {
    gateway.log_until(missing, |log| log.contains(line)).await;
}

#[tokio::test]
async fn a_second_signal_ends_the_drain_at_once_and_streams_still_get_their_end() {
    let upstream = ScriptedUpstream::bind().await;
    let text = config(&upstream.url(), "dog").replace("drain_timeout: 1s", "drain_timeout: 10m");
    let mut gateway = GatewayProcess::start("second-signal", &text).await;
    let (mut body, _exchange, _) = open_stream(gateway.addr, &upstream).await;
    // Scraped: without the second signal, the stop would wait for one more scrape too.
    gateway.metrics().await;

    gateway.signal("TERM");
    draining(&gateway).await;
    // `/readyz` turns 503 a moment before the drain's first line is written.
    logged(
        &gateway,
        "press Ctrl-C again (or send SIGTERM again) to stop now",
        "the first signal says how to stop at once",
    )
    .await;
    gateway.signal("INT");

    // Long before the 10m drain time: the error event, the terminator, the end.
    let error = next_data(&mut body).await.unwrap();
    let error = String::from_utf8(error.to_vec()).unwrap();
    let events = client_events(&error);
    assert_eq!(events[0].event, "error", "{error}");
    let json: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(json["error"]["type"], "shutdown");
    assert_eq!(next_data(&mut body).await.unwrap(), "data: [DONE]\n\n");
    assert_eq!(next_data(&mut body).await, None);
    assert_eq!(gateway.exit_code(Duration::from_secs(5)).await, Some(0));
    let log = gateway.log_text();
    assert!(log.contains("stopping now"), "{log}");
    assert!(log.contains("outcome=\"shutdown\""), "{log}");
}

/// A laptop run: the defaults (30s drain, 10s final scrape wait), nothing open,
/// nothing scraping. Ctrl-C stops it at once; the bound is generous for a busy machine.
#[tokio::test]
async fn ctrl_c_with_nothing_open_and_no_scraper_exits_within_seconds() {
    let upstream = ScriptedUpstream::bind().await;
    let text = config(&upstream.url(), "dog").replace("drain_timeout: 1s\n", "");
    let mut gateway = GatewayProcess::start("laptop", &text).await;
    gateway.signal("INT");
    assert_eq!(gateway.exit_code(Duration::from_secs(5)).await, Some(0));
    let log = gateway.log_text();
    assert!(!log.contains("waiting for a final metrics scrape"), "{log}");
}

/// Scraped a moment ago, but `shutdown.final_scrape_wait: 0`: no wait for a scrape.
#[tokio::test]
async fn final_scrape_wait_0_stops_without_waiting_for_a_scrape() {
    let upstream = ScriptedUpstream::bind().await;
    let text = config(&upstream.url(), "dog").replace(
        "drain_timeout: 1s\n",
        "drain_timeout: 30s\nshutdown: { final_scrape_wait: 0 }\n",
    );
    let mut gateway = GatewayProcess::start("no-final-scrape", &text).await;
    gateway.metrics().await;
    gateway.signal("TERM");
    assert_eq!(gateway.exit_code(Duration::from_secs(5)).await, Some(0));
    let log = gateway.log_text();
    assert!(!log.contains("waiting for a final metrics scrape"), "{log}");
}

/// Scraped a moment ago, with the default wait: the stop waits for the next scrape,
/// and ends as soon as it comes.
#[tokio::test]
async fn a_recent_scraper_gets_its_final_scrape_before_the_exit() {
    let upstream = ScriptedUpstream::bind().await;
    let mut gateway = GatewayProcess::start("final-scrape", &config(&upstream.url(), "dog")).await;
    gateway.metrics().await;
    gateway.signal("TERM");
    draining(&gateway).await;
    logged(
        &gateway,
        "waiting for a final metrics scrape",
        "no wait for a final scrape",
    )
    .await;
    assert!(gateway.child.try_wait().unwrap().is_none(), "still waiting");
    // A HEAD gets no metrics: it is no scrape, and the stop goes on waiting.
    let head = http::Request::head("/metrics")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(gateway.admin, head).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "still waiting after a HEAD"
    );
    gateway.metrics().await;
    assert_eq!(gateway.exit_code(Duration::from_secs(5)).await, Some(0));
}

/// A client that leaves before the response head gets no answer: its request is the
/// log's status 499, and `http_requests_total` (requests answered) leaves it out.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_a_499_line_not_a_request_answered() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = GatewayProcess::start("left-early", &config(&upstream.url(), "dog")).await;
    let client = raw_get(gateway.addr, "/api/stream").await;
    let mut silent = upstream.accept().await;
    drop(client);
    logged(&gateway, "status=499", "no line for the client that left").await;
    assert!(silent.closed_within(LIVENESS).await, "the upstream let go");
    let answered = |metrics: Metrics| -> Vec<String> {
        let counted = |line: &&str| {
            line.starts_with("sse_gateway_http_requests_total{") && line.contains("route=\"chat\"")
        };
        metrics
            .text
            .lines()
            .filter(counted)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(answered(gateway.metrics().await), Vec::<String>::new());
    // The next request is answered, and counted.
    let _open = open_stream(gateway.addr, &upstream).await;
    let counted = answered(gateway.metrics().await);
    assert!(
        counted.len() == 1 && counted[0].contains("status=\"200\""),
        "{counted:?}"
    );
}
