//! OpenTelemetry traces through the real proxy to a real OTLP/HTTP receiver on
//! loopback (a hyper server that decodes the protobuf): one server span per stream that
//! lasts until the stream's end, with its attributes and events; a client span for the
//! upstream request whose `traceparent` the upstream receives; the client's trace id
//! continued; and a collector that is down never holds a stream up.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A receiver that accepts `POST /v1/traces` and hands on every span it decodes.
async fn receiver() -> (SocketAddr, mpsc::UnboundedReceiver<(String, Span)>) {
    receiver_after(Duration::ZERO).await
}

/// [`receiver`], taking `delay` before it reads each export (a collector under load).
async fn receiver_after(delay: Duration) -> (SocketAddr, mpsc::UnboundedReceiver<(String, Span)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (spans, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let spans = spans.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let spans = spans.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    assert_eq!(request.uri().path(), "/v1/traces");
                    assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                    let service_key = request
                        .headers()
                        .get("x-api-key")
                        .map(|v| v.to_str().unwrap().to_owned());
                    assert_eq!(service_key.as_deref(), Some("secret"));
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for resource in export.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref()?.value.clone());
                        let Some(Value::StringValue(service)) = service else {
                            panic!("a service.name");
                        };
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                let _ = spans.send((service.clone(), span));
                            }
                        }
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, received)
}

/// The `chat` route on `openai-chat` with `usage: request` and `stream_extra` keys,
/// traced to `otlp_base`.
fn config(upstream_url: &str, otlp_base: &str, stream_extra: &str) -> String {
    format!(
        "{}    stream:\n      protocol: openai-chat\n      usage: request\n{stream_extra}telemetry:
  otlp: {{ endpoint: \"{otlp_base}\", service_name: gateway-under-test, headers: {{ x-api-key: secret }} }}
",
        one_route_config(upstream_url, "")
    )
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(Value::IntValue(value)) => *value,
        other => panic!("{key} is {other:?}"),
    }
}

fn string<'a>(span: &'a Span, key: &str) -> &'a str {
    match attribute(span, key) {
        Some(Value::StringValue(value)) => value,
        other => panic!("{key} is {other:?}"),
    }
}

/// The upstream's next exchange, started with one Chat Completions content chunk.
async fn first_token(upstream: &ScriptedUpstream) -> Exchange {
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange
        .send_chunk(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n",
        )
        .await;
    exchange
}

