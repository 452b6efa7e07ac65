//! Property tests: arbitrary event streams (random fields, LF/CR/CRLF line ends, unicode, optional
//! BOM, optional unterminated tail) under arbitrary chunkings.
//!
//! - framer events and pipeline output do not depend on the chunking;
//! - the stream engine, ended by any input (clean end, failure, idle, max duration,
//!   shutdown, none), gives the same output, hits and outcome under any chunking, and
//!   every run keeps the engine's promises (`framing::drive::check`);
//! - the pipeline output (no rules) means to a client exactly what the input meant, judged by the
//!   independent reference parser in `support`.

mod framing;

use std::sync::Arc;

use bytes::Bytes;
use framing::drive::{self, End};
use framing::{
    cut, design_pipeline, frame_chunks, frame_whole, pipe_chunks, protocol_pipelines,
    reference_parse, MAX,
};
use proptest::prelude::*;
use sse_gateway::rewrite::Pipeline;

/// Text for names and values: any unicode except line ends, colons where they would change the
/// line's meaning, and U+FEFF. (A stream that starts with two BOMs would make the gateway's first
/// output byte a BOM, which the next parser strips: a known limitation, not tested here.)
const TEXT: &str = "[^\r\n\u{feff}]{0,12}";
const NAME_TEXT: &str = "[^\r\n:\u{feff}]{1,8}";

fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r"), Just("\r\n")]
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("data".to_string()),
        1 => Just("event".to_string()),
        1 => Just("id".to_string()),
        1 => Just("retry".to_string()),
        1 => Just("Data".to_string()),
        1 => Just("event".to_string()),
        1 => Just("{\"value\"".to_string()),
        1 => NAME_TEXT,
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => TEXT.prop_map(String::from),
        1 => Just(String::new()),
        1 => Just("[DONE]".to_string()),
        1 => Just("a\0b".to_string()),
        1 => "[0-9]{1,4}".prop_map(String::from),
        1 => Just("{\"text\":\"hi\"}".to_string()),
        // What the protocols' classifications look for.
        1 => prop::sample::select(vec![
            "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}",
            "{\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}",
            "{\"error\":{\"type\":\"server_error\",\"message\":\"boom\"}}",
            "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}",
            "{\"type\":\"response.output_text.delta\",\"sequence_number\":3}",
            "{\"type\":\"ping\"}",
            "message_stop",
            "message_delta",
            "response.completed",
            "response.failed",
            "error",
            "ping",
            "done",
        ])
        .prop_map(String::from),
    ]
}

/// One non-empty line, without its line end.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        // name:value, name: value
        6 => (field_name(), any::<bool>(), value())
            .prop_map(|(n, space, v)| format!("{n}:{}{v}", if space { " " } else { "" })),
        // name without colon
        2 => field_name(),
        // comment
        2 => TEXT.prop_map(|t| format!(":{t}")),
        // orphan line, as in the blog case
        1 => Just("{\"value\":\"x\"}".to_string()),
    ]
}

/// A stream: optional BOM, events made of lines and line ends, blank lines, an optional tail.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let event = (
        prop::collection::vec((line(), line_end()), 1..5),
        line_end(),
        0..3usize,
    );
    (
        any::<bool>(),
        prop::collection::vec(event, 0..8),
        prop::option::of(prop::collection::vec((line(), line_end()), 1..3)),
        any::<bool>(),
    )
        .prop_map(|(bom, events, tail, tail_line_end)| {
            let mut out = String::new();
            if bom {
                out.push('\u{feff}');
            }
            for (lines, blank, extra_blank) in events {
                for (line, end) in lines {
                    out.push_str(&line);
                    out.push_str(end);
                }
                for _ in 0..=extra_blank {
                    out.push_str(blank);
                }
            }
            if let Some(lines) = tail {
                let count = lines.len();
                for (i, (line, end)) in lines.into_iter().enumerate() {
                    out.push_str(&line);
                    if i + 1 < count || tail_line_end {
                        out.push_str(end);
                    }
                }
            }
            out.into_bytes()
        })
}

