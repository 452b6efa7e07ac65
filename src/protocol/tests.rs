//! Per-protocol classification of single events.

use bytes::Bytes;

use super::classify::Class;
use super::usage::Usage;
use super::*;

fn classify(protocol: Protocol, text: &str) -> Class {
    Contract::preset(protocol).classify(text.as_bytes(), true)
}

#[test]
fn chat_evidence_is_a_finish_reason_that_is_not_null() {
    let chunk = |reason: &str| {
        format!(r#"data: {{"choices":[{{"delta":{{}},"finish_reason":{reason}}}]}}"#) + "\n\n"
    };
    assert!(!classify(Protocol::OpenaiChat, &chunk("null")).evidence);
    assert!(!classify(Protocol::OpenaiChat, &chunk(" null")).evidence);
    // Some OpenAI-compatible servers write an empty reason on every chunk.
    assert!(!classify(Protocol::OpenaiChat, &chunk("\"\"")).evidence);
    assert!(classify(Protocol::OpenaiChat, &chunk("\"stop\"")).evidence);
    assert!(classify(Protocol::OpenaiChat, &chunk(" \"length\"")).evidence);
    // The words in the answer's text are no evidence.
    let text = r#"data: {"choices":[{"delta":{"content":"\"finish_reason\": \"stop\""},"finish_reason":null}]}"#;
    assert!(!classify(Protocol::OpenaiChat, &format!("{text}\n\n")).evidence);
}

#[test]
fn chat_error_is_a_top_level_error_object() {
    let error = "data: {\"error\":{\"message\":\"m\",\"type\":\"server_error\"}}\n\n";
    assert_eq!(
        classify(Protocol::OpenaiChat, error).upstream_error,
        Some("server_error")
    );
    let unknown = "data: {\"error\":{\"message\":\"m\",\"type\":\"made_up\"}}\n\n";
    assert_eq!(
        classify(Protocol::OpenaiChat, unknown).upstream_error,
        Some("other")
    );
    let content = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"error\\\"\"}}]}\n\n";
    assert_eq!(classify(Protocol::OpenaiChat, content).upstream_error, None);
}

#[test]
fn chat_error_is_any_error_the_sdk_raises_on() {
    // text-generation-inference's shape: a string, and its own type beside it.
    let text = "data: {\"error\":\"Request failed during generation: CUDA out of memory\",\"error_type\":\"generation\"}\n\n";
    assert_eq!(
        classify(Protocol::OpenaiChat, text).upstream_error,
        Some("other")
    );
    // What Python holds false is no error: the SDK reads such a chunk as data.
    for value in ["null", "false", "\"\"", "{}", "[]", "0"] {
        let chunk = format!("data: {{\"error\":{value},\"choices\":[]}}\n\n");
        assert_eq!(
            classify(Protocol::OpenaiChat, &chunk).upstream_error,
            None,
            "{value}"
        );
    }
}

#[test]
fn chat_choices_are_read_by_index_and_a_tool_calls_index_is_not_a_choice() {
    let chunk = |choice: &str| format!("data: {{\"choices\":[{choice}]}}\n\n");
    let mut choices = Choices::default();
    let second = chunk(r#"{"index":1,"delta":{"content":"Hi"},"finish_reason":null}"#);
    let class = classify(Protocol::OpenaiChat, &second);
    choices.add(class.choices);
    assert!(!class.evidence && !choices.all_finished());
    let tool = chunk(
        r#"{"index":0,"delta":{"tool_calls":[{"index":5,"function":{"arguments":"{"}}]},"finish_reason":null}"#,
    );
    choices.add(classify(Protocol::OpenaiChat, &tool).choices);
    let first_done = chunk(r#"{"index":0,"delta":{},"finish_reason":"tool_calls"}"#);
    let class = classify(Protocol::OpenaiChat, &first_done);
    choices.add(class.choices);
    assert!(class.evidence, "a choice finished");
    assert!(
        !choices.all_finished(),
        "choice 1 has not; choice 5 was a tool call's"
    );
    let second_done = chunk(r#"{"finish_reason":"stop" , "index" : 1,"delta":{}}"#);
    choices.add(classify(Protocol::OpenaiChat, &second_done).choices);
    assert!(choices.all_finished());
    // Without `index`, a finishing chunk speaks for its choices by position.
    let mut plain = Choices::default();
    plain.add(classify(Protocol::OpenaiChat, CHAT_WITHOUT_INDEX).choices);
    assert!(plain.all_finished());
}

/// A choice's index is read from the data alone: an `id:` line or a comment with an
/// unbalanced brace or quote before it must not hide it.
#[test]
fn chat_choices_are_read_from_the_data_lines_only() {
    let data = r#"data: {"choices":[{"delta":{"content":"B"},"finish_reason":null,"index":2}]}"#;
    for before in ["", "id: {1\n", ": {\"\n", "event: x\n"] {
        let mut choices = Choices::default();
        choices.add(classify(Protocol::OpenaiChat, &format!("{before}{data}\n\n")).choices);
        let done = r#"data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}]}"#;
        choices.add(classify(Protocol::OpenaiChat, &format!("{done}\n\n")).choices);
        assert!(!choices.all_finished(), "choice 2 seen after {before:?}");
    }
    // Data over several lines is one payload.
    let split =
        "data: {\"choices\":[{\"delta\":{},\ndata: \"finish_reason\":null,\"index\":1}]}\n\n";
    let mut choices = Choices::default();
    choices.add(classify(Protocol::OpenaiChat, split).choices);
    assert!(!choices.all_finished());
}

/// One choice's `error` fails the chunk whatever the order of its choices: no finish
/// is taken from the others.
#[test]
fn a_choice_that_fails_fails_the_chunk_in_any_order() {
    let stop = r#"{"index":0,"delta":{},"finish_reason":"stop"}"#;
    let error = r#"{"index":1,"delta":{},"finish_reason":"error"}"#;
    for (a, b) in [(stop, error), (error, stop)] {
        let class = classify(
            Protocol::OpenaiChat,
            &format!("data: {{\"choices\":[{a},{b}]}}\n\n"),
        );
        assert_eq!(class.upstream_error, Some("other"));
        assert!(class.error_unseen && !class.evidence && class.finish.is_empty());
    }
}

const CHAT_WITHOUT_INDEX: &str =
    "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";

#[test]
fn an_event_type_without_an_event_line_is_the_top_level_type_spaced_or_not() {
    let spaced = "data: {\"type\": \"response.completed\", \"sequence_number\" : 7}\n\n";
    let class = classify(Protocol::OpenaiResponses, spaced);
    assert!(class.evidence && class.terminal);
    assert_eq!(class.sequence_number, Some(7));
    // A nested object's `type` comes first; the event's own is the top level's.
    let nested = "data: {\"item\":{\"type\":\"response.completed\",\"s\":\"}{\\\"\"},\"type\":\"response.output_item.added\"}\n\n";
    let class = classify(Protocol::OpenaiResponses, nested);
    assert!(!class.evidence && !class.terminal);
    let anthropic = "data: {\"delta\":{\"stop_reason\":null},\"type\" :\"message_stop\"}\n\n";
    assert!(classify(Protocol::Anthropic, anthropic).evidence);
}

#[test]
fn responses_terminal_events_errors_and_sequence_numbers() {
    let delta = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":4}\n\n";
    let class = classify(Protocol::OpenaiResponses, delta);
    assert_eq!(class.sequence_number, Some(4));
    assert!(!class.evidence && !class.terminal);
    let done = "data: {\"type\":\"response.completed\",\"sequence_number\":9}\n\n";
    let class = classify(Protocol::OpenaiResponses, done);
    assert!(class.evidence && class.terminal);
    let failed = "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\"}}}\n\n";
    let class = classify(Protocol::OpenaiResponses, failed);
    assert_eq!(class.upstream_error, Some("server_error"));
    let error = "event: error\ndata: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"m\"}\n\n";
    assert_eq!(
        classify(Protocol::OpenaiResponses, error).upstream_error,
        Some("rate_limit_exceeded")
    );
}

#[test]
fn anthropic_pings_stops_and_errors() {
    let contract = Contract::preset(Protocol::Anthropic);
    let ping = "event: ping\ndata: {\"type\":\"ping\"}\n\n";
    assert!(contract.is_keep_alive(&crate::sse::Event::new(ping.as_bytes())));
    assert!(!Contract::preset(Protocol::OpenaiChat)
        .is_keep_alive(&crate::sse::Event::new(ping.as_bytes())));
    let delta = |reason: &str| {
        format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":{reason}}}}}\n\n")
    };
    assert!(!classify(Protocol::Anthropic, &delta("null")).evidence);
    assert!(classify(Protocol::Anthropic, &delta("\"end_turn\"")).evidence);
    let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"m\"}}\n\n";
    assert_eq!(
        classify(Protocol::Anthropic, error).upstream_error,
        Some("overloaded_error")
    );
}

#[test]
fn sse_asks_for_evidence_only_with_complete_when() {
    assert!(!Contract::default().asks_evidence());
    let contract = Contract {
        protocol: Protocol::Sse,
        complete_when: Some(CompleteWhen::DataMatches(
            regex::bytes::Regex::new(r#""done":\s*true"#).unwrap(),
        )),
    };
    assert!(contract.asks_evidence());
    assert!(
        contract
            .classify(b"data: {\"done\": true}\n\n", false)
            .evidence
    );
    assert!(
        !contract
            .classify(b"data: {\"done\": false}\n\n", false)
            .evidence
    );
}

#[test]
fn the_anthropic_terminator_carries_its_type() {
    let terminator = Protocol::Anthropic.preset_terminator().unwrap();
    assert_eq!(
        Contract::preset(Protocol::Anthropic).encode_terminator(&terminator),
        Some(Bytes::from_static(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        ))
    );
    let done = Protocol::OpenaiChat.preset_terminator().unwrap();
    assert_eq!(
        Contract::preset(Protocol::OpenaiChat).encode_terminator(&done),
        Some(Bytes::from_static(b"data: [DONE]\n\n"))
    );
    // An OpenAI event's data is an object the gateway cannot write: not synthesized.
    let completed = Terminator {
        matcher: TerminatorMatch::Event(Bytes::from_static(b"response.completed")),
        forward: true,
        synthesize_on_eof: true,
    };
    assert_eq!(
        Contract::preset(Protocol::OpenaiResponses).encode_terminator(&completed),
        None
    );
}

#[test]
fn chat_content_is_a_non_empty_text_refusal_or_arguments_delta() {
    let chunk = |delta: &str| {
        format!(r#"data: {{"choices":[{{"index":0,"delta":{delta},"finish_reason":null}}]}}"#)
            + "\n\n"
    };
    let content = |delta: &str| classify(Protocol::OpenaiChat, &chunk(delta)).content;
    assert!(
        !content(r#"{"role":"assistant","content":""}"#),
        "role only"
    );
    assert!(!content(r#"{"role":"assistant","content":null}"#));
    assert!(!content("{}"));
    assert!(content(r#"{"content":"Hi"}"#));
    assert!(
        content(r#"{"content": "\"quoted\""}"#),
        "spaces, an escaped quote"
    );
    assert!(content(r#"{"refusal":"No."}"#));
    let tool = r#"{"tool_calls":[{"index":0,"function":{"arguments":"{\"a"}}]}"#;
    assert!(content(tool));
    let tool_start =
        r#"{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}"#;
    assert!(!content(tool_start));
    // Text that looks like a key is inside a string: its quotes are escaped.
    assert!(!content(
        r#"{"role":"assistant","content":"","x":"say \"content\":\"y\""}"#
    ));
    // Streamed reasoning is not answer text, but it is output the client saw.
    let reasoning = |delta: &str| classify(Protocol::OpenaiChat, &chunk(delta)).reasoning;
    assert!(!content(r#"{"reasoning_content":"thinking"}"#));
    assert!(reasoning(r#"{"reasoning_content":"thinking"}"#));
    assert!(reasoning(
        r#"{"role":"assistant","content":null,"reasoning":"hmm"}"#
    ));
    assert!(!reasoning(r#"{"reasoning_content":""}"#));
    assert!(!reasoning(r#"{"content":"Hi","reasoning_content":null}"#));
    // Usage-only chunk at the end.
    let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n";
    assert!(!classify(Protocol::OpenaiChat, usage).content);
}

#[test]
fn responses_content_is_a_non_empty_text_or_arguments_delta_event() {
    let event = |kind: &str, delta: &str| {
        format!("event: {kind}\ndata: {{\"type\":\"{kind}\",\"delta\":{delta}}}\n\n")
    };
    let content =
        |kind: &str, delta: &str| classify(Protocol::OpenaiResponses, &event(kind, delta)).content;
    assert!(content("response.output_text.delta", "\"Hi\""));
    assert!(content("response.function_call_arguments.delta", "\"{\""));
    assert!(content("response.refusal.delta", "\"No\""));
    assert!(!content("response.output_text.delta", "\"\""));
    let reasoning = |kind: &str, delta: &str| {
        classify(Protocol::OpenaiResponses, &event(kind, delta)).reasoning
    };
    assert!(!content("response.reasoning_summary_text.delta", "\"Hm\""));
    assert!(reasoning("response.reasoning_summary_text.delta", "\"Hm\""));
    assert!(reasoning("response.reasoning_text.delta", "\"Hm\""));
    assert!(!reasoning("response.reasoning_text.delta", "\"\""));
    assert!(!content("response.created", "\"x\""));
    assert!(!content("response.output_item.added", "\"x\""));
}

#[test]
fn anthropic_content_is_a_non_empty_text_or_partial_json_delta() {
    let event = |kind: &str, data: &str| format!("event: {kind}\ndata: {data}\n\n");
    let content =
        |kind: &str, data: &str| classify(Protocol::Anthropic, &event(kind, data)).content;
    let text =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
    assert!(content("content_block_delta", text));
    let json = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}"#;
    assert!(content("content_block_delta", json));
    let empty = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#;
    assert!(!content("content_block_delta", empty));
    let start =
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    assert!(!content("content_block_start", start));
    let message_start =
        r#"{"type":"message_start","message":{"content":[],"usage":{"input_tokens":5}}}"#;
    assert!(!content("message_start", message_start));
    assert!(!content("ping", r#"{"type":"ping"}"#));
    let thinking = r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see"}}"#;
    assert!(!content("content_block_delta", thinking));
    assert!(classify(Protocol::Anthropic, &event("content_block_delta", thinking)).reasoning);
}

#[test]
fn sse_content_is_any_data_event() {
    assert!(classify(Protocol::Sse, "data: x\n\n").content);
    assert!(!classify(Protocol::Sse, ": comment\n\n").content);
    assert!(!classify(Protocol::Sse, "event: e\n\n").content);
}

#[test]
fn usage_is_read_only_where_each_protocol_puts_it() {
    let usage = |protocol, text: &str| classify(protocol, text).usage;
    let tokens = |input, output| {
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
        })
    };
    // Chat: `"usage":null` on every chunk but the last; the answer's text never counts.
    let chunk =
        r#"data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#;
    assert_eq!(usage(Protocol::OpenaiChat, &format!("{chunk}\n\n")), None);
    let quoted = r#"data: {"choices":[{"delta":{"content":"\"usage\":{\"prompt_tokens\":1}"},"finish_reason":null}]}"#;
    assert_eq!(usage(Protocol::OpenaiChat, &format!("{quoted}\n\n")), None);
    let last = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n";
    let class = classify(Protocol::OpenaiChat, last);
    assert_eq!(class.usage, tokens(Some(9), Some(2)));
    assert!(class.usage_only && !class.content);
    let with_choice = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n";
    let class = classify(Protocol::OpenaiChat, with_choice);
    assert_eq!(class.usage, tokens(Some(9), Some(2)));
    assert!(!class.usage_only && class.evidence);
    // Responses: only the terminal events' `response.usage`.
    let created = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n";
    assert_eq!(usage(Protocol::OpenaiResponses, created), None);
    let done = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":3}}}\n\n";
    assert_eq!(
        usage(Protocol::OpenaiResponses, done),
        tokens(Some(12), Some(3))
    );
    let failed = "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\"},\"usage\":{\"input_tokens\":4,\"output_tokens\":0}}}\n\n";
    let class = classify(Protocol::OpenaiResponses, failed);
    assert_eq!(class.usage, tokens(Some(4), Some(0)));
    assert_eq!(class.upstream_error, Some("server_error"));
    let delta = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"\\\"usage\\\":{}\"}\n\n";
    assert_eq!(usage(Protocol::OpenaiResponses, delta), None);
    // Anthropic: input from message_start, the output's running total from message_delta.
    let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n";
    assert_eq!(usage(Protocol::Anthropic, start), tokens(Some(25), None));
    let delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":7}}\n\n";
    let class = classify(Protocol::Anthropic, delta);
    assert_eq!(class.usage, tokens(None, Some(7)));
    assert!(!class.evidence);
    // A message_delta that names the input too (the whole of it, cache reads included)
    // overrides message_start's, as the SDKs' final message does.
    let totals = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15,\"input_tokens\":40,\"cache_read_input_tokens\":100}}\n\n";
    assert_eq!(
        classify(Protocol::Anthropic, totals).usage,
        tokens(Some(40), Some(15))
    );
    let text = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"\\\"output_tokens\\\": 3\"}}\n\n";
    assert_eq!(usage(Protocol::Anthropic, text), None);
    // `sse` routes read no usage.
    assert_eq!(usage(Protocol::Sse, last), None);
}