/// The next server span `spans` receives (client spans are skipped); `what` names it
/// in the failure.
async fn server_span(spans: &mut mpsc::UnboundedReceiver<(String, Span)>, what: &str) -> Span {
    loop {
        let (_, span) = tokio::time::timeout(LIVENESS, spans.recv())
            .await
            .expect(what)
            .unwrap();
        if span.kind == SpanKind::Server as i32 {
            return span;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

#[tokio::test]
async fn one_server_span_per_stream_lasting_until_its_end_continuing_the_clients_trace() {
    let (otlp, mut spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), &format!("http://{otlp}"), "")).await;
    let capture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/usage/openai-chat.sse"
    ))
    .unwrap();
    let events: Vec<&str> = capture.split_inclusive("\n\n").collect();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_parent = "00f067aa0ba902b7";
    let request = Request::post("/api/stream")
        .header("host", gateway.addr.to_string())
        .header("traceparent", format!("00-{trace_id}-{client_parent}-01"))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[],"stream":true}"#,
        )))
        .unwrap();
    // The stream stays open this long between its first token and its end.
    let open_for = Duration::from_millis(600);
    let (response, traceparent) = tokio::join!(send(gateway.addr, request), async {
        let mut exchange = upstream.accept().await;
        let traceparent = exchange.request.header("traceparent").unwrap().to_owned();
        assert_eq!(
            exchange.request.header("tracestate"),
            None,
            "no empty tracestate goes up"
        );
        exchange.start_sse("").await;
        exchange.send_chunk(events[..2].concat().as_bytes()).await;
        tokio::time::sleep(open_for).await;
        exchange.send_chunk(events[2..].concat().as_bytes()).await;
        exchange.end_chunks().await;
        traceparent
    });
    let text = body_text(response).await;
    assert!(text.ends_with("data: [DONE]\n\n"));

    // The upstream got the same trace, under a span of the gateway's own.
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id);
    assert_ne!(parts[2], client_parent);
    assert_eq!(parts[3], "01");

    let mut server = Vec::new();
    let mut client = Vec::new();
    while server.is_empty() || client.is_empty() {
        let (service, span) = tokio::time::timeout(LIVENESS, spans.recv())
            .await
            .expect("spans arrive")
            .unwrap();
        assert_eq!(service, "gateway-under-test");
        match SpanKind::try_from(span.kind) {
            Ok(SpanKind::Server) => server.push(span),
            Ok(SpanKind::Client) => client.push(span),
            other => panic!("unexpected span kind {other:?}"),
        }
    }
    // Nothing else arrives for this one request.
    let more = tokio::time::timeout(Duration::from_millis(300), spans.recv()).await;
    assert!(
        more.is_err(),
        "one server span and one client span only: {more:?}"
    );
    let (server, client) = (&server[0], &client[0]);
    assert_eq!(hex(&server.trace_id), trace_id);
    assert_eq!(
        hex(&server.parent_span_id),
        client_parent,
        "the client's span is the parent"
    );
    assert_eq!(hex(&client.trace_id), trace_id);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(
        hex(&client.span_id),
        parts[2],
        "the upstream's parent is the client span"
    );

    let lasted = Duration::from_nanos(server.end_time_unix_nano - server.start_time_unix_nano);
    assert!(lasted >= open_for, "the span covers the stream: {lasted:?}");
    assert_eq!(server.name, "POST chat");
    assert_eq!(string(server, "sse_gateway.route"), "chat");
    assert_eq!(string(server, "sse_gateway.upstream"), "assistant");
    assert_eq!(string(server, "sse_gateway.outcome"), "terminator");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert_eq!(
        int(server, "sse_gateway.events"),
        4,
        "the usage chunk was the gateway's"
    );
    assert_eq!(
        int(server, "sse_gateway.bytes"),
        i64::try_from(text.len()).unwrap()
    );
    assert_eq!(int(server, "sse_gateway.rules_hit"), 0);
    assert_eq!(int(server, "gen_ai.usage.input_tokens"), 9);
    assert_eq!(int(server, "gen_ai.usage.output_tokens"), 2);
    let Some(Value::ArrayValue(reasons)) = attribute(server, "gen_ai.response.finish_reasons")
    else {
        panic!("the finish reasons");
    };
    let reasons: Vec<_> = reasons.values.iter().map(|v| v.value.as_ref()).collect();
    assert_eq!(reasons, [Some(&Value::StringValue("stop".into()))]);
    let Some(Value::DoubleValue(ttfc)) = attribute(server, "gen_ai.response.time_to_first_chunk")
    else {
        panic!("a time to first chunk");
    };
    assert!(*ttfc < lasted.as_secs_f64());
    let request_id = string(server, "sse_gateway.request_id");
    assert_eq!(request_id.len(), 32);
    let names: Vec<&str> = server.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["terminator"]);
    assert_eq!(int(client, "http.response.status_code"), 200);
    assert_eq!(
        string(client, "url.full"),
        format!("{}/api/stream", upstream.url())
    );
    assert_eq!(client.name, "POST assistant");
}

#[tokio::test]
async fn a_collector_that_is_down_never_holds_a_stream_and_its_spans_are_counted() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), &format!("http://{closed}"), "")).await;
    for _ in 0..3 {
        let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
            let mut exchange = upstream.accept().await;
            exchange.start_sse("").await;
            exchange
                .send_chunk(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
                .await;
        });
        assert!(body_text(response).await.ends_with("data: [DONE]\n\n"));
    }
    let metrics = gateway
        .metrics_until("the failed exports are counted", |m| {
            m.get(
                "sse_gateway_trace_spans_dropped_total",
                &[("reason", "export_failed")],
            ) >= 6.0
        })
        .await;
    assert_eq!(
        metrics.get(
            "sse_gateway_trace_spans_dropped_total",
            &[("reason", "queue_full")]
        ),
        0.0
    );
}

