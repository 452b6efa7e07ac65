//! Resumable streams through the real proxy, on real sockets: a client cut mid-answer
//! comes back with `Last-Event-ID` (or `lastEventId`) and gets the rest of the same
//! answer, exactly once, while the upstream saw one request; the refusals (wrong
//! credential, unknown or expired ids, under both policies), the replay bound, the
//! stop, and the cap on detached streams.
//!
//! The client (`support::raw_client`) speaks HTTP/1.0 on a raw socket, so cutting
//! the connection is dropping the socket.

mod support;

use std::time::Duration;

use tokio::io::AsyncReadExt;

use support::raw_client::{assert_error_then_done, Client, Seen};
use support::*;

const ROUTE: &str = "resumable";

fn config(upstream: &str, resume: &str) -> String {
    format!(
        "upstreams:
  assistant: {{ url: {upstream}, header_timeout: 2s }}
routes:
  - name: resumable
    match: {{ path_prefix: /api/stream }}
    upstream: assistant
    request: {{ method: POST, body: query_as_json }}
    stream:
      terminator: {{ data: \"[DONE]\" }}
      resume: {resume}
  - name: strict
    match: {{ path_prefix: /api/strict }}
    upstream: assistant
    stream:
      terminator: {{ data: \"[DONE]\" }}
      resume: {{ on_unknown: reject }}
"
    )
}

async fn setup(resume: &str) -> (ScriptedUpstream, TestGateway) {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), resume)).await;
    (upstream, gateway)
}

fn token(n: usize) -> String {
    format!("{{\"token\":{n}}}")
}

fn event(n: usize) -> Vec<u8> {
    format!("data: {}\n\n", token(n)).into_bytes()
}

fn data(events: &[Seen]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

fn tokens(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(token).collect()
}

fn last_id(events: &[Seen]) -> String {
    events
        .last()
        .and_then(|e| e.id.clone())
        .expect("events carry ids")
}

const BEARER: (&str, &str) = ("authorization", "Bearer user-1");

async fn detached(gateway: &TestGateway, n: f64) {
    gateway
        .metrics_until(&format!("{n} detached streams"), |m| {
            m.route_value("sse_gateway_streams_detached", ROUTE) == n
        })
        .await;
}

/// Opens a stream on `target` with [`BEARER`], lets one event through, and cuts the
/// client: the upstream exchange (still open) and the id the client saw last.
async fn one_event_then_cut(
    upstream: &ScriptedUpstream,
    gateway: &TestGateway,
    target: &str,
) -> (Exchange, String) {
    let mut client = Client::open(gateway.addr, target, &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let id = last_id(&client.take(1).await);
    drop(client);
    (exchange, id)
}

/// [`one_event_then_cut`], then a client resuming from that event once the stream
/// is detached, with its `200` read: the upstream exchange and the resumed client.
async fn resumed_after_one_event(
    upstream: &ScriptedUpstream,
    gateway: &TestGateway,
    target: &str,
) -> (Exchange, Client) {
    let (exchange, id) = one_event_then_cut(upstream, gateway, target).await;
    detached(gateway, 1.0).await;
    let mut resumed = Client::open(
        gateway.addr,
        "/api/stream",
        &[BEARER, ("last-event-id", id.as_str())],
    )
    .await;
    assert_eq!(resumed.status().await, 200);
    (exchange, resumed)
}

/// A reconnect with `id` and [`BEARER`], as an `EventSource` sends it, is told `204`
/// (which stops the `EventSource`) with no body, and no upstream request is made.
async fn reconnect_is_told_to_stop(upstream: &ScriptedUpstream, gateway: &TestGateway, id: &str) {
    let headers = [BEARER, ("last-event-id", id)];
    let mut reconnect = Client::open(gateway.addr, "/api/stream?q=hi", &headers).await;
    assert_eq!(reconnect.status().await, 204);
    assert_eq!(reconnect.rest().await, []);
    assert!(!upstream.connection_within(Duration::from_millis(300)).await);
}

/// The status of a stop (`DELETE`) of the stream `id` names, with `credential`.
async fn stop_status(gateway: &TestGateway, id: &str, credential: &str) -> u16 {
    let target = format!("/api/stream?lastEventId={id}");
    let authorization = [("authorization", credential)];
    let mut stop = Client::open_with(gateway.addr, "DELETE", &target, &authorization).await;
    stop.status().await
}

/// The stream's id in a response head (`x-sse-gateway-stream-id`).
async fn stream_id_in_head(client: &mut Client) -> String {
    let head = client.head().await;
    head.lines()
        .find_map(|line| line.strip_prefix("x-sse-gateway-stream-id: "))
        .unwrap_or_else(|| panic!("no stream id in the head:\n{head}"))
        .to_owned()
}

fn resumes(metrics: &Metrics, result: &str) -> f64 {
    metrics.get(
        "sse_gateway_resumes_total",
        &[("route", ROUTE), ("result", result)],
    )
}

#[tokio::test]
async fn a_client_cut_mid_answer_resumes_and_gets_the_whole_answer_once() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    for n in 1..=3 {
        exchange.send_chunk(&event(n)).await;
    }
    let first = client.take(3).await;
    assert_eq!(data(&first), tokens(1..=3));
    // Ids: one stream key, numbered from 1.
    let ids: Vec<String> = first.iter().map(|e| e.id.clone().unwrap()).collect();
    let key = ids[0].rsplit_once('-').unwrap().0.to_owned();
    assert_eq!(key.len(), 22, "128 bits in base64url: {key}");
    assert_eq!(
        ids,
        (1..=3).map(|n| format!("{key}-{n}")).collect::<Vec<_>>()
    );

    // The client is cut; the upstream goes on, into the replay buffer.
    drop(client);
    detached(&gateway, 1.0).await;
    for n in 4..=6 {
        exchange.send_chunk(&event(n)).await;
    }

    let mut resumed = Client::open(
        gateway.addr,
        "/api/stream?q=hi",
        &[BEARER, ("last-event-id", &last_id(&first))],
    )
    .await;
    assert_eq!(resumed.status().await, 200);
    let head = resumed.head().await.to_owned();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let replayed = resumed.take(3).await;
    assert_eq!(data(&replayed), tokens(4..=6));
    detached(&gateway, 0.0).await;
    // Live again: the rest, then the terminator, then the end.
    exchange.send_chunk(&event(7)).await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    let live = resumed.rest().await;
    let mut all = data(&first);
    all.extend(data(&replayed));
    all.extend(data(&live));
    let mut expected = tokens(1..=7);
    expected.push("[DONE]".into());
    assert_eq!(all, expected, "every event once, in order");
    let ids: Vec<String> = replayed
        .iter()
        .chain(&live)
        .map(|e| e.id.clone().unwrap())
        .collect();
    assert_eq!(
        ids,
        (4..=8).map(|n| format!("{key}-{n}")).collect::<Vec<_>>()
    );

    assert!(
        !upstream.connection_within(Duration::from_millis(300)).await,
        "the resume did not call the upstream"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(resumes(&metrics, "replayed"), 1.0);
    assert_eq!(
        metrics.route_value("sse_gateway_resume_replayed_events_total", ROUTE),
        3.0
    );
    assert_eq!(metrics.outcome_count(ROUTE, "terminator"), 1.0);
}

#[tokio::test]
async fn two_cuts_and_the_query_parameter_still_give_every_event_once() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&[event(1), event(2)].concat()).await;
    let first = client.take(2).await;
    drop(client);
    detached(&gateway, 1.0).await;
    exchange.send_chunk(&event(3)).await;

    let mut second = Client::open(
        gateway.addr,
        "/api/stream?q=hi",
        &[BEARER, ("last-event-id", &last_id(&first))],
    )
    .await;
    let middle = second.take(1).await;
    exchange.send_chunk(&event(4)).await;
    let middle = [middle, second.take(1).await].concat();
    // Cut again, in the live part this time.
    drop(second);
    detached(&gateway, 1.0).await;
    exchange.send_chunk(&[event(5), event(6)].concat()).await;

    // The polyfill's way: the id as a query parameter.
    let target = format!("/api/stream?q=hi&lastEventId={}", last_id(&middle));
    let mut third = Client::open(gateway.addr, &target, &[BEARER]).await;
    let replayed = third.take(2).await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    let rest = third.rest().await;

    let all = [first, middle, replayed, rest].concat();
    let mut expected = tokens(1..=6);
    expected.push("[DONE]".into());
    assert_eq!(data(&all), expected);
    assert!(!upstream.connection_within(Duration::from_millis(300)).await);
    let metrics = gateway.metrics().await;
    assert_eq!(resumes(&metrics, "replayed"), 2.0);
    assert_eq!(
        metrics.route_value("sse_gateway_resume_replayed_events_total", ROUTE),
        3.0,
        "event 3, then events 5 and 6"
    );
}

#[tokio::test]
async fn a_finished_stream_is_resumable_for_its_window() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange
        .send_chunk(&[event(1), event(2), event(3), b"data: [DONE]\n\n".to_vec()].concat())
        .await;
    let whole = client.rest().await;
    assert_eq!(whole.len(), 4);
    let id = whole[1].id.clone().unwrap();

    let mut again = Client::open(
        gateway.addr,
        "/api/stream",
        &[BEARER, ("last-event-id", &id)],
    )
    .await;
    let rest = again.rest().await;
    assert_eq!(data(&rest), [token(3), "[DONE]".into()]);
    assert_eq!(rest, whole[2..].to_vec(), "the same bytes, ids included");

    // An `EventSource` that did not close at the end reconnects with the last id: it
    // has every event, and 204 stops it (a 200 with nothing would have it come back
    // until the window ran out, then start the answer again).
    reconnect_is_told_to_stop(&upstream, &gateway, &last_id(&whole)).await;
    let metrics = gateway.metrics().await;
    assert_eq!(resumes(&metrics, "finished"), 1.0);
    assert_eq!(resumes(&metrics, "replayed"), 1.0);
}

