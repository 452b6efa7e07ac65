//! The engine on its own: frames, endings and progress, with no body around it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use regex::bytes::Regex;

use super::{Engine, Outcome, Stop, StreamError};
use crate::rewrite::{Pipeline, Rule, Scope, Terminator, TerminatorMatch};

/// Repair, drop `: ping` comments, and a forwarded, synthesized `[DONE]`.
fn engine() -> Engine {
    let rules = vec![
        Rule::repair_orphan_lines("repair".into()),
        Rule::drop("pings".into(), Regex::new("^:").unwrap(), Scope::Event),
    ];
    let done = Terminator {
        matcher: TerminatorMatch::Data(Bytes::from_static(b"[DONE]")),
        forward: true,
        synthesize_on_eof: true,
    };
    Engine::new(
        Arc::new(Pipeline::new(rules, Some(done))),
        64,
        "chat".into(),
    )
}

/// Every frame the engine has now, concatenated.
fn drain(engine: &mut Engine) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(frame) = engine.next_frame() {
        out.extend_from_slice(&frame);
    }
    out
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

#[test]
fn untouched_events_of_one_read_leave_as_one_slice_of_it() {
    let mut engine = engine();
    let read = Bytes::from_static(b"data: a\n\ndata: b\n\ndata: c");
    engine.push(read.clone());
    let frame = engine.next_frame().expect("a frame");
    assert_eq!(frame, read.slice(..18));
    assert_eq!(frame.as_ptr(), read.as_ptr(), "sliced, not copied");
    assert_eq!(engine.next_frame(), None, "the partial event waits");
    let progress = engine.take_progress();
    assert_eq!((progress.events_in, progress.events_out), (2, 2));
    assert!(progress.content_seen && progress.first_data_event);
    assert_eq!(engine.outcome(), None);
}

#[test]
fn a_read_is_let_go_once_its_events_are_taken_and_polls_without_input_find_nothing() {
    let upper = Rule::replace(
        "upper".into(),
        Regex::new("b").unwrap(),
        b"B".to_vec(),
        Scope::Data,
    );
    let mut engine = Engine::new(
        Arc::new(Pipeline::new(vec![upper], None)),
        64,
        "chat".into(),
    );
    let read = Bytes::from(b"data: a\n\ndata: b\n\n".to_vec());
    engine.push(read.clone());
    // The rewritten event cannot join the untouched one: the run stops with the read
    // wholly framed, and the frame that follows is queued.
    assert_eq!(text(&engine.next_frame().expect("a frame")), "data: a\n\n");
    assert!(
        read.is_unique(),
        "the engine keeps no slice of a read it has framed"
    );
    assert_eq!(
        text(&engine.next_frame().expect("the queued frame")),
        "data: B\n\n"
    );
    for _ in 0..3 {
        assert_eq!(engine.next_frame(), None, "nothing until the next read");
    }
    assert_eq!(engine.take_progress().events_in, 2);
    assert!(!engine.has_progress(), "no read, no progress");
    engine.push(Bytes::from_static(b"data: c\n\n"));
    assert_eq!(
        text(&engine.next_frame().expect("the next read")),
        "data: c\n\n"
    );
    assert!(engine.has_progress());
}

#[test]
fn tracked_ends_are_the_events_of_a_read_and_only_of_one() {
    let mut engine = engine();
    engine.track_event_ends();
    // A ping is dropped, so `c` starts a new frame; `d` straddles two reads.
    engine.push(Bytes::from_static(
        b"data: a\n\nevent: x\ndata: bb\n\n: ping\n\ndata: c\n\ndata: d",
    ));
    let frame = engine.next_frame().expect("a frame");
    assert_eq!(text(&frame), "data: a\n\nevent: x\ndata: bb\n\n");
    assert_eq!(engine.event_ends(), Some(&[9_u32, 28][..]));
    let frame = engine.next_frame().expect("the event after the gap");
    assert_eq!(text(&frame), "data: c\n\n");
    assert_eq!(
        engine.event_ends(),
        None,
        "queued behind the gap: not vouched for"
    );
    engine.push(Bytes::from_static(b"\n\n"));
    let frame = engine.next_frame().expect("the straddling event");
    assert_eq!(text(&frame), "data: d\n\n");
    assert_eq!(
        engine.event_ends(),
        None,
        "copied from two reads: not vouched for"
    );
    assert_eq!(engine.next_frame(), None);
    assert_eq!(engine.event_ends(), None);
}

#[test]
fn the_terminator_ends_the_stream_and_nothing_after_it_is_sent() {
    let mut engine = engine();
    engine.push(Bytes::from_static(
        b"data: a\n\ndata: [DONE]\n\ndata: late\n\n",
    ));
    assert_eq!(text(&drain(&mut engine)), "data: a\n\ndata: [DONE]\n\n");
    assert_eq!(engine.outcome(), Some(Outcome::Terminator));
    assert!(engine.is_finished());
    // Later input and verdicts change nothing.
    engine.push(Bytes::from_static(b"data: more\n\n"));
    engine.upstream_end();
    engine.stop(Stop::Shutdown);
    assert_eq!(drain(&mut engine), b"");
    assert_eq!(engine.outcome(), Some(Outcome::Terminator));
}

