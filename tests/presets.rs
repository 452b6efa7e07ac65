//! The protocol presets through the stream engine: clean answers, the orphan-line flaw,
//! any chunking, completion without a terminator, truncation by every cause, the
//! upstream's own error events, and Anthropic's pings.

mod framing;

use std::sync::Arc;

use bytes::Bytes;
use framing::drive::{self, End, Run};
use framing::{bytewise, MAX};
use sse_gateway::engine::Outcome;
use sse_gateway::protocol::{CompleteWhen, Contract, Protocol};
use sse_gateway::rewrite::{Pipeline, Rule, Terminator, TerminatorMatch};

fn pipeline(protocol: Protocol) -> Arc<Pipeline> {
    let repair = vec![Rule::repair_orphan_lines("repair".into())];
    Arc::new(Pipeline::new(repair, None).with_contract(Contract::preset(protocol)))
}

/// The stream whole and byte by byte: the same run, and both keep the promises.
fn run(protocol: Protocol, input: &str, end: End) -> Run {
    run_on(&pipeline(protocol), input, end)
}

/// [`run`] on a pipeline of the test's own.
fn run_on(pipeline: &Arc<Pipeline>, input: &str, end: End) -> Run {
    let whole = drive::drive(
        pipeline,
        MAX,
        [Bytes::copy_from_slice(input.as_bytes())],
        end,
        End::Clean,
    );
    drive::check(pipeline, end, &whole);
    let reads = bytewise(input.as_bytes())
        .into_iter()
        .map(Bytes::copy_from_slice);
    let pieces = drive::drive(pipeline, MAX, reads, end, End::Clean);
    drive::check(pipeline, end, &pieces);
    assert_eq!(whole, pieces, "chunking changed the run");
    whole
}

fn text(run: &Run) -> &str {
    std::str::from_utf8(&run.output).unwrap()
}

const CHAT_HALF: &str =
    "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";
const CHAT_STOP: &str = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const MSG_START: &str = "event: message_start\ndata: {\"type\":\"message_start\"}\n\n";
const MSG_DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hel\"}}\n\n";
const MSG_STOP_REASON: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n";
const RESP_DELTA: &str = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\",\"sequence_number\":5}\n\n";

#[test]
fn chat_clean_and_repaired() {
    let clean = format!("{CHAT_HALF}{CHAT_STOP}data: [DONE]\n\n");
    let run_clean = run(Protocol::OpenaiChat, &clean, End::Clean);
    assert_eq!(run_clean.outcome, Some(Outcome::Terminator));
    assert_eq!(text(&run_clean), clean);
    let flawed = clean.replace("data: ", "data:\n");
    let repaired = run(Protocol::OpenaiChat, &flawed, End::Clean);
    assert_eq!(repaired.outcome, Some(Outcome::Terminator));
    assert_eq!(text(&repaired), clean.replace("data: ", "data:"));
}

#[test]
fn chat_complete_without_done_gets_done() {
    let run = run(
        Protocol::OpenaiChat,
        &format!("{CHAT_HALF}{CHAT_STOP}"),
        End::Clean,
    );
    assert_eq!(run.outcome, Some(Outcome::UpstreamEof));
    assert!(text(&run).ends_with(&format!("{CHAT_STOP}data: [DONE]\n\n")));
}

#[test]
fn chat_truncated_is_an_error_then_done() {
    let run = run(Protocol::OpenaiChat, CHAT_HALF, End::Clean);
    assert_eq!(run.outcome, Some(Outcome::Truncated));
    let out = text(&run);
    assert!(out.contains("event: error\ndata: {\"error\":{"), "{out}");
    assert!(out.contains("\"type\":\"upstream_incomplete\""), "{out}");
    assert!(out.contains("the upstream closed the stream"), "{out}");
    assert!(out.contains("no finish_reason"), "{out}");
    assert!(out.ends_with("data: [DONE]\n\n"));
}