#[tokio::test]
async fn another_credential_is_unknown_and_restarts() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let (mut exchange, id) = one_event_then_cut(&upstream, &gateway, "/api/stream?q=hi").await;
    detached(&gateway, 1.0).await;
    for credential in [vec![("authorization", "Bearer user-2")], vec![]] {
        let mut headers = credential.clone();
        headers.push(("last-event-id", &id));
        let restarted = Client::open(gateway.addr, "/api/stream?q=hi", &headers);
        let (mut restarted, mut second) = tokio::join!(restarted, upstream.accept());
        // A new upstream request, as without resume, with no trace of the id.
        assert!(!second.request.has_header("last-event-id"));
        assert_eq!(second.request.body, br#"{"q":"hi"}"#);
        second.start_sse("").await;
        second.send_chunk(b"data: fresh\n\ndata: [DONE]\n\n").await;
        let events = restarted.rest().await;
        assert_eq!(data(&events), ["fresh", "[DONE]"]);
        assert_ne!(
            last_id(&events).rsplit_once('-').map(|(key, _)| key),
            id.rsplit_once('-').map(|(key, _)| key),
            "a new key"
        );
    }
    let metrics = gateway.metrics().await;
    assert_eq!(resumes(&metrics, "forbidden"), 2.0);
    assert_eq!(resumes(&metrics, "replayed"), 0.0);
    // The rightful client still resumes.
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    let mut rightful = Client::open(
        gateway.addr,
        "/api/stream?q=hi",
        &[BEARER, ("last-event-id", &id)],
    )
    .await;
    assert_eq!(data(&rightful.rest().await), ["[DONE]"]);
}

