//! The rewrite pipeline through the public API: rules, terminator, zero copy, canonical output.

mod framing;

use bytes::Bytes;
use framing::{design_pipeline, done_terminator, fixture, pipe_chunks, regex, MAX};
use sse_gateway::rewrite::{Pipeline, Rule, Scope, Terminator, TerminatorMatch, Verdict};
use sse_gateway::sse::{Framer, RawEvent};

fn raw(input: &'static [u8]) -> RawEvent {
    let mut framer = Framer::new(MAX);
    framer.push(Bytes::from_static(input));
    let event = framer.next_event().expect("not oversize");
    event.expect("one complete event")
}

fn apply(pipeline: &Pipeline, input: &'static [u8]) -> (Verdict, Vec<usize>) {
    let mut hits = Vec::new();
    let verdict = pipeline
        .apply(raw(input), &mut |i| hits.push(i))
        .expect("within max_event_size");
    (verdict, hits)
}

fn out(verdict: &Verdict) -> &[u8] {
    verdict.output.as_deref().unwrap_or(b"<dropped>")
}

#[test]
fn blog_case_token_is_repaired() {
    let pipeline = Pipeline::new(vec![Rule::repair_orphan_lines("repair".into())], None);
    let (verdict, hits) = apply(&pipeline, b"data:\n{\"value\":\"Hel\"}\n\n");
    assert_eq!(out(&verdict), b"data:{\"value\":\"Hel\"}\n\n");
    assert_eq!(hits, vec![0]);
    assert!(!verdict.is_terminator);
}

#[test]
fn blog_case_done_is_recognised_after_repair() {
    let pipeline = Pipeline::new(
        vec![Rule::repair_orphan_lines("repair".into())],
        Some(done_terminator()),
    );
    let (verdict, _) = apply(&pipeline, b"data:\n[DONE]\n\n");
    assert!(verdict.is_terminator);
    assert_eq!(out(&verdict), b"data:[DONE]\n\n");
    // Without the rule a client (and the gateway) sees empty data and no terminator.
    let bare = Pipeline::new(vec![], Some(done_terminator()));
    let (verdict, _) = apply(&bare, b"data:\n[DONE]\n\n");
    assert!(!verdict.is_terminator);
    assert_eq!(out(&verdict), b"data:\n[DONE]\n\n");
}

#[test]
fn blog_case_replace_rule_alone_repairs_too() {
    let rule = Rule::replace(
        "join".into(),
        regex(r"(?m)^data:\r?\n"),
        b"data:".to_vec(),
        Scope::Event,
    );
    let pipeline = Pipeline::new(vec![rule], Some(done_terminator()));
    let (verdict, hits) = apply(&pipeline, b"data:\r\n{\"value\":\"Hel\"}\r\n\r\n");
    assert_eq!(out(&verdict), b"data:{\"value\":\"Hel\"}\n\n");
    assert_eq!(hits, vec![0]);
    assert!(apply(&pipeline, b"data:\n[DONE]\n\n").0.is_terminator);
}

#[test]
fn blog_fixture_through_design_pipeline() {
    let piped = pipe_chunks(&design_pipeline(), [&fixture("blog.sse")[..]]);
    assert_eq!(
        String::from_utf8_lossy(&piped.output),
        "data:{\"value\":\"Hel\"}\n\n\
         data:{\"value\":\"lo\"}\n\n\
         data: {\"value\":\"!\"}\n\n\
         data:[DONE]\n\n"
    );
    assert!(piped.terminated && !piped.synthesized);
    // Only the repair rule ran into work: the replace rule found nothing left to join.
    assert_eq!(piped.hits, vec![3, 0, 0, 0]);
}

#[test]
fn untouched_lf_event_is_forwarded_zero_copy() {
    let chunk = Bytes::from_static(b"data: {\"value\":\"x\"}\n\n");
    let mut framer = Framer::new(MAX);
    framer.push(chunk.clone());
    let event = framer.next_event().expect("not oversize").expect("event");
    let verdict = design_pipeline()
        .apply(event, &mut |_| panic!("no rule hit"))
        .expect("within max_event_size");
    let output = verdict.output.expect("forwarded");
    assert_eq!(output, chunk);
    assert_eq!(output.as_ptr(), chunk.as_ptr(), "same bytes, not a copy");
}

#[test]
fn crlf_and_cr_events_are_written_with_lf() {
    let pipeline = Pipeline::new(vec![], None);
    let (verdict, hits) = apply(&pipeline, b"event: a\r\ndata: 1\r\n: c\r\n\r\n");
    assert_eq!(out(&verdict), b"event: a\ndata: 1\n: c\n\n");
    assert!(hits.is_empty(), "canonical re-encoding is not a rule hit");
    assert_eq!(
        out(&apply(&pipeline, b"data: 2\rdata: 3\r\r").0),
        b"data: 2\ndata: 3\n\n"
    );
}