#[tokio::test]
async fn a_reload_with_another_endpoint_sends_new_streams_there_and_stalls_are_span_events() {
    let (first, mut first_spans) = receiver().await;
    let (second, mut second_spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), &format!("http://{first}"), "")).await;
    let reloaded = config(
        &upstream.url(),
        &format!("http://{second}"),
        "      stuck_after: 100ms\n",
    );
    gateway.reload(&reloaded).await;

    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = first_token(&upstream).await;
        // Long past stuck_after: the stream is stuck, then data unsticks it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        exchange
            .send_chunk(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
            .await;
    });
    assert!(body_text(response).await.ends_with("data: [DONE]\n\n"));
    let server = server_span(&mut second_spans, "spans reach the new endpoint").await;
    let names: Vec<&str> = server.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["stuck", "unstuck", "terminator"]);
    assert!(
        first_spans.try_recv().is_err(),
        "nothing went to the old endpoint"
    );
}

#[tokio::test]
async fn a_resume_is_a_span_event_on_the_request_that_resumed() {
    use support::raw_client::Client;
    let (otlp, mut spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let config = format!(
        "{}    stream:\n      terminator: {{ data: \"[DONE]\" }}\n      resume: {{ window: 10s }}\ntelemetry:
  otlp: {{ endpoint: \"http://{otlp}\", service_name: gateway-under-test, headers: {{ x-api-key: secret }} }}
",
        one_route_config(&upstream.url(), "")
    );
    let gateway = start_gateway(&config).await;
    let bearer = ("authorization", "Bearer user-1");
    let mut first = Client::open(gateway.addr, "/api/stream", &[bearer]).await;
    let mut exchange = upstream.accept().await;
    exchange.start_sse("").await;
    exchange.send_chunk(b"data: a\n\n").await;
    let seen = first.take(1).await;
    let id = seen[0].id.clone().expect("an id");
    drop(first);
    gateway
        .metrics_until("the stream detached", |m| {
            m.route_value("sse_gateway_streams_detached", "chat") == 1.0
        })
        .await;
    let mut resumed = Client::open(
        gateway.addr,
        "/api/stream",
        &[bearer, ("last-event-id", &id)],
    )
    .await;
    exchange.send_chunk(b"data: b\n\ndata: [DONE]\n\n").await;
    exchange.end_chunks().await;
    let rest: Vec<String> = resumed.rest().await.into_iter().map(|e| e.data).collect();
    assert_eq!(rest, ["b", "[DONE]"]);

    // Two server spans: the first request's, and the resume's with its event.
    let mut resume_events = Vec::new();
    let mut servers = 0;
    while servers < 2 {
        let (_, span) = tokio::time::timeout(LIVENESS, spans.recv())
            .await
            .expect("both requests' spans arrive")
            .unwrap();
        if span.kind != SpanKind::Server as i32 {
            continue;
        }
        servers += 1;
        resume_events.extend(span.events.into_iter().filter(|e| e.name == "resume"));
    }
    assert_eq!(
        resume_events.len(),
        1,
        "one resume event, on the resume's span"
    );
    let after = resume_events[0]
        .attributes
        .iter()
        .find(|kv| kv.key == "sse_gateway.resume.after_event")
        .and_then(|kv| kv.value.as_ref()?.value.clone());
    assert_eq!(after, Some(Value::IntValue(1)));
}

#[tokio::test]
async fn a_stop_exports_the_spans_of_the_streams_the_drain_ended() {
    let (otlp, mut spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), &format!("http://{otlp}"), "")).await;
    let (response, exchange) =
        tokio::join!(get(gateway.addr, "/api/stream"), first_token(&upstream));
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: "), "the stream is open");
    // The upstream never finishes: the drain time (1 s) ends the stream. Nothing
    // scraped /metrics, so the stop waits for no final scrape.
    let stopped = tokio::time::Instant::now();
    gateway.shutdown().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    // Exported before the stop returned, not after.
    let mut outcomes = Vec::new();
    while let Ok((_, span)) = spans.try_recv() {
        if span.kind == SpanKind::Server as i32 {
            outcomes.push(string(&span, "sse_gateway.outcome").to_owned());
        }
    }
    assert_eq!(
        outcomes,
        ["truncated"],
        "the drained stream's span, at once"
    );
    drop(exchange);
}

/// The client gives up while the gateway still waits for the upstream's headers: no
/// response was sent, so the span has no status, and it is no 200.
#[tokio::test]
async fn a_client_that_left_before_the_headers_has_no_status_on_its_span() {
    let (otlp, mut spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(&upstream.url(), &format!("http://{otlp}"), "")).await;
    let request = Request::post("/api/stream")
        .header("host", gateway.addr.to_string())
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[],"stream":true}"#,
        )))
        .unwrap();
    let ((), _silent) = tokio::join!(
        async {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(300), send(gateway.addr, request)).await;
            assert!(gave_up.is_err(), "the upstream never answered");
        },
        upstream.accept()
    );
    let server = server_span(&mut spans, "the server span").await;
    assert_eq!(attribute(&server, "http.response.status_code"), None);
    assert_eq!(string(&server, "sse_gateway.outcome"), "client_gone");
}