#[tokio::test]
async fn unknown_ids_restart_or_get_204_as_the_route_says() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let unknown = format!("{}-3", "ab".repeat(16));
    // restart: the id is removed everywhere, query_as_json body included.
    let target = format!("/api/stream/x?q=hi&lastEventId={unknown}&n=1");
    let client = Client::open(gateway.addr, &target, &[("last-event-id", "chatcmpl-42")]);
    let (mut client, mut exchange) = tokio::join!(client, upstream.accept());
    assert_eq!(exchange.request.target, "/api/stream/x");
    assert!(!exchange.request.has_header("last-event-id"));
    let body: serde_json::Value = serde_json::from_slice(&exchange.request.body).unwrap();
    assert_eq!(body, serde_json::json!({"q": "hi", "n": "1"}));
    exchange.start_sse("").await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&client.rest().await), ["[DONE]"]);

    // reject: 204 and no upstream request; EventSource stops reconnecting on it.
    let mut rejected = Client::open(
        gateway.addr,
        "/api/strict?q=hi",
        &[("last-event-id", &unknown)],
    )
    .await;
    assert_eq!(rejected.status().await, 204);
    assert_eq!(rejected.rest().await, []);
    assert!(!upstream.connection_within(Duration::from_millis(300)).await);

    let metrics = gateway.metrics().await;
    assert_eq!(resumes(&metrics, "unknown"), 1.0, "a foreign id is unknown");
    assert_eq!(
        metrics.get(
            "sse_gateway_resumes_total",
            &[("route", "strict"), ("result", "unknown")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_resume_from_events_dropped_for_room_gets_an_error_event_not_a_gap() {
    let (upstream, gateway) = setup("{ window: 10s, max_bytes: 300B }").await;
    let (mut exchange, id) = one_event_then_cut(&upstream, &gateway, "/api/stream").await;
    detached(&gateway, 1.0).await;
    // About 60 bytes each with their ids: the first ones no longer fit in 300 bytes.
    // Each is its own upstream read (the last read stays whole, however large): bytes
    // written are not bytes read, so each is sent once the one before was read.
    for n in 2..=12 {
        exchange.send_chunk(&event(n)).await;
        gateway
            .metrics_until("the event read", |m| {
                m.route_value("sse_gateway_stream_events_total", ROUTE) >= n as f64
            })
            .await;
    }
    let mut resumed = Client::open(
        gateway.addr,
        "/api/stream",
        &[BEARER, ("last-event-id", &id)],
    )
    .await;
    let events = resumed.rest().await;
    assert_error_then_done(&events, "resume_gap", "cannot resume: events 2 to ");
    assert_eq!(resumes(&gateway.metrics().await, "expired"), 1.0);
}

#[tokio::test]
async fn delete_with_the_id_stops_a_detached_stream_at_once() {
    let (upstream, gateway) = setup("{ window: 30s }").await;
    let (mut exchange, id) = one_event_then_cut(&upstream, &gateway, "/api/stream?q=hi").await;
    detached(&gateway, 1.0).await;

    // Another credential cannot stop it.
    let target = format!("/api/stream?lastEventId={id}");
    let mut other = Client::open_with(
        gateway.addr,
        "DELETE",
        &target,
        &[("authorization", "Bearer x")],
    )
    .await;
    assert_eq!(other.status().await, 404);
    let mut stop = Client::open_with(gateway.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(stop.status().await, 204);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream connection is closed"
    );
    detached(&gateway, 0.0).await;
    gateway
        .metrics_until("the stream's outcome", |m| {
            m.outcome_count(ROUTE, "client_closed") == 1.0
        })
        .await;
    // Stopped again (a double click, a second tab's stop button): stopped as asked,
    // within the window; still not for another credential.
    assert_eq!(
        stop_status(&gateway, &id, BEARER.1).await,
        204,
        "stopped already"
    );
    assert_eq!(stop_status(&gateway, &id, "Bearer x").await, 404);

    // A reconnect with the id (another tab's `EventSource`) gets 204, which stops it:
    // the user stopped this answer, and it is not generated again.
    reconnect_is_told_to_stop(&upstream, &gateway, &id).await;
    // Another credential is not told so: a new answer, as for any id not its own.
    let foreign_headers = [
        ("authorization", "Bearer x"),
        ("last-event-id", id.as_str()),
    ];
    let foreign = Client::open(gateway.addr, "/api/stream?q=hi", &foreign_headers);
    let (mut foreign, mut fresh) = tokio::join!(foreign, upstream.accept());
    fresh.start_sse("").await;
    fresh.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&foreign.rest().await), ["[DONE]"]);
    let metrics = gateway.metrics().await;
    assert_eq!(resumes(&metrics, "stopped"), 1.0);
    assert_eq!(resumes(&metrics, "forbidden"), 1.0);
}

/// A client whose parser never shows it the events' ids (the `openai` SDKs') reads the
/// stream's id from the response head: it stops the stream, and resumes it from its
/// first event.
#[tokio::test]
async fn the_response_head_names_the_stream_for_a_stop_or_a_resume_from_the_start() {
    let (upstream, gateway) = setup("{ window: 30s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let stream_id = stream_id_in_head(&mut client).await;
    let first = last_id(&client.take(1).await);
    let (key, seq) = first.rsplit_once('-').unwrap();
    assert_eq!(
        (stream_id.as_str(), seq),
        (format!("{key}-0").as_str(), "1")
    );
    drop(client);
    detached(&gateway, 1.0).await;

    // A resume from the start gets every event.
    exchange.send_chunk(&event(2)).await;
    let headers = [BEARER, ("last-event-id", stream_id.as_str())];
    let mut resumed = Client::open(gateway.addr, "/api/stream?q=hi", &headers).await;
    assert_eq!(data(&resumed.take(2).await), [token(1), token(2)]);
    assert!(
        !resumed.head().await.contains("x-sse-gateway-stream-id"),
        "a resume opens no stream"
    );
    drop(resumed);
    // The stop button.
    assert_eq!(stop_status(&gateway, &stream_id, BEARER.1).await, 204);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream is dropped"
    );
}

/// A credential in several lines (cookies, which HTTP/2 sends a line each) is bound
/// whole: a client that shares the first line only is not the stream's client.
#[tokio::test]
async fn every_line_of_the_credential_header_is_bound_to_the_stream() {
    let (upstream, gateway) = setup("{ window: 30s, credential_header: cookie }").await;
    let cookies = [("cookie", "theme=dark"), ("cookie", "session=alice")];
    let mut client = Client::open(gateway.addr, "/api/stream?q=hi", &cookies).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let id = last_id(&client.take(1).await);
    drop(client);
    detached(&gateway, 1.0).await;

    let target = format!("/api/stream?lastEventId={id}");
    let mut first_line_only =
        Client::open_with(gateway.addr, "DELETE", &target, &[("cookie", "theme=dark")]).await;
    assert_eq!(
        first_line_only.status().await,
        404,
        "not the stream's client"
    );
    // The same cookies in one line are the same credential.
    let one_line = [("cookie", "theme=dark; session=alice")];
    let mut stop = Client::open_with(gateway.addr, "DELETE", &target, &one_line).await;
    assert_eq!(stop.status().await, 204);
    assert!(exchange.closed_within(LIVENESS).await);
}

/// The stop button pressed while the model still thinks, before the first event: the
/// client's leaving cancelled the stream already, and the stop with the head's id is
/// told so (`204`), not that no such stream exists. A reconnect, with nothing to
/// resume, starts a new answer.
#[tokio::test]
async fn a_stop_before_the_first_event_finds_the_stream_cancelled() {
    let (upstream, gateway) = setup("{ window: 30s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    let stream_id = stream_id_in_head(&mut client).await;
    drop(client);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "cancelled: the upstream is dropped"
    );
    assert_eq!(
        stop_status(&gateway, &stream_id, "Bearer x").await,
        404,
        "not for another credential"
    );
    assert_eq!(stop_status(&gateway, &stream_id, BEARER.1).await, 204);

    let headers = [BEARER, ("last-event-id", stream_id.as_str())];
    let reconnect = Client::open(gateway.addr, "/api/stream?q=hi", &headers);
    let (mut reconnect, mut fresh) = tokio::join!(reconnect, upstream.accept());
    fresh.start_sse("").await;
    fresh.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&reconnect.rest().await), ["[DONE]"]);
    assert_eq!(resumes(&gateway.metrics().await, "unknown"), 1.0);
}