#[test]
fn comment_only_event_passes_through_unchanged() {
    let pipeline = Pipeline::new(
        vec![
            Rule::repair_orphan_lines("r".into()),
            Rule::replace("d".into(), regex("ping"), b"pong".to_vec(), Scope::Data),
        ],
        Some(done_terminator()),
    );
    let (verdict, hits) = apply(&pipeline, b": ping\n\n");
    assert_eq!(out(&verdict), b": ping\n\n");
    assert!(hits.is_empty() && !verdict.is_terminator);
}

#[test]
fn upstream_pings_are_dropped_by_name() {
    let pipeline = design_pipeline();
    let (verdict, hits) = apply(&pipeline, b": ping\n\n");
    assert_eq!(
        verdict,
        Verdict {
            output: None,
            is_terminator: false
        }
    );
    assert_eq!(hits, vec![3]);
    assert_eq!(pipeline.rules()[3].name(), "upstream-pings");
}

#[test]
fn drop_by_data_scope() {
    let rule = Rule::drop("no-usage".into(), regex(r#""usage":"#), Scope::Data);
    let pipeline = Pipeline::new(vec![rule], None);
    assert_eq!(apply(&pipeline, b"data: {\"usage\":1}\n\n").0.output, None);
    assert_eq!(
        out(&apply(&pipeline, b": \"usage\":\n\n").0),
        b": \"usage\":\n\n"
    );
}

#[test]
fn replace_data_scope_keeps_other_fields() {
    let (verdict, hits) = apply(
        &design_pipeline(),
        b"id: 9\r\ndata: {\"text\":\"a\"}\r\nevent: delta\r\n\r\n",
    );
    assert_eq!(
        out(&verdict),
        b"id: 9\ndata: {\"value\":\"a\"}\nevent: delta\n\n"
    );
    assert_eq!(hits, vec![2]);
}

#[test]
fn replace_event_scope_with_group_expansion() {
    let rule = Rule::replace(
        "rename".into(),
        regex(r"(?m)^event: (\w+)$"),
        b"event: llm.$1".to_vec(),
        Scope::Event,
    );
    let pipeline = Pipeline::new(vec![rule], None);
    let (verdict, hits) = apply(&pipeline, b"event: delta\ndata: x\n\n");
    assert_eq!(out(&verdict), b"event: llm.delta\ndata: x\n\n");
    assert_eq!(hits, vec![0]);
}

#[test]
fn rules_with_word_boundaries_apply() {
    let start = Rule::replace(
        "start".into(),
        regex(r"\<foo"),
        b"bar".to_vec(),
        Scope::Event,
    );
    let end = Rule::drop("end".into(), regex(r"secret\>"), Scope::Data);
    let pipeline = Pipeline::new(vec![start, end], None);
    let (verdict, hits) = apply(&pipeline, b"data: foo\n\n");
    assert_eq!(out(&verdict), b"data: bar\n\n");
    assert_eq!(hits, vec![0]);
    assert_eq!(apply(&pipeline, b"data: a secret\n\n").0.output, None);
}

#[test]
fn rewrite_that_leaves_nothing_drops() {
    let rule = Rule::replace("erase".into(), regex("(?s).*"), Vec::new(), Scope::Event);
    let pipeline = Pipeline::new(vec![rule], None);
    let (verdict, hits) = apply(&pipeline, b"data: x\n\n");
    assert_eq!(verdict.output, None);
    assert_eq!(hits, vec![0]);
}

#[test]
fn rules_run_in_order_and_each_hit_is_reported_once() {
    let rules = vec![
        Rule::replace("a".into(), regex("a"), b"b".to_vec(), Scope::Data),
        Rule::replace("b".into(), regex("b"), b"c".to_vec(), Scope::Data),
        Rule::replace("z".into(), regex("z"), b"y".to_vec(), Scope::Data),
    ];
    let pipeline = Pipeline::new(rules, None);
    let (verdict, hits) = apply(&pipeline, b"data: aab\n\n");
    assert_eq!(out(&verdict), b"data: ccc\n\n");
    assert_eq!(hits, vec![0, 1]);
}

#[test]
fn terminator_forwarded() {
    let (verdict, _) = apply(&design_pipeline(), b"data: [DONE]\n\n");
    assert_eq!(
        verdict,
        Verdict {
            output: Some(Bytes::from_static(b"data: [DONE]\n\n")),
            is_terminator: true
        }
    );
}

#[test]
fn terminator_not_forwarded() {
    let terminator = Terminator {
        forward: false,
        ..done_terminator()
    };
    let pipeline = Pipeline::new(vec![], Some(terminator));
    let (verdict, _) = apply(&pipeline, b"data: [DONE]\n\n");
    assert_eq!(
        verdict,
        Verdict {
            output: None,
            is_terminator: true
        }
    );
    assert_eq!(pipeline.synthesized_terminator(), None);
}

#[test]
fn terminator_by_event_type() {
    let terminator = Terminator {
        matcher: TerminatorMatch::Event(Bytes::from_static(b"done")),
        forward: true,
        synthesize_on_eof: true,
    };
    let pipeline = Pipeline::new(vec![], Some(terminator));
    assert!(
        apply(&pipeline, b"event: done\ndata: {}\n\n")
            .0
            .is_terminator
    );
    assert!(
        !apply(&pipeline, b"event: delta\ndata: {}\n\n")
            .0
            .is_terminator
    );
    assert_eq!(
        pipeline.synthesized_terminator(),
        Some(Bytes::from_static(b"event: done\ndata:\n\n"))
    );
}

#[test]
fn terminator_is_checked_after_rules() {
    let rule = Rule::replace(
        "fin".into(),
        regex("^finished$"),
        b"[DONE]".to_vec(),
        Scope::Data,
    );
    let pipeline = Pipeline::new(vec![rule], Some(done_terminator()));
    let (verdict, _) = apply(&pipeline, b"data: finished\n\n");
    assert!(verdict.is_terminator);
    assert_eq!(out(&verdict), b"data: [DONE]\n\n");
}

#[test]
fn synthesized_terminator_at_eof() {
    let pipeline = design_pipeline();
    assert_eq!(
        pipeline.synthesized_terminator(),
        Some(Bytes::from_static(b"data: [DONE]\n\n"))
    );
    let piped = pipe_chunks(&pipeline, [&b"data: {\"text\":\"a\"}\n\n"[..]]);
    assert!(piped.synthesized);
    assert_eq!(piped.output, b"data: {\"value\":\"a\"}\n\ndata: [DONE]\n\n");
    let off = Pipeline::new(
        vec![],
        Some(Terminator {
            synthesize_on_eof: false,
            ..done_terminator()
        }),
    );
    assert_eq!(off.synthesized_terminator(), None);
    assert_eq!(Pipeline::new(vec![], None).synthesized_terminator(), None);
}

#[test]
fn done_tail_without_blank_line_still_ends_the_stream() {
    let piped = pipe_chunks(&design_pipeline(), [&fixture("tail.sse")[..]]);
    assert!(piped.terminated && !piped.synthesized);
    assert_eq!(piped.output, b"data: {\"value\":\"a\"}\n\ndata: [DONE]\n\n");
}

#[test]
fn stream_stops_at_terminator_even_if_upstream_continues() {
    let piped = pipe_chunks(&design_pipeline(), [&b"data: [DONE]\n\ndata: late\n\n"[..]]);
    assert!(piped.terminated);
    assert_eq!(piped.output, b"data: [DONE]\n\n");
}

#[test]
fn openai_fixture_rewritten_by_design_pipeline() {
    let piped = pipe_chunks(&design_pipeline(), [&fixture("openai.sse")[..]]);
    let text = String::from_utf8(piped.output).expect("utf-8");
    assert_eq!(text.matches("\"value\":").count(), 5);
    assert!(!text.contains("\"text\":"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(piped.hits, vec![0, 0, 5, 0]);
}

#[test]
fn pings_fixture_through_design_pipeline() {
    let piped = pipe_chunks(&design_pipeline(), [&fixture("pings.sse")[..]]);
    assert_eq!(
        String::from_utf8_lossy(&piped.output),
        "data: {\"value\":\"a\"}\n\n\
         data: {\"value\":\"b\"}\n: trailing comment inside the event\n\n\
         data: [DONE]\n\n"
    );
    assert_eq!(piped.hits, vec![0, 0, 2, 4]);
}

#[test]
fn event_scope_sees_lf_text_without_blank_line() {
    let rule = Rule::drop("exact".into(), regex(r"\A: ping\n\z"), Scope::Event);
    let pipeline = Pipeline::new(vec![rule], None);
    assert_eq!(apply(&pipeline, b": ping\r\n\r\n").0.output, None);
    assert_eq!(apply(&pipeline, b": ping\r\r").0.output, None);
    assert_eq!(apply(&pipeline, b": ping\n\n").0.output, None);
    assert!(apply(&pipeline, b": ping\n: pong\n\n").0.output.is_some());
}

#[test]
fn data_scope_sees_joined_payload() {
    let rule = Rule::replace("join".into(), regex("a\nb"), b"ab".to_vec(), Scope::Data);
    let pipeline = Pipeline::new(vec![rule], None);
    let (verdict, hits) = apply(&pipeline, b"data: a\ndata: b\n\n");
    assert_eq!(out(&verdict), b"data: ab\n\n");
    assert_eq!(hits, vec![0]);
}

#[test]
fn pipeline_and_framer_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pipeline>();
    send_sync::<Framer>();
    send_sync::<RawEvent>();
}