/// The first endpoint refuses connections and the request is retried on the second:
/// the client span names the endpoint that answered.
#[tokio::test]
async fn the_client_span_names_the_endpoint_that_answered() {
    let (otlp, mut spans) = receiver().await;
    let refused = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let b = ScriptedUpstream::bind().await;
    let yaml = format!(
        "upstreams:\n  assistant:\n    header_timeout: 1s\n    endpoints:\n      - {{ name: a, url: \"{refused}\" }}\n      - {{ name: b, url: \"{}\" }}\n\
         routes:\n  - name: chat\n    match: {{ path_prefix: /api/stream }}\n    upstream: assistant\n\
         \x20   stream: {{ protocol: openai-chat }}\n    retry: {{}}\n\
         telemetry:\n  otlp: {{ endpoint: \"http://{otlp}\", service_name: gateway-under-test, headers: {{ x-api-key: secret }} }}\n",
        b.url()
    );
    let gateway = start_gateway(&yaml).await;
    let (response, _) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = b.accept().await;
        exchange.start_sse("").await;
        exchange
            .send_chunk(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
            .await;
        exchange.end_chunks().await;
        exchange
    });
    assert!(body_text(response).await.ends_with("data: [DONE]\n\n"));
    let client = loop {
        let (_, span) = tokio::time::timeout(LIVENESS, spans.recv())
            .await
            .expect("the client span")
            .unwrap();
        if span.kind == SpanKind::Client as i32 {
            break span;
        }
    };
    let url = string(&client, "url.full");
    assert_eq!(url, format!("{}/api/stream", b.url()));
    assert_eq!(int(&client, "http.response.status_code"), 200);
}

/// A stream that was stuck and then ended by its idle timeout never got data again:
/// its span has no `unstuck` event saying it did.
#[tokio::test]
async fn a_stream_that_ends_stuck_has_no_unstuck_event() {
    let (otlp, mut spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&config(
        &upstream.url(),
        &format!("http://{otlp}"),
        "      stuck_after: 100ms\n      idle_timeout: 600ms\n",
    ))
    .await;
    let (response, _exchange) =
        tokio::join!(get(gateway.addr, "/api/stream"), first_token(&upstream));
    let _ = body_text(response).await;
    let server = server_span(&mut spans, "spans arrive").await;
    let names: Vec<&str> = server.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["stuck", "error_event"]);
}