/// Stops the stream `id` names, with its credential: `204`; then, each within 5 s,
/// its upstream is dropped and `client`'s response ends with nothing more.
async fn stop_and_see_it_end(
    gateway: &TestGateway,
    id: &str,
    exchange: &mut Exchange,
    client: &mut Client,
) {
    let target = format!("/api/stream?lastEventId={id}");
    let mut stop = Client::open_with(gateway.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(stop.status().await, 204);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream is dropped within 5 s"
    );
    let rest = tokio::time::timeout(LIVENESS, client.rest())
        .await
        .expect("the client's response ends within 5 s");
    assert!(rest.is_empty(), "nothing after the stop: {rest:?}");
}

/// The user presses stop while a resumed client waits for the next token: that
/// client's response ends too, instead of waiting for events that will not come.
#[tokio::test]
async fn a_stop_ends_the_response_of_a_resumed_client_waiting_for_more() {
    let (upstream, gateway) = setup("{ window: 30s }").await;
    let (mut exchange, mut resumed) =
        resumed_after_one_event(&upstream, &gateway, "/api/stream?q=hi").await;
    exchange.send_chunk(&event(2)).await;
    let seen = resumed.take(1).await;
    assert_eq!(data(&seen), tokens(2..=2));

    let last = last_id(&seen);
    stop_and_see_it_end(&gateway, &last, &mut exchange, &mut resumed).await;
    // Its `EventSource` reconnects with the last id it saw: 204, so it stops.
    reconnect_is_told_to_stop(&upstream, &gateway, &last).await;
}

