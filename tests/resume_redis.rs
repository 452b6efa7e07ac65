//! `store: redis` against a real `redis-server` on a loopback port: a stream cut on one
//! replica resumes on another (replayed from Redis, then followed live to its end),
//! a stop sent to another replica reaches the owner, and Redis dying mid-stream never
//! harms the stream, only the resume, and is counted. A stream's keys outlive an
//! upstream silence longer than their expiry and come back after a Redis restart; a
//! follower whose stream vanishes from Redis, or is dropped by its owner, is told so,
//! and a late resume of a dropped stream is refused as its owner would refuse it; a
//! follower whose client left no longer keeps the stream going at its owner.
//!
//! Skipped with a message when `redis-server` is not installed; CI installs it.

mod support;

use std::time::Duration;

use support::raw_client::{assert_error_then_done, Client, Seen};
use support::redis_server::RedisServer;
use support::*;

const ROUTE: &str = "chat";
const BEARER: (&str, &str) = ("authorization", "Bearer user-1");

fn config(upstream: &str, redis: &str) -> String {
    config_with_window(upstream, redis, "10s")
}

fn config_with_window(upstream: &str, redis: &str, window: &str) -> String {
    format!(
        "upstreams:
  assistant: {{ url: {upstream}, header_timeout: 2s }}
state:
  redis: {{ url: \"{redis}\" }}
routes:
  - name: chat
    match: {{ path_prefix: /api/stream }}
    upstream: assistant
    stream:
      terminator: {{ data: \"[DONE]\" }}
      resume: {{ window: {window}, store: redis }}
"
    )
}

fn event(n: usize) -> Vec<u8> {
    format!("data: {{\"token\":{n}}}\n\n").into_bytes()
}

fn data(events: &[Seen]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

fn tokens(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| format!("{{\"token\":{n}}}")).collect()
}

/// The Redis key of the one stream there is, if Redis holds it.
async fn the_stream(redis: &RedisServer) -> Option<String> {
    let keys = redis.command(&["KEYS", "sse-gateway:chat:*"]).await;
    keys.lines()
        .find(|line| line.starts_with("sse-gateway:") && !line.ends_with(":meta"))
        .map(str::to_owned)
}

/// Waits until Redis holds `n` events of the one stream there is.
async fn redis_holds(redis: &RedisServer, n: usize) {
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        if let Some(stream) = the_stream(redis).await {
            let len = redis.command(&["XLEN", &stream]).await;
            if len.trim().trim_start_matches(':').parse::<usize>() == Ok(n) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never held {n} events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until Redis holds the end entry of the one stream there is; its key.
async fn redis_holds_the_end(redis: &RedisServer) -> String {
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no end entry in Redis"
        );
        if let Some(stream) = the_stream(redis).await {
            let end = redis.command(&["XRANGE", &stream, "2-0", "2-0"]).await;
            if end.contains("end") {
                return stream;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two replicas on one Redis and one upstream; `None` without Redis.
async fn two_replicas(
    window: &str,
) -> Option<(RedisServer, ScriptedUpstream, TestGateway, TestGateway)> {
    let redis = RedisServer::start().await?;
    let upstream = ScriptedUpstream::bind().await;
    let yaml = config_with_window(&upstream.url(), &redis.url(), window);
    let (owner, other) = (start_gateway(&yaml).await, start_gateway(&yaml).await);
    Some((redis, upstream, owner, other))
}

/// What a follower got once the owner dropped the stream after event `n`: the error
/// event saying so, then the route's closing.
fn told_dropped_after(events: &[Seen], n: usize) {
    let expected = format!("cannot resume: the stream was dropped after event {n} ");
    assert_error_then_done(events, "resume_store_unavailable", &expected);
}

/// A stream cut on its owner after event 1 and resumed on the other replica, which
/// got event 2 live.
struct Following {
    redis: RedisServer,
    owner: TestGateway,
    other: TestGateway,
    exchange: Exchange,
    resumed: Client,
}

/// A client resumed on `other` after `id` (event 1), which gets event 2 live.
async fn resumed_live(other: &TestGateway, exchange: &mut Exchange, id: &str) -> Client {
    let mut resumed =
        Client::open(other.addr, "/api/stream", &[BEARER, ("last-event-id", id)]).await;
    assert_eq!(resumed.status().await, 200);
    exchange.send_chunk(&event(2)).await;
    assert_eq!(data(&resumed.take(1).await), tokens(2..=2));
    resumed
}

/// [`Following`], from [`two_replicas`] with `window`; `None` without Redis.
async fn following_on_the_other(window: &str) -> Option<Following> {
    let (redis, upstream, owner, other) = two_replicas(window).await?;
    let (mut exchange, id) = cut_after_one_mirrored(&redis, &owner, &upstream).await;
    let resumed = resumed_live(&other, &mut exchange, &id).await;
    Some(Following {
        redis,
        owner,
        other,
        exchange,
        resumed,
    })
}

/// A client on `owner` that gets events `1..=n` and leaves; returns what it got and
/// the upstream exchange, which the owner reads on, detached.
async fn cut_after(
    owner: &TestGateway,
    upstream: &ScriptedUpstream,
    n: usize,
) -> (Exchange, Vec<Seen>) {
    let mut client = Client::open(owner.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange
        .send_chunk(&(1..=n).flat_map(event).collect::<Vec<u8>>())
        .await;
    let first = client.take(n).await;
    drop(client);
    owner
        .metrics_until("the stream detached", |m| {
            m.route_value("sse_gateway_streams_detached", ROUTE) == 1.0
        })
        .await;
    (exchange, first)
}

/// [`cut_after`] one event, once Redis holds it; returns event 1's id.
async fn cut_after_one_mirrored(
    redis: &RedisServer,
    owner: &TestGateway,
    upstream: &ScriptedUpstream,
) -> (Exchange, String) {
    let (exchange, first) = cut_after(owner, upstream, 1).await;
    redis_holds(redis, 1).await;
    (exchange, first[0].id.clone().unwrap())
}

/// A redis-server, a scripted upstream and a gateway on both; `None` without Redis.
async fn one_gateway() -> Option<(RedisServer, ScriptedUpstream, TestGateway)> {
    let redis = RedisServer::start().await?;
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), &redis.url())).await;
    Some((redis, upstream, gateway))
}

/// `rediss://` with a private CA (`state.redis.tls.ca_file`): a stream cut on one
/// replica resumes on the other, every connection to Redis over TLS.
#[tokio::test]
async fn a_redis_over_tls_with_a_private_ca_carries_a_resume_across_replicas() {
    let dir = std::env::temp_dir().join(format!("sse-gateway-rediss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let Some(redis) = RedisServer::start_tls(cert.to_str().unwrap(), key.to_str().unwrap()).await
    else {
        return;
    };
    let upstream = ScriptedUpstream::bind().await;
    let tls_url = format!("rediss://{}", redis.tls_addr.unwrap());
    let yaml = config(&upstream.url(), &tls_url).replace(
        "redis: { url: ",
        &format!(
            "redis: {{ tls: {{ ca_file: \"{}\" }}, url: ",
            cert.display()
        ),
    );
    let (owner, other) = (start_gateway(&yaml).await, start_gateway(&yaml).await);
    let (mut exchange, id) = cut_after_one_mirrored(&redis, &owner, &upstream).await;
    resumed_live(&other, &mut exchange, &id).await;
    let errors = other
        .metrics()
        .await
        .route_value("sse_gateway_resume_store_errors_total", ROUTE);
    assert_eq!(errors, 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Connections Redis has accepted so far (each [`RedisServer::command`] is one).
async fn connections_received(redis: &RedisServer) -> u64 {
    let stats = redis.command(&["INFO", "stats"]).await;
    stats
        .lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats has total_connections_received")
}

/// Requests with made-up ids each ask Redis about a stream it does not know: on one
/// shared connection, not a connection each (a flood of them would open as many).
#[tokio::test]
async fn lookups_for_made_up_ids_share_one_redis_connection() {
    let Some((redis, _upstream, gateway)) = one_gateway().await else {
        return;
    };
    let before = connections_received(&redis).await;
    // At once, as a flood comes: the first to ask makes the connection, the others
    // wait for it.
    let addr = gateway.addr;
    let stops: Vec<_> = (0..20)
        .map(|n| {
            tokio::spawn(async move {
                let target = format!("/api/stream?lastEventId=AAAAAAAAAAAAAAAAAAAAAA-{n}");
                let mut stop = Client::open_with(addr, "DELETE", &target, &[BEARER]).await;
                stop.status().await
            })
        })
        .collect();
    for stop in stops {
        assert_eq!(stop.await.unwrap(), 404);
    }
    // This count's own connection, and at most the one the lookups share.
    let opened = connections_received(&redis).await - before;
    assert!(opened <= 2, "{opened} connections for 20 lookups");
}

#[tokio::test]
async fn a_reconnect_on_another_replica_resumes_from_redis_and_follows_live() {
    let Some((redis, upstream, owner, other)) = two_replicas("10s").await else {
        return;
    };
    let (mut exchange, first) = cut_after(&owner, &upstream, 2).await;
    // The owner keeps reading the upstream, into Redis.
    exchange.send_chunk(&[event(3), event(4)].concat()).await;
    redis_holds(&redis, 4).await;

    let id = first.last().unwrap().id.clone().unwrap();
    // Another credential is refused there too, and falls back to a new request.
    let headers = [("authorization", "Bearer user-2"), ("last-event-id", &id)];
    let foreign = Client::open(other.addr, "/api/stream?q=hi", &headers);
    let (mut foreign, mut second) = tokio::join!(foreign, upstream.accept());
    second.start_sse("").await;
    second.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&foreign.rest().await), ["[DONE]"]);

    let mut resumed = Client::open(
        other.addr,
        "/api/stream?q=hi",
        &[BEARER, ("last-event-id", &id)],
    )
    .await;
    assert_eq!(resumed.status().await, 200);
    let replayed = resumed.take(2).await;
    assert_eq!(data(&replayed), tokens(3..=4));
    // Live from the owner, through Redis.
    exchange.send_chunk(&event(5)).await;
    let live = resumed.take(1).await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    let rest = resumed.rest().await;

    let all = [first, replayed, live, rest].concat();
    let mut expected = tokens(1..=5);
    expected.push("[DONE]".into());
    assert_eq!(data(&all), expected, "every event once, in order");
    let key = all[0]
        .id
        .clone()
        .unwrap()
        .rsplit_once('-')
        .unwrap()
        .0
        .to_owned();
    let ids: Vec<String> = all.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=6).map(|n| format!("{key}-{n}")).collect::<Vec<_>>()
    );
    // The whole answer seen, the last id gets 204 on either replica: an `EventSource`
    // that did not close at the end stops reconnecting.
    for gateway in [&other, &owner] {
        let last = [BEARER, ("last-event-id", ids.last().unwrap())];
        let mut after_end = Client::open(gateway.addr, "/api/stream?q=hi", &last).await;
        assert_eq!(after_end.status().await, 204);
        assert_eq!(after_end.rest().await, []);
    }
    assert!(
        !upstream.connection_within(Duration::from_millis(300)).await,
        "one upstream request for the answer (and one for the foreign credential)"
    );
    let metrics = other.metrics().await;
    let resumes = |result: &str| {
        metrics.get(
            "sse_gateway_resumes_total",
            &[("route", ROUTE), ("result", result)],
        )
    };
    assert_eq!(resumes("replayed"), 1.0);
    assert_eq!(resumes("forbidden"), 1.0);
    assert_eq!(resumes("finished"), 1.0);
    assert_eq!(
        metrics.route_value("sse_gateway_resume_replayed_events_total", ROUTE),
        2.0
    );
    assert_eq!(
        owner
            .metrics()
            .await
            .route_value("sse_gateway_resume_store_errors_total", ROUTE),
        0.0
    );
}

#[tokio::test]
async fn the_owner_keeps_a_stream_followed_on_another_replica_past_its_window() {
    let Some((redis, upstream, owner, other)) = two_replicas("1s").await else {
        return;
    };
    let (mut exchange, id) = cut_after_one_mirrored(&redis, &owner, &upstream).await;
    let mut resumed =
        Client::open(other.addr, "/api/stream", &[BEARER, ("last-event-id", &id)]).await;
    assert_eq!(resumed.status().await, 200);

    // Three of the owner's windows pass while the client reads on the other replica.
    for n in 2..=4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        exchange.send_chunk(&event(n)).await;
        assert_eq!(
            data(&resumed.take(1).await),
            tokens(n..=n),
            "event {n} still flows"
        );
    }
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&resumed.rest().await), ["[DONE]"]);
    assert_eq!(
        owner.metrics().await.outcome_count(ROUTE, "client_closed"),
        0.0,
        "the owner never dropped the upstream"
    );
}

/// A client following the stream on another replica leaves while the upstream is
/// quiet: its follower stops at once, so its reader mark (6 s) runs out and the owner
/// drops the upstream at its next window's end, not after the follower's next
/// keep-alive (about 16 s) and a mark renewed until then.
#[tokio::test]
async fn a_follower_whose_client_left_stops_holding_the_stream_at_once() {
    let Some(Following {
        redis: _redis,
        owner,
        other: _other,
        mut exchange,
        resumed,
    }) = following_on_the_other("1s").await
    else {
        return;
    };
    drop(resumed);
    // The mark's 6 s, one window, then 5 s to see it.
    assert!(
        exchange.closed_within(Duration::from_secs(12)).await,
        "the owner drops the upstream once nobody follows the stream"
    );
    owner
        .metrics_until("the owner dropped the stream", |m| {
            m.outcome_count(ROUTE, "client_closed") == 1.0
        })
        .await;
}

#[tokio::test]
async fn redis_dying_mid_stream_never_harms_the_stream_and_is_counted() {
    let Some((mut redis, upstream, gateway)) = one_gateway().await else {
        return;
    };
    let mut client = Client::open(gateway.addr, "/api/stream", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let mut seen = client.take(1).await;
    redis_holds(&redis, 1).await;

    redis.kill();
    for n in 2..=20 {
        exchange.send_chunk(&event(n)).await;
        seen.extend(client.take(1).await);
    }
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    seen.extend(client.rest().await);
    let mut expected = tokens(1..=20);
    expected.push("[DONE]".into());
    assert_eq!(data(&seen), expected, "the stream went on, whole");
    gateway
        .metrics_until("the lost writes counted", |m| {
            m.route_value("sse_gateway_resume_store_errors_total", ROUTE) >= 1.0
        })
        .await;
    // A resume on this replica is still served from memory.
    let id = seen[4].id.clone().unwrap();
    let mut resumed = Client::open(
        gateway.addr,
        "/api/stream",
        &[BEARER, ("last-event-id", &id)],
    )
    .await;
    assert_eq!(data(&resumed.rest().await)[0], tokens(6..=6)[0]);
}

#[tokio::test]
async fn redis_down_at_resume_time_falls_back_to_on_unknown() {
    let Some((mut redis, upstream, gateway)) = one_gateway().await else {
        return;
    };
    redis.kill();
    let unknown = format!("{}-3", "cd".repeat(16));
    let headers = [BEARER, ("last-event-id", &unknown)];
    let client = Client::open(gateway.addr, "/api/stream", &headers);
    let (mut client, mut exchange) = tokio::join!(client, upstream.accept());
    assert!(!exchange.request.has_header("last-event-id"));
    exchange.start_sse("").await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&client.rest().await), ["[DONE]"]);
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.get(
            "sse_gateway_resumes_total",
            &[("route", ROUTE), ("result", "unknown")]
        ),
        1.0
    );
    assert!(metrics.route_value("sse_gateway_resume_store_errors_total", ROUTE) >= 1.0);

    // A stop this replica cannot hand on says so, rather than "no such stream".
    let target = format!("/api/stream?lastEventId={unknown}");
    let mut stop = Client::open_with(gateway.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(stop.status().await, 503);
    assert!(
        stop.head().await.contains("store_unavailable"),
        "named in the error header"
    );
}

#[tokio::test]
async fn a_stop_sent_to_another_replica_ends_the_stream_at_its_owner() {
    let Some((redis, upstream, owner, other)) = two_replicas("10s").await else {
        return;
    };
    let (mut exchange, id) = cut_after_one_mirrored(&redis, &owner, &upstream).await;
    let target = format!("/api/stream?lastEventId={id}");

    let foreign = [("authorization", "Bearer user-2")];
    let mut refused = Client::open_with(other.addr, "DELETE", &target, &foreign).await;
    assert_eq!(
        refused.status().await,
        404,
        "another credential cannot stop it"
    );
    exchange.send_chunk(&event(2)).await;
    redis_holds(&redis, 2).await;

    let mut stop = Client::open_with(other.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(stop.status().await, 204);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the owner dropped the upstream"
    );
    owner
        .metrics_until("the stream's outcome", |m| {
            m.outcome_count(ROUTE, "client_closed") == 1.0
                && m.route_value("sse_gateway_streams_detached", ROUTE) == 0.0
        })
        .await;
    // Another tab's `EventSource` reconnects with the id it had: 204 on either replica
    // (the owner wrote the stop into the stream's end entry), so it stops, and the
    // answer the user stopped is not generated again.
    redis_holds_the_end(&redis).await;
    for gateway in [&other, &owner] {
        let headers = [BEARER, ("last-event-id", id.as_str())];
        let mut reconnect = Client::open(gateway.addr, "/api/stream", &headers).await;
        assert_eq!(reconnect.status().await, 204);
        assert_eq!(reconnect.rest().await, []);
        let stopped = [("route", ROUTE), ("result", "stopped")];
        let metrics = gateway.metrics().await;
        assert_eq!(metrics.get("sse_gateway_resumes_total", &stopped), 1.0);
        // A second stop (a double click) is stopped as asked, on either replica.
        let mut again = Client::open_with(gateway.addr, "DELETE", &target, &[BEARER]).await;
        assert_eq!(again.status().await, 204);
    }
    assert!(!upstream.connection_within(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn a_stop_that_no_replica_can_hear_is_a_503_not_a_204() {
    let Some((redis, upstream, owner, other)) = two_replicas("10s").await else {
        return;
    };
    let (mut exchange, id) = cut_after_one_mirrored(&redis, &owner, &upstream).await;
    let target = format!("/api/stream?lastEventId={id}");
    // Both replicas lose their subscription; each subscribes again a second later.
    redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let mut unheard = Client::open_with(other.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(
        unheard.status().await,
        503,
        "a stop that reached nobody is not a 204"
    );
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while !stop_listeners(&redis).await.trim_end().ends_with(":2") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listeners came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stop = Client::open_with(other.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(stop.status().await, 204);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the owner dropped the upstream"
    );
}

/// Subscribers to the stop channel that `redis` counts.
async fn stop_listeners(redis: &RedisServer) -> String {
    redis
        .command(&["PUBSUB", "NUMSUB", "sse-gateway:stop"])
        .await
}

#[tokio::test]
async fn a_reload_to_another_redis_ends_the_stop_listener_on_the_old_one() {
    let (Some(old), Some(new)) = (RedisServer::start().await, RedisServer::start().await) else {
        return;
    };
    let upstream = ScriptedUpstream::bind().await;
    let file = |redis: &RedisServer| {
        format!(
            "listen: LISTEN\nadmin: {{ listen: ADMIN }}\n{}",
            config(&upstream.url(), &redis.url())
        )
    };
    let gateway = GatewayProcess::start("stop-listener", &file(&old)).await;
    let listening = |text: &str| text.trim_end().ends_with(":1");
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while !listening(&stop_listeners(&old).await) {
        assert!(tokio::time::Instant::now() < deadline, "no stop listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.replace_config(&file(&new));
    gateway.reloads_reach("success", 1.0).await;
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let (on_old, on_new) = (stop_listeners(&old).await, stop_listeners(&new).await);
        if !listening(&on_old) && listening(&on_new) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old: {on_old:?}, new: {on_new:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_follower_on_another_replica_outlasts_an_upstream_silence_longer_than_the_keys_expiry() {
    let Some((redis, upstream, owner, other)) = two_replicas("1s").await else {
        return;
    };
    let (mut exchange, id) = cut_after_one_mirrored(&redis, &owner, &upstream).await;
    let mut resumed =
        Client::open(other.addr, "/api/stream", &[BEARER, ("last-event-id", &id)]).await;
    assert_eq!(resumed.status().await, 200);

    // The model "thinks" for twice the keys' expiry (1.25 s) with nothing to write.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    exchange.send_chunk(&event(2)).await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(
        data(&resumed.rest().await),
        [&tokens(2..=2)[0], "[DONE]"],
        "the rest of the answer, after the silence"
    );
}

#[tokio::test]
async fn a_follower_whose_stream_vanishes_from_redis_gets_an_error_event_not_a_clean_end() {
    let Some(Following {
        redis,
        mut resumed,
        exchange: _exchange,
        owner: _owner,
        other: _other,
    }) = following_on_the_other("10s").await
    else {
        return;
    };

    // Redis loses the stream (as when the owner died and its keys expired), no end
    // entry written: the rest of the answer will not come, and the client must know.
    assert!(redis.command(&["FLUSHALL"]).await.starts_with("+OK"));
    let events = resumed.rest().await;
    assert_error_then_done(
        &events,
        "resume_store_unavailable",
        "cannot resume: the events after 2 ",
    );
}

#[tokio::test]
async fn after_redis_restarts_empty_a_running_stream_is_resumable_and_stoppable_elsewhere_again() {
    let Some((mut redis, upstream, owner, other)) = two_replicas("10s").await else {
        return;
    };
    let mut client = Client::open(owner.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let mut seen = client.take(1).await;
    redis_holds(&redis, 1).await;

    // Redis restarts without persistence: the fingerprint the first write carried is
    // gone. The owner writes it again (with its next write after a lost one, or its
    // next refresh), while the stream runs.
    redis.restart().await;
    for n in 2..=3 {
        exchange.send_chunk(&event(n)).await;
        seen.extend(client.take(1).await);
    }
    let deadline = tokio::time::Instant::now() + LIVENESS;
    let redis_key = loop {
        let keys = redis.command(&["KEYS", "sse-gateway:chat:*:meta"]).await;
        if let Some(meta) = keys.lines().find(|line| line.ends_with(":meta")) {
            break meta.trim_end_matches(":meta").to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fingerprint never came back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // An event written now, on the writer's new connection, is there to resume from.
    exchange.send_chunk(&event(4)).await;
    seen.extend(client.take(1).await);
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while !redis
        .command(&["XRANGE", &redis_key, "1-4", "1-4"])
        .await
        .contains("token")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "event 4 never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    owner
        .metrics_until("the stream detached", |m| {
            m.route_value("sse_gateway_streams_detached", ROUTE) == 1.0
        })
        .await;

    // Another replica resumes it from Redis, without a new upstream request...
    let id = seen[3].id.clone().unwrap();
    let mut resumed =
        Client::open(other.addr, "/api/stream", &[BEARER, ("last-event-id", &id)]).await;
    assert_eq!(resumed.status().await, 200);
    assert!(
        !upstream.connection_within(Duration::from_millis(500)).await,
        "served from Redis, not asked of the upstream again"
    );
    exchange.send_chunk(&event(5)).await;
    assert_eq!(data(&resumed.take(1).await), tokens(5..=5));
    // ...and stops it at its owner, once the replicas listen for stops on the new
    // Redis (they subscribe again a second after the old one went away).
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while !stop_listeners(&redis).await.trim_end().ends_with(":2") {
        assert!(tokio::time::Instant::now() < deadline, "no stop listeners");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = format!("/api/stream?lastEventId={id}");
    let mut stop = Client::open_with(other.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(stop.status().await, 204);
    resumed.rest().await;
    owner
        .metrics_until("the owner dropped the upstream", |m| {
            m.outcome_count(ROUTE, "client_closed") == 1.0
        })
        .await;
}

#[tokio::test]
async fn a_stream_dropped_at_its_window_is_expired_on_another_replica_too() {
    let Some((_redis, upstream, owner, other)) = two_replicas("1s").await else {
        return;
    };
    let (mut exchange, first) = cut_after(&owner, &upstream, 1).await;
    let id = first[0].id.clone().unwrap();
    // The upstream keeps generating; nobody resumes within the window.
    let mut n = 2;
    while exchange.try_send_chunk(&event(n)).await.is_ok() {
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(n < 200, "the owner never dropped the upstream");
    }
    owner
        .metrics_until("the owner dropped the stream", |m| {
            m.outcome_count(ROUTE, "client_closed") == 1.0
        })
        .await;

    // The client comes back now, on the other replica: `expired`, as on the owner,
    // and `on_unknown: restart` sends a new request.
    let headers = [BEARER, ("last-event-id", &id)];
    let late = Client::open(other.addr, "/api/stream", &headers);
    let (mut late, mut again) = tokio::join!(late, upstream.accept());
    again.start_sse("").await;
    again.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&late.rest().await), ["[DONE]"]);
    let expired = other.metrics().await.get(
        "sse_gateway_resumes_total",
        &[("route", ROUTE), ("result", "expired")],
    );
    assert_eq!(expired, 1.0);
}

#[tokio::test]
async fn a_follower_is_told_at_once_when_the_owner_cancels_the_stream() {
    // `max_detached: 0`: the owner cancels the stream as soon as its client leaves.
    let Some((redis, upstream, owner, other)) = two_replicas("10s, max_detached: 0").await else {
        return;
    };
    let mut client = Client::open(owner.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let first = client.take(1).await;
    redis_holds(&redis, 1).await;
    let id = first[0].id.clone().unwrap();
    let mut follower =
        Client::open(other.addr, "/api/stream", &[BEARER, ("last-event-id", &id)]).await;
    assert_eq!(follower.status().await, 200);
    exchange.send_chunk(&event(2)).await;
    assert_eq!(data(&follower.take(1).await), tokens(2..=2));

    // Its first client leaves: the owner drops the upstream. The follower learns it
    // from the end entry, long before the keys would expire (12.5 s).
    drop(client);
    told_dropped_after(&follower.rest().await, 2);
    assert_eq!(
        owner.metrics().await.outcome_count(ROUTE, "client_closed"),
        1.0
    );
}

/// A stream resumed on its owner whose resumed client leaves when the route already
/// keeps its `max_detached` streams without a client is cancelled: a follower on
/// another replica is told the answer was cut, not ended as if it were complete.
#[tokio::test]
async fn a_follower_is_told_the_stream_was_cut_when_a_resumed_client_leaves_over_the_cap() {
    let Some((redis, upstream, owner, other)) = two_replicas("10s, max_detached: 1").await else {
        return;
    };
    // Stream A's first client leaves after event 1, and comes back on the owner.
    let (mut exchange, id) = cut_after_one_mirrored(&redis, &owner, &upstream).await;
    let resume = [BEARER, ("last-event-id", id.as_str())];
    let mut resumed = Client::open(owner.addr, "/api/stream", &resume).await;
    assert_eq!(resumed.status().await, 200);
    let mut follower = Client::open(other.addr, "/api/stream", &resume).await;
    assert_eq!(follower.status().await, 200);
    exchange.send_chunk(&event(2)).await;
    assert_eq!(data(&resumed.take(1).await), tokens(2..=2));
    assert_eq!(data(&follower.take(1).await), tokens(2..=2));

    // Stream B's client leaves: the route now keeps its one stream without a client.
    let (_other_exchange, _) = cut_after(&owner, &upstream, 1).await;
    // A's resumed client leaves too: over the cap, the owner drops A's upstream.
    drop(resumed);
    told_dropped_after(&follower.rest().await, 2);
}

/// The last events of a stream never reached Redis (a full write queue drops them,
/// or Redis restarted empty), but its end entry did: a follower on another replica
/// is told which events are missing, not ended as if the answer were complete.
#[tokio::test]
async fn events_lost_before_the_end_entry_are_said_to_a_follower_not_skipped() {
    let Some((redis, upstream, owner, other)) = two_replicas("10s").await else {
        return;
    };
    let (mut exchange, first) = cut_after(&owner, &upstream, 3).await;
    exchange.send_chunk(&[event(4), event(5)].concat()).await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    exchange.end_chunks().await;
    // Six events and the end entry.
    redis_holds(&redis, 7).await;
    let stream = the_stream(&redis).await.expect("the stream's key");
    // As if events 4 to 6 had been dropped on the way.
    let deleted = redis.command(&["XDEL", &stream, "1-4", "1-5", "1-6"]).await;
    assert_eq!(deleted.trim(), ":3");

    let id = first[2].id.clone().unwrap();
    let mut resumed =
        Client::open(other.addr, "/api/stream", &[BEARER, ("last-event-id", &id)]).await;
    assert_eq!(resumed.status().await, 200);
    let events = resumed.rest().await;
    assert_error_then_done(
        &events,
        "resume_gap",
        "cannot resume: events 4 to 6 of this stream",
    );
}

/// A stream of large events (a Responses `response.completed`, base64 images) keeps
/// about `max_bytes` in Redis, as in memory: not the entry count that `max_bytes`
/// makes for token-sized events.
#[tokio::test]
async fn redis_keeps_about_max_bytes_of_a_stream_of_large_events() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = ScriptedUpstream::bind().await;
    let yaml = config(&upstream.url(), &redis.url())
        .replace("store: redis }", "store: redis, max_bytes: 8KiB }");
    let gateway = start_gateway(&yaml).await;
    let mut client = Client::open(gateway.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    let pad = "x".repeat(1000);
    const EVENTS: usize = 60;
    for n in 1..=EVENTS {
        let chunk = format!("data: {{\"token\":{n},\"pad\":\"{pad}\"}}\n\n");
        exchange.send_chunk(chunk.as_bytes()).await;
    }
    let seen = client.take(EVENTS).await;
    assert_eq!(seen.len(), EVENTS);
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    exchange.end_chunks().await;
    assert_eq!(client.rest().await.len(), 1, "[DONE]");
    // The end entry is the last write: once it is there, so is every trim.
    let stream = redis_holds_the_end(&redis).await;
    let len = redis.command(&["XLEN", &stream]).await;
    let entries: usize = len.trim().trim_start_matches(':').parse().unwrap();
    // Each event is about 1.1 KB with its id: 8 KiB, plus a slice (1 KiB) and the
    // event that crossed it, is at most 9 of them, and the end entry.
    assert!(
        (2..=10).contains(&entries),
        "{entries} entries kept of {} events",
        EVENTS + 1
    );
}

/// A rolling update stops the replica that serves a resume from Redis (the stream
/// runs on another): at its drain deadline the client gets the `shutdown` error event
/// and the route's closing, as the replica's own streams do, not a cut connection.
#[tokio::test]
async fn a_resume_followed_from_redis_ends_with_shutdown_at_the_drain_deadline() {
    let Some(Following {
        redis: _redis,
        other,
        mut resumed,
        exchange: _exchange,
        owner,
    }) = following_on_the_other("10s").await
    else {
        return;
    };

    let (events, ()) = tokio::join!(resumed.rest(), other.shutdown());
    assert_error_then_done(&events, "shutdown", "the gateway is shutting down");
    drop(owner);
}

/// A Redis that accepts connections and never answers (one that is partitioned or
/// stalled): every command the gateway sends waits for its own timeout.
async fn unanswering_redis() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("redis://{addr}")
}

/// A late resume that comes while the owner asks Redis (slow) whether another
/// replica follows the stream at its window's end: the resume is `expired`, and the
/// owner drops the upstream then, instead of reading it on for nobody with nothing
/// to bound it (holding its place under `max_streams`).
#[tokio::test]
async fn a_resume_as_the_window_runs_out_leaves_no_stream_running_unbounded() {
    let upstream = ScriptedUpstream::bind().await;
    let redis = unanswering_redis().await;
    let yaml = format!(
        "upstreams:
  assistant: {{ url: {}, header_timeout: 2s }}
state:
  redis: {{ url: \"{redis}\" }}
routes:
  - name: chat
    match: {{ path_prefix: /api/stream }}
    upstream: assistant
    limits: {{ max_streams: 1 }}
    stream:
      terminator: {{ data: \"[DONE]\" }}
      resume: {{ window: 600ms, store: redis, on_unknown: reject }}
",
        upstream.url()
    );
    let gateway = start_gateway(&yaml).await;
    let mut client = Client::open(gateway.addr, "/api/stream", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let id = client
        .take(1)
        .await
        .last()
        .and_then(|e| e.id.clone())
        .expect("an id");
    drop(client);
    // Past the window, while the owner waits on Redis to know whether to keep it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut late = Client::open(
        gateway.addr,
        "/api/stream",
        &[BEARER, ("last-event-id", id.as_str())],
    )
    .await;
    assert_eq!(late.status().await, 204, "expired, and the route rejects");
    assert!(
        exchange.closed_within(Duration::from_secs(8)).await,
        "the upstream is dropped once the owner hears from Redis (or gives up)"
    );
    let mut fresh = Client::open(gateway.addr, "/api/stream", &[BEARER]).await;
    let mut again = upstream.accept().await;
    again.start_sse("").await;
    assert_eq!(
        fresh.status().await,
        200,
        "the dropped stream's place under max_streams is free"
    );
}

/// A resume from an id whose events were trimmed for room gets the gap error on any
/// replica, and every replica counts it as the owner does: `expired`.
#[tokio::test]
async fn a_resume_from_trimmed_events_counts_expired_on_the_other_replica_too() {
    let Some((redis, upstream, owner, other)) = two_replicas("10s, max_bytes: 300B").await else {
        return;
    };
    let mut client = Client::open(owner.addr, "/api/stream", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let id = client.take(1).await[0].id.clone().expect("an id");
    drop(client);
    owner
        .metrics_until("detached", |m| {
            m.route_value("sse_gateway_streams_detached", ROUTE) == 1.0
        })
        .await;
    // Each its own read, each once the one before was read: about 60 bytes each, so
    // the first ones no longer fit in 300 bytes.
    for n in 2..=12 {
        exchange.send_chunk(&event(n)).await;
        owner
            .metrics_until("the event read", |m| {
                m.route_value("sse_gateway_stream_events_total", ROUTE) >= n as f64
            })
            .await;
    }
    let expired = |metrics: &Metrics| {
        metrics.get(
            "sse_gateway_resumes_total",
            &[("route", ROUTE), ("result", "expired")],
        )
    };
    // The owner's mirror writes in the background: wait until Redis was trimmed past
    // event 2 (its oldest entry a later event).
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let stream = the_stream(&redis).await.expect("the stream in Redis");
        let oldest = redis
            .command(&["XRANGE", &stream, "-", "+", "COUNT", "1"])
            .await;
        if oldest.contains("\r\n1-")
            && !["1-1", "1-2"]
                .iter()
                .any(|id| oldest.contains(&format!("\r\n{id}\r\n")))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis was never trimmed: {oldest}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut resumed =
        Client::open(other.addr, "/api/stream", &[BEARER, ("last-event-id", &id)]).await;
    let events = resumed.rest().await;
    assert_error_then_done(&events, "resume_gap", "cannot resume: ");
    assert_eq!(expired(&other.metrics().await), 1.0);
    let replayed = other.metrics().await.get(
        "sse_gateway_resumes_total",
        &[("route", ROUTE), ("result", "replayed")],
    );
    assert_eq!(replayed, 0.0, "no resume was served whole");
}

/// The process's resident memory, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// A stream far faster than a stalled Redis: the writes waiting for it are bounded in
/// bytes, not only in count. Each write holds its upstream read until it is sent, so
/// bounded by count alone (8,192 writes of reads up to 256 KiB) one fast stream held
/// every byte it read while Redis did not answer: 384 MiB here.
#[tokio::test]
async fn the_writes_waiting_for_a_stalled_redis_are_bounded_in_bytes() {
    use http_body_util::BodyExt;
    const EVENT: usize = 128 * 1024;
    const EVENTS: usize = 3072;
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), &unanswering_redis().await)).await;
    let before = resident_bytes();
    let (read, ()) = tokio::join!(
        async {
            let mut body = get(gateway.addr, "/api/stream?q=hi").await.into_body();
            let mut read = 0usize;
            while let Some(frame) = body.frame().await {
                read += frame.unwrap().data_ref().map_or(0, bytes::Bytes::len);
            }
            read
        },
        async {
            let mut exchange = upstream.accept().await;
            exchange.start_sse("").await;
            let pad = "x".repeat(EVENT - 16);
            for _ in 0..EVENTS {
                exchange
                    .send_chunk(format!("data: {pad}\n\n").as_bytes())
                    .await;
            }
            exchange.send_chunk(b"data: [DONE]\n\n").await;
            exchange.end_chunks().await;
        }
    );
    assert!(read > EVENT * EVENTS, "the client read {read} bytes");
    let grown = resident_bytes().saturating_sub(before);
    // The queue's 32 MiB, a pipeline's copy of as much, and the allocator's slack.
    assert!(
        grown < 160 * 1024 * 1024,
        "resident memory grew by {} MiB while {} MiB of events waited for Redis",
        grown / (1024 * 1024),
        EVENT * EVENTS / (1024 * 1024)
    );
    let metrics = gateway.metrics().await;
    assert!(metrics.route_value("sse_gateway_resume_store_errors_total", ROUTE) > 0.0);
}

/// An id past every event its stream gave out: on the owner it is refused at once
/// (`on_unknown`, here a new answer), as on a route without Redis, not looked up in
/// Redis and followed there as a resume.
#[tokio::test]
async fn an_id_never_given_out_is_unknown_on_the_owner_without_asking_redis() {
    let Some((_redis, upstream, gateway)) = one_gateway().await else {
        return;
    };
    let (mut exchange, first) = cut_after(&gateway, &upstream, 2).await;
    let id = first.last().unwrap().id.clone().unwrap();
    let (key, _) = id.rsplit_once('-').unwrap();
    let never = format!("{key}-999999");
    let headers = [BEARER, ("last-event-id", &never)];
    let resumed = Client::open(gateway.addr, "/api/stream?q=hi", &headers);
    let (mut resumed, mut second) = tokio::join!(resumed, upstream.accept());
    second.start_sse("").await;
    second.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&resumed.rest().await), ["[DONE]"], "a new answer");
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    counted_unknown_not_replayed(&gateway).await;
}

/// On another replica the same id is followed (its events may still be on their way
/// to Redis), but the stream's end tells it was never given out: an error event, not
/// a clean end that would pass an empty resume for a whole answer.
#[tokio::test]
async fn an_id_never_given_out_followed_on_another_replica_ends_with_an_error_event() {
    let Some((redis, upstream, owner, other)) = two_replicas("10s").await else {
        return;
    };
    let (mut exchange, first) = cut_after(&owner, &upstream, 2).await;
    redis_holds(&redis, 2).await;
    let id = first.last().unwrap().id.clone().unwrap();
    let (key, _) = id.rsplit_once('-').unwrap();
    let never = format!("{key}-999999");
    let mut resumed = Client::open(
        other.addr,
        "/api/stream?q=hi",
        &[BEARER, ("last-event-id", &never)],
    )
    .await;
    assert_eq!(resumed.status().await, 200);
    exchange.send_chunk(&event(3)).await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    exchange.end_chunks().await;
    let events = resumed.rest().await;
    assert_error_then_done(
        &events,
        "resume_gap",
        "cannot resume after event 999999: this stream ended at event",
    );
    // Counted as the owner counts it, once the end told: no resume was served.
    counted_unknown_not_replayed(&other).await;
}

/// `gateway` counted one resume `unknown` and none `replayed`.
async fn counted_unknown_not_replayed(gateway: &TestGateway) {
    let metrics = gateway.metrics().await;
    let resumes = |result| {
        metrics.get(
            "sse_gateway_resumes_total",
            &[("route", ROUTE), ("result", result)],
        )
    };
    assert_eq!(resumes("unknown"), 1.0);
    assert_eq!(resumes("replayed"), 0.0);
}
