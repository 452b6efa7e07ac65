//! Token usage through the stream engine, on streams captured from each API (in
//! `tests/fixtures/usage/`): the engine reports the upstream's own numbers, counts the
//! content events, and drops the Chat Completions usage-only chunk only when asked to.

use std::sync::Arc;

use bytes::Bytes;
use sse_gateway::engine::{Engine, Outcome};
use sse_gateway::protocol::{Contract, Protocol, Usage};
use sse_gateway::rewrite::Pipeline;

fn capture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/usage/{name}.sse",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// What a whole run reported: the output, the outcome, the usage and content events.
struct Run {
    output: String,
    outcome: Option<Outcome>,
    usage: Usage,
    content_events: u64,
    first_content_events: u64,
}

/// Runs `input` in reads of `read` bytes, as the live body does.
fn run(protocol: Protocol, input: &str, read: usize, remove_usage_chunk: bool) -> Run {
    let pipeline =
        Arc::new(Pipeline::new(Vec::new(), None).with_contract(Contract::preset(protocol)));
    let mut engine = Engine::new(pipeline, 1 << 20, Arc::from("chat"));
    if remove_usage_chunk {
        engine.remove_usage_chunk();
    }
    let mut run = Run {
        output: String::new(),
        outcome: None,
        usage: Usage::default(),
        content_events: 0,
        first_content_events: 0,
    };
    let take = |engine: &mut Engine, run: &mut Run| {
        while let Some(frame) = engine.next_frame() {
            run.output.push_str(std::str::from_utf8(&frame).unwrap());
        }
        let progress = engine.take_progress();
        if let Some(usage) = progress.usage {
            run.usage.update(usage);
        }
        run.content_events += progress.content_events;
        run.first_content_events += u64::from(progress.first_content_event);
    };
    for piece in input.as_bytes().chunks(read) {
        engine.push(Bytes::copy_from_slice(piece));
        take(&mut engine, &mut run);
    }
    engine.upstream_end();
    take(&mut engine, &mut run);
    run.outcome = engine.outcome();
    run
}

fn tokens(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: Some(input),
        output_tokens: Some(output),
    }
}

#[test]
fn chat_usage_from_the_final_chunk_in_any_chunking() {
    let input = capture("openai-chat");
    for read in [1, 7, 100, input.len()] {
        let kept = run(Protocol::OpenaiChat, &input, read, false);
        assert_eq!(kept.usage, tokens(9, 2), "reads of {read}");
        assert_eq!(kept.output, input, "passed through unchanged");
        assert_eq!(kept.outcome, Some(Outcome::Terminator));
        assert_eq!((kept.content_events, kept.first_content_events), (2, 1));
    }
}

#[test]
fn chat_usage_chunk_is_removed_only_when_asked_and_still_counted() {
    let input = capture("openai-chat");
    let usage_chunk = input
        .split_inclusive("\n\n")
        .find(|event| event.contains("\"choices\":[]"))
        .expect("the capture ends with a usage chunk");
    for read in [1, 13, input.len()] {
        let removed = run(Protocol::OpenaiChat, &input, read, true);
        assert_eq!(
            removed.output,
            input.replace(usage_chunk, ""),
            "reads of {read}"
        );
        assert_eq!(removed.usage, tokens(9, 2));
        assert_eq!(removed.outcome, Some(Outcome::Terminator));
    }
    // A chunk with usage and a choice (as some compatible servers send) is kept.
    let combined = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
    let kept = run(Protocol::OpenaiChat, combined, combined.len(), true);
    assert_eq!(kept.output, combined);
    assert_eq!(kept.usage, tokens(1, 1));
}

#[test]
fn responses_usage_from_the_completed_event() {
    let input = capture("openai-responses");
    for read in [1, 64, input.len()] {
        let run = run(Protocol::OpenaiResponses, &input, read, false);
        assert_eq!(run.usage, tokens(12, 3), "reads of {read}");
        assert_eq!(run.output, input);
        assert_eq!(run.outcome, Some(Outcome::Terminator));
        assert_eq!((run.content_events, run.first_content_events), (2, 1));
    }
}

#[test]
fn anthropic_input_from_message_start_and_output_from_message_delta() {
    let input = capture("anthropic");
    for read in [1, 50, input.len()] {
        let run = run(Protocol::Anthropic, &input, read, false);
        assert_eq!(run.usage, tokens(25, 15), "reads of {read}");
        assert_eq!(run.output, input);
        assert_eq!(run.outcome, Some(Outcome::Terminator));
        assert_eq!((run.content_events, run.first_content_events), (2, 1));
    }
}

#[test]
fn a_stream_without_usage_reports_none() {
    let input = capture("openai-chat");
    let without: String = input
        .split_inclusive("\n\n")
        .filter(|event| !event.contains("\"choices\":[]"))
        .collect();
    let run = run(Protocol::OpenaiChat, &without, without.len(), true);
    assert_eq!(run.usage, Usage::default());
    assert_eq!(run.output, without);
}