/// The user presses stop while the first client still reads and the model thinks
/// (nothing from the upstream): the upstream is dropped at once, not at the next
/// token or clock.
#[tokio::test]
async fn a_stop_drops_a_quiet_upstream_whose_first_client_still_reads() {
    let (upstream, gateway) = setup("{ window: 30s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let id = last_id(&client.take(1).await);

    stop_and_see_it_end(&gateway, &id, &mut exchange, &mut client).await;
    gateway
        .metrics_until("the stream's outcome", |m| {
            m.outcome_count(ROUTE, "client_closed") == 1.0
        })
        .await;
}

/// A stop (SIGTERM in a rolling update) with no client connection left, while a
/// detached stream is read on: the drain gives it `drain_timeout` (1 s here) as it
/// gives open responses, then ends it with the `shutdown` outcome, recorded before
/// the process goes (it was dropped unrecorded, still active in the last scrape).
#[tokio::test]
async fn the_drain_ends_a_detached_stream_with_the_shutdown_outcome() {
    let (upstream, gateway) = setup("{ window: 30s }").await;
    let (mut exchange, _id) = one_event_then_cut(&upstream, &gateway, "/api/stream?q=hi").await;
    detached(&gateway, 1.0).await;
    let metrics = gateway.gateway().metrics().clone();
    // It waits for a final scrape too (this test scraped), then returns.
    gateway.shutdown().await;
    let after = Metrics::parse(&metrics.encode());
    assert_eq!(after.route_value("sse_gateway_streams_active", ROUTE), 0.0);
    assert_eq!(
        after.outcome_count(ROUTE, "shutdown"),
        1.0,
        "{}",
        after.text
    );
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream is dropped"
    );
}

#[tokio::test]
async fn nobody_resuming_within_the_window_drops_the_upstream() {
    let (upstream, gateway) = setup("{ window: 300ms }").await;
    let (mut exchange, id) = one_event_then_cut(&upstream, &gateway, "/api/stream?q=hi").await;
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream is dropped after the window"
    );
    gateway
        .metrics_until("the stream's outcome", |m| {
            m.outcome_count(ROUTE, "client_closed") == 1.0
                && m.route_value("sse_gateway_streams_detached", ROUTE) == 0.0
        })
        .await;
    // A late resume is told `expired`, and restarts.
    let headers = [BEARER, ("last-event-id", &id)];
    let late = Client::open(gateway.addr, "/api/stream?q=hi", &headers);
    let (mut late, mut second) = tokio::join!(late, upstream.accept());
    second.start_sse("").await;
    second.send_chunk(b"data: [DONE]\n\n").await;
    assert_eq!(data(&late.rest().await), ["[DONE]"]);
    assert_eq!(resumes(&gateway.metrics().await, "expired"), 1.0);
}

#[tokio::test]
async fn beyond_max_detached_a_disconnect_cancels_as_without_resume() {
    let (upstream, gateway) = setup("{ window: 30s, max_detached: 1 }").await;
    let mut exchanges = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (exchange, id) = one_event_then_cut(&upstream, &gateway, "/api/stream").await;
        ids.push(id);
        exchanges.push(exchange);
        detached(&gateway, 1.0).await;
    }
    // The first is kept; the second was cancelled at once.
    assert!(exchanges[1].closed_within(LIVENESS).await);
    exchanges[0].send_chunk(b"data: [DONE]\n\n").await;
    let mut kept = Client::open(
        gateway.addr,
        "/api/stream",
        &[BEARER, ("last-event-id", &ids[0])],
    )
    .await;
    assert_eq!(data(&kept.rest().await), ["[DONE]"]);
    let metrics = gateway.metrics().await;
    assert_eq!(metrics.outcome_count(ROUTE, "client_closed"), 1.0);
    assert_eq!(metrics.outcome_count(ROUTE, "terminator"), 1.0);
}

/// No id reached the client, and nothing else names the stream: it cannot be
/// resumed, so it is not read on for nobody.
#[tokio::test]
async fn a_client_that_leaves_before_the_first_event_cancels_the_stream() {
    let (upstream, gateway) = setup("{ window: 30s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    assert_eq!(client.status().await, 200);
    drop(client);
    assert!(
        exchange.closed_within(LIVENESS).await,
        "the upstream is dropped"
    );
    gateway
        .metrics_until("the stream ended as client_closed", |m| {
            m.outcome_count(ROUTE, "client_closed") == 1.0
        })
        .await;
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.route_value("sse_gateway_streams_detached", ROUTE),
        0.0
    );
}

#[tokio::test]
async fn routes_without_resume_carry_no_ids() {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = one_route_config(
        &upstream.url(),
        "    stream: { terminator: { data: \"[DONE]\" } }\n",
    );
    let gateway = start_gateway(&yaml).await;
    let mut client = Client::open(gateway.addr, "/api/stream", &[("last-event-id", "x-1")]).await;
    let mut exchange = upstream.accept().await;
    assert_eq!(
        exchange.request.header("last-event-id"),
        Some("x-1"),
        "passed on as before"
    );
    exchange.start_sse("").await;
    exchange
        .send_chunk(b"id: up-1\ndata: a\n\ndata: [DONE]\n\n")
        .await;
    let events = client.rest().await;
    assert_eq!(events[0].id.as_deref(), Some("up-1"));
    assert_eq!(events[1].id, None);
}

/// Once a stream carries ids, the openai Python SDK's decoder dispatches an event at
/// every blank line, and fails on one without data: every block the client gets that
/// ends in a blank line must be an event with data and an id. The upstream's comment
/// and the heartbeat come as lines of the next event.
#[tokio::test]
async fn a_stream_with_ids_ends_no_comment_with_a_blank_line() {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = one_route_config(
        &upstream.url(),
        "    stream: { terminator: { data: \"[DONE]\" }, heartbeat: 1s, resume: {} }\n",
    );
    let gateway = start_gateway(&yaml).await;
    let mut client = Client::open(gateway.addr, "/api/stream", &[]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(b"data: a\n\n: ping\n\n").await;
    // A second after the ping, with nothing else sent, the heartbeat.
    let mut body = client.bytes_until(b": keep-alive\n").await;
    exchange.send_chunk(b"data: b\n\ndata: [DONE]\n\n").await;
    exchange.end_chunks().await;
    body.extend(client.bytes_until(b"data: [DONE]\n").await);
    body.extend(client.bytes_until(b"\n\n").await);
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains(": ping\n"), "{body:?}");
    let blocks: Vec<&str> = body.split_terminator("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{body:?}");
    for block in blocks {
        assert!(
            block.lines().any(|l| l.starts_with("data:"))
                && block.lines().last().is_some_and(|l| l.starts_with("id: ")),
            "a block without data, or without its id last: {block:?} in {body:?}"
        );
    }
}