#[test]
fn every_cut_without_evidence_is_truncated_and_with_it_complete() {
    for end in [
        End::Failure,
        End::IdleTimeout,
        End::MaxDuration,
        End::Shutdown,
    ] {
        let cut = run(Protocol::OpenaiChat, CHAT_HALF, end);
        assert_eq!(cut.outcome, Some(Outcome::Truncated), "{end:?}");
        assert!(text(&cut).contains("upstream_incomplete"));
        let done = run(
            Protocol::Anthropic,
            &format!("{MSG_START}{MSG_STOP_REASON}"),
            end,
        );
        assert_ne!(done.outcome, Some(Outcome::Truncated), "{end:?}");
        assert!(!text(&done).contains("event: error"), "{end:?}");
        assert!(text(&done).ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }
}

#[test]
fn chat_upstream_error_is_passed_through_then_done() {
    let error = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
    let input = format!("{CHAT_HALF}{error}{CHAT_HALF}");
    let run = run(Protocol::OpenaiChat, &input, End::Clean);
    assert_eq!(run.outcome, Some(Outcome::UpstreamErrorEvent));
    assert_eq!(text(&run), format!("{CHAT_HALF}{error}data: [DONE]\n\n"));
}

#[test]
fn anthropic_truncated_after_a_delta_and_its_error_shape() {
    let run = run(
        Protocol::Anthropic,
        &format!("{MSG_START}{MSG_DELTA}"),
        End::Clean,
    );
    assert_eq!(run.outcome, Some(Outcome::Truncated));
    let out = text(&run);
    assert!(
        out.ends_with("event: error\ndata: {\"error\":{\"message\":\"the upstream closed the stream before the answer was complete: no message_stop or stop_reason\",\"type\":\"upstream_incomplete\"},\"type\":\"error\"}\n\n"),
        "{out}"
    );
    assert!(!out.contains("message_stop\ndata"));
}

#[test]
fn anthropic_stop_reason_without_message_stop_gets_a_parseable_one() {
    let run = run(
        Protocol::Anthropic,
        &format!("{MSG_START}{MSG_STOP_REASON}"),
        End::Clean,
    );
    assert_eq!(run.outcome, Some(Outcome::UpstreamEof));
    assert!(text(&run).ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[test]
fn anthropic_pings_are_not_content() {
    let pipeline = pipeline(Protocol::Anthropic);
    let mut engine = sse_gateway::engine::Engine::new(pipeline, MAX, "messages".into());
    engine.push(Bytes::from_static(
        b"event: ping\ndata: {\"type\":\"ping\"}\n\n",
    ));
    assert!(engine.next_frame().is_some(), "the ping is forwarded");
    assert!(!engine.take_progress().content_seen);
    engine.push(Bytes::from(MSG_DELTA));
    engine.next_frame();
    assert!(engine.take_progress().content_seen);
}

#[test]
fn anthropic_error_event_ends_the_stream_with_nothing_after_it() {
    let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n";
    let run = run(
        Protocol::Anthropic,
        &format!("{MSG_START}{error}{MSG_DELTA}"),
        End::Clean,
    );
    assert_eq!(run.outcome, Some(Outcome::UpstreamErrorEvent));
    assert_eq!(text(&run), format!("{MSG_START}{error}"));
}

/// The Anthropic SDKs skip an event without an `event:` line, an error among them:
/// passed on alone, a failed answer would reach them as complete. The gateway's own
/// error event, in the SDKs' shape, follows it.
#[test]
fn an_anthropic_error_without_its_event_line_is_followed_by_the_gateways_own() {
    let error = "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let run = run(
        Protocol::Anthropic,
        &format!("{MSG_START}{MSG_DELTA}{error}{MSG_DELTA}"),
        End::Clean,
    );
    assert_eq!(run.outcome, Some(Outcome::UpstreamErrorEvent));
    let out = text(&run);
    let (passed, told) = out.split_at(format!("{MSG_START}{MSG_DELTA}{error}").len());
    assert_eq!(passed, format!("{MSG_START}{MSG_DELTA}{error}"));
    let told = told
        .strip_prefix("event: error\ndata: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("the gateway's error event: {told:?}"));
    let told: serde_json::Value = serde_json::from_str(told).unwrap();
    assert_eq!(told["type"], "error");
    assert_eq!(told["error"]["type"], "upstream_error");
    assert!(told["error"]["message"]
        .as_str()
        .unwrap()
        .contains("overloaded_error"));
}

/// `OpenRouter` ends a choice whose provider failed with `finish_reason: "error"`, an
/// error object beside it or not; the openai SDKs raise only on the object. Without
/// it, the gateway's error event tells them, before its `[DONE]`.
#[test]
fn a_chat_finish_reason_of_error_without_an_error_object_is_the_upstreams_error() {
    for reason in ["error", "abort"] {
        let failed = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{reason}\"}}]}}\n\n"
        );
        let run = run(
            Protocol::OpenaiChat,
            &format!("{CHAT_HALF}{failed}data: [DONE]\n\n"),
            End::Clean,
        );
        assert_eq!(run.outcome, Some(Outcome::UpstreamErrorEvent), "{reason}");
        assert!(run.finish_reasons.is_empty(), "{reason}: no finish");
        let out = text(&run);
        assert!(
            out.starts_with(&format!("{CHAT_HALF}{failed}event: error\ndata: ")),
            "{out}"
        );
        assert!(out.contains("\"type\":\"upstream_error\""), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    }
}

#[test]
fn responses_terminal_event_ends_and_truncation_is_numbered() {
    let completed = "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":6}\n\n";
    let clean = run(
        Protocol::OpenaiResponses,
        &format!("{RESP_DELTA}{completed}{RESP_DELTA}"),
        End::Clean,
    );
    assert_eq!(clean.outcome, Some(Outcome::Terminator));
    assert_eq!(text(&clean), format!("{RESP_DELTA}{completed}"));
    let cut = run(Protocol::OpenaiResponses, RESP_DELTA, End::IdleTimeout);
    assert_eq!(cut.outcome, Some(Outcome::Truncated));
    let out = text(&cut);
    assert!(out.contains("\"sequence_number\":6"), "{out}");
    assert!(out.contains("no data from upstream for 5m"), "{out}");
    assert!(out.contains("no terminal response event"), "{out}");
    assert!(out.ends_with("}\n\n") && !out.contains("[DONE]"));
}

#[test]
fn responses_failed_is_an_upstream_error_event() {
    let failed = "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\",\"message\":\"m\"}}}\n\n";
    let run = run(
        Protocol::OpenaiResponses,
        &format!("{RESP_DELTA}{failed}"),
        End::Clean,
    );
    assert_eq!(run.outcome, Some(Outcome::UpstreamErrorEvent));
    assert_eq!(text(&run), format!("{RESP_DELTA}{failed}"));
}

#[test]
fn sse_without_complete_when_is_unchanged_and_with_it_asks() {
    let plain = Arc::new(Pipeline::new(vec![], Some(framing::done_terminator())));
    let old = drive::drive(
        &plain,
        MAX,
        [Bytes::from_static(b"data: a\n\n")],
        End::Clean,
        End::Clean,
    );
    assert_eq!(old.outcome, Some(Outcome::UpstreamEof));
    assert_eq!(old.output, b"data: a\n\ndata: [DONE]\n\n");
    let asking = Arc::new(
        Pipeline::new(vec![], Some(framing::done_terminator())).with_contract(Contract {
            protocol: Protocol::Sse,
            complete_when: Some(CompleteWhen::Event(Bytes::from_static(b"finished"))),
        }),
    );
    let cut = drive::drive(
        &asking,
        MAX,
        [Bytes::from_static(b"data: a\n\n")],
        End::Clean,
        End::Clean,
    );
    drive::check(&asking, End::Clean, &cut);
    assert_eq!(cut.outcome, Some(Outcome::Truncated));
    let out = String::from_utf8(cut.output).unwrap();
    assert!(out.contains("\"route\":\"chat\""), "{out}");
    assert!(out.ends_with("data: [DONE]\n\n"));
    let done = drive::drive(
        &asking,
        MAX,
        [Bytes::from_static(b"event: finished\ndata: a\n\n")],
        End::Clean,
        End::Clean,
    );
    assert_eq!(done.outcome, Some(Outcome::UpstreamEof));
}

#[test]
fn chat_with_two_choices_is_complete_only_when_both_finish() {
    let chunk = |choice: &str| format!("data: {{\"choices\":[{choice}]}}\n\n");
    let start = [
        chunk(r#"{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}"#),
        chunk(r#"{"index":1,"delta":{"role":"assistant","content":""},"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{"content":"Hi."},"finish_reason":null}"#),
        chunk(r#"{"index":1,"delta":{"content":"Hello, I am wri"},"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{},"finish_reason":"stop"}"#),
    ]
    .concat();
    let cut = run(Protocol::OpenaiChat, &start, End::Clean);
    assert_eq!(cut.outcome, Some(Outcome::Truncated));
    assert!(text(&cut).contains("upstream_incomplete"));
    let both = format!(
        "{start}{}",
        chunk(r#"{"index":1,"delta":{},"finish_reason":"length"}"#)
    );
    let done = run(Protocol::OpenaiChat, &both, End::Clean);
    assert_eq!(done.outcome, Some(Outcome::UpstreamEof));
    assert_eq!(text(&done), format!("{both}data: [DONE]\n\n"));
}

/// Writers that sort keys (Go's maps, `serde_json::Value`) put a choice's `delta`
/// before its `index`: a tool call's own `index` inside the delta must not hide the
/// choice's.
#[test]
fn a_choice_whose_index_follows_a_tool_call_delta_is_still_a_choice_to_finish() {
    let chunk = |choice: &str| format!("data: {{\"choices\":[{choice}]}}\n\n");
    let start = [
        chunk(r#"{"delta":{"content":"A","role":"assistant"},"finish_reason":null,"index":0}"#),
        chunk(
            r#"{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":","name":"f"},"id":"c1","index":0,"type":"function"}]},"finish_reason":null,"index":1}"#,
        ),
        chunk(r#"{"delta":{},"finish_reason":"stop","index":0}"#),
    ]
    .concat();
    let cut = run(Protocol::OpenaiChat, &start, End::Clean);
    assert_eq!(cut.outcome, Some(Outcome::Truncated));
    let both = format!(
        "{start}{}",
        chunk(r#"{"delta":{},"finish_reason":"tool_calls","index":1}"#)
    );
    let done = run(Protocol::OpenaiChat, &both, End::Clean);
    assert_eq!(done.outcome, Some(Outcome::UpstreamEof));
}

#[test]
fn an_event_the_upstreams_end_cuts_is_not_sent_on_a_protocol_route() {
    let completed = "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":6,\"response\":{\"status\":\"completed\"}}";
    let cut_at = completed.find("\"status\"").unwrap();
    for tail in [&completed[..cut_at], "event: response.completed\n"] {
        let run = run(
            Protocol::OpenaiResponses,
            &format!("{RESP_DELTA}{tail}"),
            End::Clean,
        );
        assert_eq!(run.outcome, Some(Outcome::Truncated), "{tail:?}");
        let out = text(&run);
        assert!(out.starts_with(RESP_DELTA), "{out}");
        assert!(!out.contains("response.completed"), "{out}");
        assert!(
            out.contains("the upstream closed the stream in the middle of an event"),
            "{out}"
        );
    }
    // Whole, it is sent, blank line added, and it completes the answer.
    let whole = run(
        Protocol::OpenaiResponses,
        &format!("{RESP_DELTA}{completed}"),
        End::Clean,
    );
    assert_eq!(whole.outcome, Some(Outcome::Terminator));
    assert_eq!(text(&whole), format!("{RESP_DELTA}{completed}\n\n"));
    // So is `[DONE]` without its blank line: the terminator, not JSON.
    let done = run(
        Protocol::OpenaiChat,
        &format!("{CHAT_HALF}{CHAT_STOP}data: [DONE]"),
        End::Clean,
    );
    assert_eq!(done.outcome, Some(Outcome::Terminator));
}

#[test]
fn chat_error_as_text_generation_inference_writes_it_ends_the_stream() {
    let error = "data: {\"error\":\"Request failed during generation: CUDA out of memory\",\"error_type\":\"generation\"}\n\n";
    let run = run(
        Protocol::OpenaiChat,
        &format!("{CHAT_HALF}{error}data: [DONE]\n\n"),
        End::Clean,
    );
    assert_eq!(run.outcome, Some(Outcome::UpstreamErrorEvent));
    assert_eq!(text(&run), format!("{CHAT_HALF}{error}data: [DONE]\n\n"));
}

/// Every event's data in `out`, where it has some, parses as JSON: what the SDKs of
/// the JSON protocols do with each event.
fn assert_every_data_parses(out: &str) {
    for event in out.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.lines().find_map(|l| l.strip_prefix("data:"));
        let data = data.map(str::trim_start).unwrap_or_default();
        assert!(
            serde_json::from_str::<serde_json::Value>(data).is_ok(),
            "an event an SDK cannot parse: {event:?} in {out}"
        );
    }
}

#[test]
fn a_chat_error_chunk_that_names_a_finish_reason_is_the_upstreams_error() {
    // OpenRouter's mid-stream error: a top-level `error`, and `finish_reason: "error"`.
    let error = "data: {\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"error\":{\"code\":\"server_error\",\"message\":\"Provider disconnected unexpectedly\"},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n";
    let run = run(
        Protocol::OpenaiChat,
        &format!("{CHAT_HALF}{error}data: [DONE]\n\n"),
        End::Clean,
    );
    assert_eq!(run.outcome, Some(Outcome::UpstreamErrorEvent));
    assert!(!run.evidence, "an error is no finish");
    assert_eq!(text(&run), format!("{CHAT_HALF}{error}data: [DONE]\n\n"));
    // The same with no reason: the upstream's error, not a truncation of the gateway's.
    let unfinished = error.replace("\"error\"}]", "null}]");
    assert_ne!(unfinished, error);
    let without = self::run(
        Protocol::OpenaiChat,
        &format!("{CHAT_HALF}{unfinished}"),
        End::Clean,
    );
    assert_eq!(without.outcome, Some(Outcome::UpstreamErrorEvent));
    assert_eq!(
        text(&without),
        format!("{CHAT_HALF}{unfinished}data: [DONE]\n\n")
    );
}

#[test]
fn an_anthropic_message_stop_cut_by_the_upstreams_close_is_not_sent_cut() {
    for tail in [
        "event: message_stop\ndata: {\"type\":\"mess",
        "event: message_stop\n",
        "event: message_stop",
    ] {
        // After the stop reason: complete, and the client gets a whole message_stop.
        let done = run(
            Protocol::Anthropic,
            &format!("{MSG_START}{MSG_DELTA}{MSG_STOP_REASON}{tail}"),
            End::Clean,
        );
        assert_eq!(done.outcome, Some(Outcome::UpstreamEof), "{tail:?}");
        let out = text(&done);
        assert_eq!(
            out,
            format!(
                "{MSG_START}{MSG_DELTA}{MSG_STOP_REASON}event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
            ),
            "{tail:?}"
        );
        // Without it: the answer was cut, and the client is told.
        let cut = run(
            Protocol::Anthropic,
            &format!("{MSG_START}{MSG_DELTA}{tail}"),
            End::Clean,
        );
        assert_eq!(cut.outcome, Some(Outcome::Truncated), "{tail:?}");
        let out = text(&cut);
        assert!(out.contains("in the middle of an event"), "{out}");
        assert_every_data_parses(out);
    }
}

/// An openai-responses route that names `response.completed` as its terminator.
fn responses_ending_at_completed() -> Arc<Pipeline> {
    let completed = Terminator {
        matcher: TerminatorMatch::Event(Bytes::from_static(b"response.completed")),
        forward: true,
        synthesize_on_eof: true,
    };
    Arc::new(
        Pipeline::new(vec![], Some(completed))
            .with_contract(Contract::preset(Protocol::OpenaiResponses)),
    )
}

#[test]
fn responses_with_an_event_terminator_neither_takes_a_cut_one_nor_writes_an_empty_one() {
    let pipeline = responses_ending_at_completed();
    let cut = "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":6,\"resp";
    let run = run_on(&pipeline, &format!("{RESP_DELTA}{cut}"), End::Clean);
    assert_eq!(run.outcome, Some(Outcome::Truncated));
    assert!(!text(&run).contains("response.completed"), "{}", text(&run));
    assert_every_data_parses(text(&run));

    // Ended by `response.incomplete` and the upstream's close: what the upstream said
    // stands, and no `response.completed` without its response follows it.
    let incomplete = "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"sequence_number\":6,\"response\":{\"status\":\"incomplete\"}}\n\n";
    let run = run_on(&pipeline, &format!("{RESP_DELTA}{incomplete}"), End::Clean);
    assert_eq!(run.outcome, Some(Outcome::UpstreamEof));
    assert_eq!(text(&run), format!("{RESP_DELTA}{incomplete}"));
}

#[test]
fn chat_with_two_choices_finishing_in_one_chunk_and_then_the_other() {
    let both = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"},{\"index\":1,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n";
    let last = "data: {\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    let run = run(Protocol::OpenaiChat, &format!("{both}{last}"), End::Clean);
    assert_eq!(run.outcome, Some(Outcome::UpstreamEof));
    assert_eq!(text(&run), format!("{both}{last}data: [DONE]\n\n"));
}

#[test]
fn each_choice_finishes_with_its_own_reason_and_each_reason_is_kept_once() {
    let first = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"},{\"index\":1,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n";
    let second = "data: {\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    let third = "data: {\"choices\":[{\"index\":2,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    let input = format!("{first}{second}{third}data: [DONE]\n\n");
    let run = run(Protocol::OpenaiChat, &input, End::Clean);
    assert_eq!(run.outcome, Some(Outcome::Terminator));
    assert_eq!(run.finish_reasons.to_string(), "stop,length");
}

#[test]
fn a_stream_that_never_finishes_has_no_finish_reason() {
    let run = run(Protocol::OpenaiChat, CHAT_HALF, End::Clean);
    assert_eq!(run.outcome, Some(Outcome::Truncated));
    assert!(run.finish_reasons.is_empty());
}

#[test]
fn an_anthropic_message_stop_without_its_event_line_ends_the_stream_once() {
    let input = "data: {\"type\":\"message_start\",\"message\":{}}\n\n\
                 data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
                 data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n\
                 data: {\"type\":\"message_stop\"}\n\n";
    let run = run(Protocol::Anthropic, input, End::Clean);
    assert_eq!(run.outcome, Some(Outcome::Terminator));
    assert_eq!(text(&run), input, "no second message_stop");
    assert_eq!(run.finish_reasons.to_string(), "end_turn");
}

#[test]
fn a_responses_completed_the_route_names_as_terminator_still_gives_usage_and_finish() {
    let completed = "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":6,\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":5,\"output_tokens\":7}}}\n\n";
    let input = format!("{RESP_DELTA}{completed}");
    let run = run_on(&responses_ending_at_completed(), &input, End::Clean);
    assert_eq!(run.outcome, Some(Outcome::Terminator));
    assert_eq!(text(&run), input);
    assert_eq!(run.finish_reasons.to_string(), "completed");
    let usage = run.usage.expect("the usage of response.completed");
    assert_eq!(
        (usage.input_tokens, usage.output_tokens),
        (Some(5), Some(7))
    );
}

#[test]
fn an_empty_finish_reason_on_every_chunk_is_no_finish() {
    let chunk = |content: &str| {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":\"\"}}]}}\n\n")
    };
    let cut = format!("{}{}", chunk("Hel"), chunk("lo"));
    let run = run(Protocol::OpenaiChat, &cut, End::Clean);
    assert_eq!(run.outcome, Some(Outcome::Truncated));
    assert!(run.finish_reasons.is_empty());
}