/// Cut points; reduced modulo the stream length by `cut`'s clamping after scaling.
fn cuts() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..24)
}

fn offsets(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
    cuts.iter().map(|index| index.index(len + 1)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn framer_is_independent_of_chunking(input in stream(), cuts in cuts()) {
        let whole = frame_whole(&input);
        let pieces = cut(&input, &offsets(input.len(), &cuts));
        prop_assert_eq!(whole, frame_chunks(pieces, MAX));
    }

    #[test]
    fn oversize_is_independent_of_chunking(input in stream(), cuts in cuts(), limit in 1..64usize) {
        let whole = frame_chunks([&input[..]], limit);
        let pieces = cut(&input, &offsets(input.len(), &cuts));
        prop_assert_eq!(whole, frame_chunks(pieces, limit));
    }

    #[test]
    fn pipeline_is_independent_of_chunking(input in stream(), cuts in cuts()) {
        let pipeline = design_pipeline();
        let whole = pipe_chunks(&pipeline, [&input[..]]);
        let pieces = cut(&input, &offsets(input.len(), &cuts));
        prop_assert_eq!(whole, pipe_chunks(&pipeline, pieces));
    }

    #[test]
    fn pipeline_without_rules_keeps_meaning(input in stream(), cuts in cuts()) {
        let pipeline = Pipeline::new(Vec::new(), None);
        let pieces = cut(&input, &offsets(input.len(), &cuts));
        let piped = pipe_chunks(&pipeline, pieces);
        prop_assert!(!piped.output.contains(&b'\r'), "output is LF-only");
        // The gateway completes a clean EOF's tail, so compare with the input read that way.
        let expected = reference_parse(&input, true);
        let got = reference_parse(&piped.output, false);
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn design_pipeline_output_is_well_formed(input in stream()) {
        let piped = pipe_chunks(&design_pipeline(), [&input[..]]);
        prop_assert!(!piped.output.contains(&b'\r'));
        for sent in &piped.sent {
            // Each send is exactly one event: no blank line before its end.
            prop_assert!(sent.ends_with(b"\n\n"));
            let body = &sent[..sent.len() - 1];
            prop_assert!(!body[..body.len() - 1].windows(2).any(|w| w == b"\n\n"));
            prop_assert!(!sent.starts_with(b"\n"));
        }
    }

    #[test]
    fn engine_keeps_its_promises_under_any_chunking_and_any_end(
        input in stream(),
        cuts in cuts(),
        end in 0..End::ALL.len(),
        late in 0..End::ALL.len(),
        limit in prop_oneof![3 => Just(MAX), 1 => 1..64usize],
    ) {
        let pipeline = Arc::new(design_pipeline());
        let (end, late) = (End::ALL[end], End::ALL[late]);
        let whole = drive::drive(&pipeline, limit, [Bytes::copy_from_slice(&input)], end, late);
        drive::check(&pipeline, end, &whole);
        let reads = cut(&input, &offsets(input.len(), &cuts))
            .into_iter()
            .map(Bytes::copy_from_slice);
        let pieces = drive::drive(&pipeline, limit, reads, end, late);
        drive::check(&pipeline, end, &pieces);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn every_protocol_keeps_its_promises_under_any_chunking_and_any_end(
        input in stream(),
        cuts in cuts(),
        protocol in 0..4usize,
        end in 0..End::ALL.len(),
        late in 0..End::ALL.len(),
    ) {
        let pipeline = Arc::new(protocol_pipelines().swap_remove(protocol));
        let (end, late) = (End::ALL[end], End::ALL[late]);
        let whole = drive::drive(&pipeline, MAX, [Bytes::copy_from_slice(&input)], end, late);
        drive::check(&pipeline, end, &whole);
        let reads = cut(&input, &offsets(input.len(), &cuts))
            .into_iter()
            .map(Bytes::copy_from_slice);
        let pieces = drive::drive(&pipeline, MAX, reads, end, late);
        drive::check(&pipeline, end, &pieces);
        prop_assert_eq!(whole, pieces);
    }
}