/// Answers the gateway writes with no body to send (a CORS preflight's 204, any answer
/// to HEAD) are complete once their head is out: hyper never polls their bodies, and
/// they were counted as clients gone.
#[tokio::test]
async fn a_preflight_and_an_answer_to_head_end_completed() {
    let (otlp, mut spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let yaml = format!(
        "{}telemetry:\n  otlp: {{ endpoint: \"http://{otlp}\", service_name: gateway-under-test, headers: {{ x-api-key: secret }} }}\n",
        one_route_config(
            &upstream.url(),
            "    cors: { allow_origins: [\"http://localhost:3000\"] }\n"
        )
    );
    let gateway = start_gateway(&yaml).await;
    let preflight = Request::options("/api/stream")
        .header("host", "gw")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let head = Request::head("/nothing-here")
        .header("host", "gw")
        .body(Full::new(Bytes::new()))
        .unwrap();
    for (request, status) in [(preflight, 204), (head, 404)] {
        let response = send(gateway.addr, request).await;
        assert_eq!(response.status().as_u16(), status);
        body_text(response).await;
        let server = server_span(&mut spans, "the request's span").await;
        assert_eq!(int(&server, "http.response.status_code"), i64::from(status));
        assert_eq!(string(&server, "sse_gateway.outcome"), "completed");
    }
}

/// A request refused while its body was read for the upstream (413 here, under
/// `stream.usage: request`) never went upstream: its trace has no client span.
#[tokio::test]
async fn a_request_refused_before_it_went_upstream_has_no_client_span() {
    let (otlp, mut spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let yaml = config(&upstream.url(), &format!("http://{otlp}"), "").replace(
        "    stream:\n",
        "    request: { max_body_size: 64B }\n    stream:\n",
    );
    let gateway = start_gateway(&yaml).await;
    let body = format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(200)
    );
    // Chunked: the size is known only as the body is read.
    let request = format!(
        "POST /api/stream HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let mut tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut tcp, b"\r\n\r\n").await;
    assert!(head.starts_with(b"HTTP/1.1 413"), "{head:?}");
    // Every span of the request, whichever comes first: until the server span, then
    // until none comes for a while.
    let mut kinds = Vec::new();
    while !kinds.contains(&(SpanKind::Server as i32)) {
        let (_, span) = tokio::time::timeout(LIVENESS, spans.recv())
            .await
            .expect("the server span")
            .unwrap();
        kinds.push(span.kind);
    }
    while let Ok(Some((_, span))) =
        tokio::time::timeout(Duration::from_millis(300), spans.recv()).await
    {
        kinds.push(span.kind);
    }
    assert_eq!(
        kinds,
        [SpanKind::Server as i32],
        "one server span, no client span"
    );
    assert!(!upstream.connection_within(Duration::from_millis(100)).await);
}

/// A reload points traces at another collector while a stream opened before it still
/// runs on the first exporter: the stop waits for that stream's span too.
#[tokio::test]
async fn a_stop_after_a_reload_waits_for_the_spans_of_the_exporter_before_it() {
    let (first, mut first_spans) = receiver_after(Duration::from_millis(500)).await;
    let (second, _second_spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let traced_to = |otlp: SocketAddr| config(&upstream.url(), &format!("http://{otlp}"), "");
    let gateway = start_gateway(&traced_to(first)).await;
    let (response, _exchange) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange
            .send_chunk(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n")
            .await;
        exchange
    });
    let mut body = response.into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(frame.starts_with(b"data: "), "the stream is open");
    gateway.reload(&traced_to(second)).await;
    gateway.shutdown().await;
    let mut server_spans = 0;
    while let Ok((_, span)) = first_spans.try_recv() {
        server_spans += usize::from(span.kind == SpanKind::Server as i32);
    }
    assert_eq!(
        server_spans, 1,
        "the drained stream's span reached its collector"
    );
}

/// A reload that would trace to another collector but is refused once its exporter is
/// built (an upstream's CA file that lost its certificate between validation and
/// apply) changes nothing: new streams trace to the collector in force, nothing
/// goes to the other, and the stop still exports their spans.
#[tokio::test]
async fn a_reload_refused_after_its_exporter_was_built_keeps_the_exporter_in_force() {
    let (first, mut first_spans) = receiver().await;
    let (second, mut second_spans) = receiver().await;
    let upstream = ScriptedUpstream::bind().await;
    let traced_to = |otlp: SocketAddr| config(&upstream.url(), &format!("http://{otlp}"), "");
    let gateway = start_gateway(&traced_to(first)).await;
    let ca = std::env::temp_dir().join(format!("sse-gateway-not-a-ca-{}", std::process::id()));
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let private = format!(
        "upstreams:\n  private:\n    url: https://127.0.0.1:1\n    tls: {{ ca_file: \"{}\" }}\n",
        ca.display()
    );
    let refused = traced_to(second).replacen("upstreams:\n", &private, 1);
    let refused = sse_gateway::config::GatewayConfig::parse(&refused, "reload.yaml", &|_| None)
        .expect("the file passes validation");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let error = gateway.gateway().apply(refused).await.unwrap_err();
    std::fs::remove_file(&ca).unwrap();
    assert!(error.to_string().contains("no PEM certificate"), "{error}");

    let (response, mut exchange) =
        tokio::join!(get(gateway.addr, "/api/stream"), first_token(&upstream));
    exchange
        .send_chunk(
            b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        )
        .await;
    assert!(body_text(response).await.ends_with("data: [DONE]\n\n"));
    server_span(&mut first_spans, "the span reaches the collector in force").await;
    gateway.shutdown().await;
    assert!(
        second_spans.try_recv().is_err(),
        "nothing went to the refused config's collector"
    );
}