#[test]
fn a_clean_end_completes_the_tail_and_synthesizes_the_terminator() {
    let mut engine = engine();
    engine.push(Bytes::from_static(b"data: a\n\ndata: b"));
    assert_eq!(text(&drain(&mut engine)), "data: a\n\n");
    engine.upstream_end();
    assert_eq!(text(&drain(&mut engine)), "data: b\n\ndata: [DONE]\n\n");
    assert_eq!(engine.outcome(), Some(Outcome::UpstreamEof));
}

#[test]
fn a_tail_that_is_the_terminator_is_not_doubled() {
    let mut engine = engine();
    engine.push(Bytes::from_static(b"data: [DONE]"));
    engine.upstream_end();
    assert_eq!(text(&drain(&mut engine)), "data: [DONE]\n\n");
    assert_eq!(engine.outcome(), Some(Outcome::Terminator));
}

#[test]
fn a_failure_drops_the_partial_event_and_sends_an_error_then_the_terminator() {
    let mut engine = engine();
    engine.push(Bytes::from_static(b"data: a\n\ndata: half"));
    drain(&mut engine);
    engine.upstream_failure(&"connection reset");
    let out = drain(&mut engine);
    let out = text(&out);
    assert!(out.starts_with("event: error\ndata: {\"error\":{\"type\":\"upstream_error\""));
    assert!(out.contains("upstream failed mid-stream: connection reset"));
    assert!(out.contains("\"route\":\"chat\""));
    assert!(out.ends_with("\n\ndata: [DONE]\n\n"));
    assert!(!out.contains("half"));
    assert_eq!(engine.outcome(), Some(Outcome::UpstreamError));
}

#[test]
fn verdicts_end_the_stream_with_their_outcome_and_error_type() {
    let cases = [
        (
            Stop::IdleTimeout {
                after: Duration::from_secs(5),
            },
            Outcome::IdleTimeout,
            "\"type\":\"upstream_idle_timeout\"",
        ),
        (
            Stop::MaxDuration {
                limit: Duration::from_secs(60),
            },
            Outcome::MaxDuration,
            "\"type\":\"max_duration\"",
        ),
        (Stop::Shutdown, Outcome::Shutdown, "\"type\":\"shutdown\""),
    ];
    for (stop, outcome, error_type) in cases {
        let mut engine = engine();
        engine.push(Bytes::from_static(b"data: a\n\n"));
        assert_eq!(text(&drain(&mut engine)), "data: a\n\n");
        engine.stop(stop);
        // The first decision stands.
        engine.upstream_end();
        let out = drain(&mut engine);
        let out = text(&out);
        assert!(out.contains(error_type), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        assert_eq!(engine.outcome(), Some(outcome));
    }
}

#[test]
fn an_oversize_event_ends_the_stream() {
    let mut engine = engine();
    engine.push(Bytes::from(format!("data: {}\n\n", "x".repeat(100))));
    let out = drain(&mut engine);
    assert!(text(&out).contains("\"type\":\"oversize\""));
    assert_eq!(engine.outcome(), Some(Outcome::Oversize));
}

#[test]
fn progress_counts_hits_and_data_but_pings_are_not_data() {
    let mut engine = engine();
    engine.push(Bytes::from_static(b": ping\n\n"));
    assert_eq!(drain(&mut engine), b"");
    let progress = engine.take_progress();
    assert!(!progress.content_seen && !progress.first_data_event);
    assert_eq!((progress.events_in, progress.events_out), (1, 0));
    assert_eq!(progress.rules_hit, 1);
    let mut hits = Vec::new();
    engine.take_rule_hits(|rule, n| hits.push((rule, n)));
    assert_eq!(hits, [(1, 1)]);

    engine.push(Bytes::from_static(b"data:\n{\"v\":1}\n\n"));
    assert_eq!(text(&drain(&mut engine)), "data:{\"v\":1}\n\n");
    let progress = engine.take_progress();
    assert!(progress.content_seen && progress.first_data_event);
    engine.push(Bytes::from_static(b"data: b\n\n"));
    drain(&mut engine);
    assert!(!engine.take_progress().first_data_event, "only the first");
}

#[test]
fn stream_error_types_are_distinct() {
    let names: std::collections::BTreeSet<&str> =
        StreamError::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(names.len(), StreamError::ALL.len());
}

#[test]
fn content_events_are_what_the_protocol_calls_content() {
    use crate::protocol::{Contract, Protocol};
    let pipeline =
        Pipeline::new(Vec::new(), None).with_contract(Contract::preset(Protocol::OpenaiChat));
    let mut engine = Engine::new(Arc::new(pipeline), 1024, "chat".into());
    let chunk = |delta: &str| {
        Bytes::from(format!(
            "data: {{\"choices\":[{{\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
        ))
    };
    engine.push(chunk(r#"{"role":"assistant","content":""}"#));
    drain(&mut engine);
    let progress = engine.take_progress();
    assert!(progress.first_data_event, "a data event all the same");
    assert_eq!(progress.content_events, 0);
    assert!(!progress.first_content_event && !engine.has_sent_output());

    engine.push(chunk(r#"{"content":"Hel"}"#));
    engine.push(chunk(r#"{"content":"lo"}"#));
    drain(&mut engine);
    let progress = engine.take_progress();
    assert_eq!(progress.content_events, 2);
    assert!(progress.first_content_event && engine.has_sent_output());

    engine.push(chunk(r#"{"content":"!"}"#));
    drain(&mut engine);
    let progress = engine.take_progress();
    assert_eq!(progress.content_events, 1);
    assert!(!progress.first_content_event, "only the first");
}
