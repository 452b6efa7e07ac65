//! Streams that try to outgrow their bounds. See `tests/adversarial.rs`.

use crate::support::*;

/// A replace rule that inserts 90 bytes between every two bytes of an event.
const GROWING_RULE: &str = "    stream:
      max_event_size: 64KiB
      heartbeat: 0
      rules:
        - replace: { pattern: '', with: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', name: grow, scope: data }
      terminator: { data: \"[DONE]\" }
";

#[tokio::test]
async fn a_rule_cannot_make_an_event_larger_than_max_event_size() {
    let upstream = ScriptedUpstream::bind().await;
    let gateway = start_gateway(&one_route_config(&upstream.url(), GROWING_RULE)).await;
    // 60 KiB fits max_event_size as received; the rule would make it about 5.4 MB.
    let event = format!("data: {}\n\n", "a".repeat(60 * 1024));
    let (response, ()) = tokio::join!(get(gateway.addr, "/api/stream"), async {
        let mut exchange = upstream.accept().await;
        exchange.start_sse("").await;
        exchange.send_chunk(b"data: {}\n\n").await;
        exchange.send_chunk(event.as_bytes()).await;
        exchange.send_chunk(b"data: after\n\n").await;
    });
    let text = body_text(response).await;
    assert!(text.len() < 64 * 1024, "{} bytes sent", text.len());
    let events = client_events(&text);
    // The small event fits even rewritten; the large one ends the stream.
    assert!(events[0].data.starts_with('x'), "{text}");
    assert_eq!(events[1].event, "error", "{text}");
    assert!(events[1].data.contains("\"type\":\"oversize\""), "{text}");
    assert!(events[1].data.contains("rule grow"), "{text}");
    assert_eq!(events[2].data, "[DONE]");
    assert_eq!(events.len(), 3, "nothing after the end: {text}");
    gateway
        .metrics_until("the oversize outcome", |m| {
            m.outcome_count("chat", "oversize") == 1.0
        })
        .await;
}