/// An upstream that pings with comments while it thinks keeps the first client's
/// connection busy; a resumed client gets none of the pings (they are not kept), so
/// it gets a heartbeat instead, or a load balancer would cut it for silence.
#[tokio::test]
async fn a_resumed_client_gets_a_heartbeat_for_the_upstreams_pings() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let (mut exchange, mut resumed) =
        resumed_after_one_event(&upstream, &gateway, "/api/stream").await;
    exchange.send_chunk(b": ping\n\n").await;
    let seen = resumed.bytes_until(b": keep-alive\n").await;
    assert!(!String::from_utf8_lossy(&seen).contains(": ping"));
}

#[tokio::test]
async fn a_cut_in_the_middle_of_a_large_upstream_read_loses_nothing_on_resume() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream?q=hi", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    // 2,000 events of about 200 bytes in one write: frames of many events each.
    let padded = |n: usize| {
        let pad = "x".repeat(180);
        format!("data: {{\"token\":{n},\"pad\":\"{pad}\"}}\n\n").into_bytes()
    };
    let answer: Vec<u8> = (1..=2000).flat_map(padded).collect();
    exchange.send_chunk(&answer).await;
    let first = client.take(150).await;
    drop(client);
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    let id = last_id(&first);
    let headers = [BEARER, ("last-event-id", id.as_str())];
    let mut resumed = Client::open(gateway.addr, "/api/stream?q=hi", &headers).await;
    assert_eq!(resumed.status().await, 200);
    let all = [first, resumed.rest().await].concat();

    let (done, answered) = all.split_last().expect("events");
    assert_eq!(done.data, "[DONE]");
    let numbers: Vec<u64> = answered
        .iter()
        .map(|event| {
            let json: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            json["token"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        (1..=2000).collect::<Vec<u64>>(),
        "every event once, in order"
    );
    let key = id.rsplit_once('-').unwrap().0;
    for (n, event) in all.iter().enumerate() {
        assert_eq!(
            event.id.as_deref(),
            Some(format!("{key}-{}", n + 1).as_str())
        );
    }
    assert!(
        !upstream.connection_within(Duration::from_millis(200)).await,
        "one upstream request"
    );
}

/// A phone that lost its network: its first connection stays open but takes no more
/// bytes, and no FIN comes. The reconnect resumes while that connection still drives
/// the upstream: the resume takes the stream over at once (the first connection is
/// closed, the stream read on without it), not after the send timeout (60 s here, the
/// default), and the resumed client gets every event.
#[tokio::test]
async fn a_resume_takes_the_stream_over_from_a_first_connection_that_hangs() {
    let upstream = ScriptedUpstream::bind().await;
    let yaml = config(&upstream.url(), "{ window: 30s, max_bytes: 64MiB }");
    let gateway = start_gateway(&yaml).await;
    let request = b"POST /api/stream HTTP/1.0\r\nhost: gateway\r\nauthorization: Bearer user-1\r\ncontent-length: 0\r\n\r\n";
    let mut first = client_that_will_stop_reading(gateway.addr, request).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    let pad = "x".repeat(180);
    let padded = move |n: usize| format!("data: {{\"token\":{n},\"pad\":\"{pad}\"}}\n\n");
    exchange.send_chunk(padded(1).as_bytes()).await;
    let seen = String::from_utf8(read_until(&mut first, b"\n\n").await).unwrap();
    let id = seen
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .expect("an id")
        .to_owned();
    // About 4 MB: more than the first connection's buffers hold, so the first
    // connection stops taking bytes long before the answer's end.
    const TOTAL: usize = 20_000;
    let writer = tokio::spawn(async move {
        for batch in (2..=TOTAL).collect::<Vec<_>>().chunks(100) {
            let chunk: String = batch.iter().map(|&n| padded(n)).collect();
            exchange.send_chunk(chunk.as_bytes()).await;
        }
        exchange.send_chunk(b"data: [DONE]\n\n").await;
        exchange
    });
    let mut resumed = Client::open(
        gateway.addr,
        "/api/stream",
        &[
            ("authorization", "Bearer user-1"),
            ("last-event-id", id.as_str()),
        ],
    )
    .await;
    assert_eq!(resumed.status().await, 200);
    let events = tokio::time::timeout(Duration::from_secs(20), resumed.rest())
        .await
        .expect("the resumed client is not held at the first connection's pace");
    assert_eq!(
        events.len(),
        TOTAL,
        "every event after the first, then [DONE]"
    );
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    assert!(events[0].data.starts_with("{\"token\":2,"));
    drop(writer.await.unwrap());
    // The first connection was closed: what it had not read, then its end.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the first connection ends (EOF or reset) within 5 s"
    );
    assert!(
        !upstream.connection_within(Duration::from_millis(200)).await,
        "one upstream request"
    );
}

#[tokio::test]
async fn the_downstream_bytes_of_a_resumable_stream_count_what_the_client_gets() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream", &[]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    // Ids are added, and a read of comments alone goes out without its blank line
    // (see the stamper): neither is the length of what the upstream sent.
    exchange.send_chunk(b"data: a\n\ndata: b\n\n").await;
    let mut text = client.bytes_until(b"data: b\n").await;
    exchange.send_chunk(b": ping\n\n").await;
    text.extend(client.bytes_until(b": ping\n").await);
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    exchange.end_chunks().await;
    text.extend(client.bytes_until(b"data: [DONE]\n").await);
    text.extend(client.bytes_until(b"\n\n").await);
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.matches("id: ").count(), 3, "{text}");
    assert!(text.contains("\n\n: ping\ndata: [DONE]\n"), "{text}");
    let metrics = gateway
        .metrics_until("the stream's end", |m| {
            m.outcome_count(ROUTE, "terminator") == 1.0
        })
        .await;
    let downstream = metrics.get(
        "sse_gateway_stream_bytes_total",
        &[("route", ROUTE), ("direction", "downstream")],
    );
    assert_eq!(downstream, text.len() as f64, "{text}");
}

/// Read on without a client, a stream counts what it keeps for the resume: its
/// numbered events, not the pings that go to no one.
#[tokio::test]
async fn the_downstream_bytes_of_a_detached_stream_count_what_it_keeps() {
    let (upstream, gateway) = setup("{ window: 10s }").await;
    let mut client = Client::open(gateway.addr, "/api/stream", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    let live = client.bytes_until(b"-1\n\n").await;
    let id = String::from_utf8_lossy(&live)
        .lines()
        .find_map(|line| line.strip_prefix("id: ").map(str::to_owned))
        .expect("an id");
    drop(client);
    detached(&gateway, 1.0).await;
    exchange.send_chunk(b": ping\n\n").await;
    exchange.send_chunk(&event(2)).await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    exchange.end_chunks().await;
    gateway
        .metrics_until("the stream's end", |m| {
            m.outcome_count(ROUTE, "terminator") == 1.0
        })
        .await;
    let headers = [BEARER, ("last-event-id", id.as_str())];
    let mut resumed = Client::open(gateway.addr, "/api/stream", &headers).await;
    let mut kept = resumed.bytes_until(b"data: [DONE]\n").await;
    kept.extend(resumed.bytes_until(b"\n\n").await);
    let downstream = gateway.metrics().await.get(
        "sse_gateway_stream_bytes_total",
        &[("route", ROUTE), ("direction", "downstream")],
    );
    let kept = String::from_utf8(kept).unwrap();
    assert!(!kept.contains("ping"), "{kept}");
    assert_eq!(downstream, (live.len() + kept.len()) as f64, "{kept}");
}

/// A resumed client that has caught up reads the stream live: an upstream read larger
/// than `max_bytes` (one large event, or a burst of tokens) reaches it whole, as it
/// reaches a client that never left, not as a gap it never fell into.
#[tokio::test]
async fn a_live_resumed_reader_gets_an_upstream_read_larger_than_max_bytes() {
    let (upstream, gateway) = setup("{ window: 10s, max_bytes: 300B }").await;
    let (mut exchange, id) = one_event_then_cut(&upstream, &gateway, "/api/stream?q=hi").await;
    detached(&gateway, 1.0).await;
    let mut resumed = Client::open(
        gateway.addr,
        "/api/stream?q=hi",
        &[BEARER, ("last-event-id", &id)],
    )
    .await;
    assert_eq!(resumed.status().await, 200);
    detached(&gateway, 0.0).await;
    // One event over the bound, then a burst over it in one read; each is sent once
    // the client has what came before (a reader further behind than `max_bytes` is
    // told of its gap, by design).
    let big = format!("{{\"token\":2,\"pad\":\"{}\"}}", "x".repeat(380));
    exchange
        .send_chunk(format!("data: {big}\n\n").as_bytes())
        .await;
    assert_eq!(data(&resumed.take(1).await), [big]);
    let burst: Vec<u8> = (3..=12).flat_map(event).collect();
    exchange.send_chunk(&burst).await;
    assert_eq!(data(&resumed.take(10).await), tokens(3..=12));
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    let rest = tokio::time::timeout(LIVENESS, resumed.rest())
        .await
        .expect("the stream ends");
    assert_eq!(data(&rest), ["[DONE]"]);
}

/// "Stop" pressed as the answer finished: the finished stream's buffer is freed (204):
/// a resume from its first event is told to stop instead of replaying the rest. A
/// second stop is stopped as asked.
#[tokio::test]
async fn a_stop_of_a_finished_stream_frees_its_buffer() {
    let (upstream, gateway) = setup("{ window: 30s }").await;
    let mut client = Client::open(gateway.addr, "/api/strict", &[BEARER]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(&event(1)).await;
    exchange.send_chunk(b"data: [DONE]\n\n").await;
    let events = client.rest().await;
    assert_eq!(data(&events), [token(1), "[DONE]".to_owned()]);
    let id = events[0].id.clone().expect("an id");
    let target = format!("/api/strict?lastEventId={id}");
    let mut stop = Client::open_with(gateway.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(stop.status().await, 204);
    let mut again = Client::open_with(gateway.addr, "DELETE", &target, &[BEARER]).await;
    assert_eq!(again.status().await, 204);
    let headers = [BEARER, ("last-event-id", id.as_str())];
    let mut resumed = Client::open(gateway.addr, "/api/strict", &headers).await;
    assert_eq!(resumed.status().await, 204);
    assert_eq!(resumed.rest().await, [], "nothing replayed");
    let stopped = [("route", "strict"), ("result", "stopped")];
    let metrics = gateway.metrics().await;
    assert_eq!(metrics.get("sse_gateway_resumes_total", &stopped), 1.0);
}

/// A resumed client leaves with the route already keeping its `max_detached` streams
/// without a client: its stream is cut. A resume that comes in the same moment, before
/// the stream's driver has taken it out of the table, is refused as one just after
/// (unknown, `on_unknown`), not answered with a clean end as if the answer were whole.
#[tokio::test]
async fn a_resume_as_its_stream_is_cut_over_max_detached_is_refused_not_ended_cleanly() {
    let (upstream, gateway) = setup("{ window: 30s, max_detached: 1, on_unknown: reject }").await;
    // Stream A: cut after event 1, then read again by a resumed client.
    let (mut cut, id) = one_event_then_cut(&upstream, &gateway, "/api/stream?q=a").await;
    detached(&gateway, 1.0).await;
    let resume = [BEARER, ("last-event-id", id.as_str())];
    let mut resumed = Client::open(gateway.addr, "/api/stream", &resume).await;
    assert_eq!(resumed.status().await, 200);
    detached(&gateway, 0.0).await;
    // Stream B: cut too; the route now keeps its one stream without a client.
    let (_b, _) = one_event_then_cut(&upstream, &gateway, "/api/stream?q=b").await;
    detached(&gateway, 1.0).await;

    // The next resume of A comes on a connection already open, in the same moment as
    // the resumed client leaves: the gateway reads both in one turn.
    let mut again = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = format!(
        "GET /api/stream HTTP/1.0\r\nhost: gateway\r\nauthorization: Bearer user-1\r\nlast-event-id: {id}\r\n\r\n"
    );
    drop(resumed);
    tokio::io::AsyncWriteExt::write_all(&mut again, request.as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(LIVENESS, again.read_to_end(&mut response))
        .await
        .expect("the resume is answered within 5 s")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.0 204"),
        "the cut stream is unknown, as after its removal: {response}"
    );
    assert!(
        cut.closed_within(LIVENESS).await,
        "A's upstream is dropped within 5 s"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(resumes(&metrics, "unknown"), 1.0);
    assert_eq!(resumes(&metrics, "replayed"), 1.0, "the first resume only");
}

/// An upstream that pings between events: on a stream with ids its comments lose
/// their blank line (see `resume::stamp`), so without a bound they would make one
/// event that grows as long as the pings go on. Past 4 KiB until the next event they
/// are dropped; the event after them arrives whole.
#[tokio::test]
async fn an_upstream_that_only_pings_does_not_grow_one_event_without_end() {
    let (upstream, gateway) = setup("{}").await;
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream?q=hi"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(&event(1)).await;
        for _ in 0..100 {
            exchange
                .send_chunk(": ping\n\n".repeat(100).as_bytes())
                .await;
        }
        exchange.send_chunk(&event(2)).await;
        exchange.send_chunk(b"data: [DONE]\n\n").await;
        exchange.end_chunks().await;
    });
    let text = body_text(response).await;
    let events = client_events(&text);
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, [token(1).as_str(), &token(2), "[DONE]"]);
    let pings = text.matches(": ping\n").count();
    assert!(
        (1..=4096 / 7).contains(&pings),
        "{pings} of 10000 pings sent between two events"
    );
}

/// Past the bound on comments nothing of them goes out, and the gateway's heartbeat
/// still comes when due: the upstream's pings, which reach no one now, must not count
/// as the stream's traffic, or a quiet answer behind a pinging upstream would leave
/// the connection silent for a load balancer to cut.
#[tokio::test]
async fn past_the_bound_on_comments_the_heartbeat_still_comes() {
    use http_body_util::BodyExt;
    let upstream = ScriptedUpstream::bind().await;
    let yaml =
        config(&upstream.url(), "{}").replacen("resume: {}", "heartbeat: 1s\n      resume: {}", 1);
    let gateway = start_gateway(&yaml).await;
    let (response, mut exchange) = tokio::join!(get(gateway.addr, "/api/stream?q=hi"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(&event(1)).await;
        exchange
            .send_chunk(": ping\n\n".repeat(700).as_bytes())
            .await;
        exchange
    });
    let mut body = response.into_body();
    let heard = async {
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.unwrap().data_ref() {
                text.push_str(std::str::from_utf8(data).unwrap());
            }
            if text.contains(": keep-alive\n") {
                return text;
            }
        }
        text
    };
    let pinging = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            exchange.send_chunk(b": ping\n\n").await;
        }
    };
    let text = tokio::select! {
        text = heard => text,
        () = pinging => String::from("no heartbeat within 4 s of pings every 100 ms"),
    };
    assert!(text.contains(": keep-alive\n"), "{text:.200}");
}

/// A resumed client gets a heartbeat of its own for the pings that keep the first
/// client's connection busy, which it does not get: no more of them than of the
/// comments the stamper lets through, or an upstream that only pings would grow one
/// event without end at every resumed client too.
#[tokio::test]
async fn a_resumed_client_gets_no_more_heartbeats_than_the_bound_on_comments() {
    let (upstream, gateway) = setup("{}").await;
    let (mut exchange, mut resumed) =
        resumed_after_one_event(&upstream, &gateway, "/api/stream?q=hi").await;
    // Apart, as an upstream pings: pings that come together wake the reader once.
    for _ in 0..1500 {
        exchange.send_chunk(b": ping\n\n").await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    exchange.send_chunk(&event(2)).await;
    let bytes = resumed.bytes_until(b"{\"token\":2}").await;
    let text = String::from_utf8_lossy(&bytes);
    let heartbeats = text.matches(": keep-alive\n").count();
    assert!(
        heartbeats <= 4096 / 7 + 1,
        "{heartbeats} heartbeats for 1500 upstream pings"
    );
}
