//! Shared helpers for the integration tests: feeding the framer in chunks, running a stream
//! through the stream engine as the proxy does, the docs/architecture.md example rules, and an independent
//! reference parser.
#![allow(dead_code)] // each test binary uses a different subset

pub mod drive;
pub mod read_response;

use std::sync::Arc;

use bytes::Bytes;
use regex::bytes::Regex;
use sse_gateway::engine::Outcome;
use sse_gateway::protocol::{CompleteWhen, Contract, Protocol};
use sse_gateway::rewrite::{Pipeline, Rule, Terminator, TerminatorMatch};
use sse_gateway::sse::{FrameError, Framer};

/// Generous limit for tests that are not about size.
pub const MAX: usize = 1 << 20;

/// What the framer made of a whole stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Framed {
    /// Complete events, then the completed tail (if any), in order.
    pub events: Vec<Bytes>,
    /// Set when the framer failed; no tail is taken then.
    pub error: Option<FrameError>,
}

/// Feeds `chunks` one by one, draining after each push, then finishes.
pub fn frame_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max: usize) -> Framed {
    let mut framer = Framer::new(max);
    let mut framed = Framed::default();
    for chunk in chunks {
        framer.push(Bytes::copy_from_slice(chunk));
        if drain(&mut framer, &mut framed) {
            return framed;
        }
    }
    if let Some(tail) = framer.finish() {
        framed.events.push(tail.into_bytes());
    }
    framed
}

fn drain(framer: &mut Framer, framed: &mut Framed) -> bool {
    loop {
        match framer.next_event() {
            Ok(Some(event)) => framed.events.push(event.into_bytes()),
            Ok(None) => return false,
            Err(error) => {
                framed.error = Some(error);
                return true;
            }
        }
    }
}

/// The whole input as one chunk.
pub fn frame_whole(input: &[u8]) -> Framed {
    frame_chunks([input], MAX)
}

/// `input` cut at the given offsets (sorted, clamped, duplicates make empty chunks).
pub fn cut<'a>(input: &'a [u8], offsets: &[usize]) -> Vec<&'a [u8]> {
    let mut offsets: Vec<usize> = offsets.iter().map(|&o| o.min(input.len())).collect();
    offsets.sort_unstable();
    let mut pieces = Vec::with_capacity(offsets.len() + 1);
    let mut start = 0;
    for offset in offsets {
        pieces.push(&input[start..offset]);
        start = offset;
    }
    pieces.push(&input[start..]);
    pieces
}

/// One-byte pieces.
pub fn bytewise(input: &[u8]) -> Vec<&[u8]> {
    input.chunks(1).collect()
}

/// What the proxy would send downstream for a stream, and how it ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Piped {
    /// Everything sent downstream, concatenated.
    pub output: Vec<u8>,
    /// The events sent downstream, one entry each, as a client reads them.
    pub sent: Vec<Bytes>,
    /// The stream ended on a terminator from the upstream.
    pub terminated: bool,
    /// A terminator was synthesized at EOF.
    pub synthesized: bool,
    /// Rule hits, indexed like `pipeline.rules()`.
    pub hits: Vec<usize>,
    pub error: Option<FrameError>,
}

/// Runs `chunks` through the stream engine the way the proxy does: stop at the
/// terminator, complete the tail at EOF, synthesize a terminator when the upstream
/// sent none.
pub fn pipe_chunks<'a>(pipeline: &Pipeline, chunks: impl IntoIterator<Item = &'a [u8]>) -> Piped {
    let pipeline = Arc::new(pipeline.clone());
    let reads = chunks.into_iter().map(Bytes::copy_from_slice);
    let run = drive::drive(&pipeline, MAX, reads, drive::End::Clean, drive::End::Clean);
    drive::check(&pipeline, drive::End::Clean, &run);
    let sent = drive::events(&run.output)
        .into_iter()
        .map(Bytes::copy_from_slice)
        .collect();
    Piped {
        sent,
        terminated: run.outcome == Some(Outcome::Terminator),
        synthesized: run.outcome == Some(Outcome::UpstreamEof)
            && pipeline.synthesized_terminator().is_some(),
        hits: run
            .hits
            .iter()
            .map(|&h| usize::try_from(h).expect("a count"))
            .collect(),
        error: (run.outcome == Some(Outcome::Oversize))
            .then_some(FrameError::Oversize { limit: MAX }),
        output: run.output,
    }
}

pub fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("test pattern compiles")
}

/// The `[DONE]` terminator of the example route (docs/architecture.md): forwarded, synthesized at EOF.
pub fn done_terminator() -> Terminator {
    Terminator {
        matcher: TerminatorMatch::Data(Bytes::from_static(b"[DONE]")),
        forward: true,
        synthesize_on_eof: true,
    }
}

/// The pipelines of every protocol: each preset with the orphan-line repair, and `sse`
/// with `complete_when: {event: done}` and the `[DONE]` terminator.
pub fn protocol_pipelines() -> Vec<Pipeline> {
    let repair = || vec![Rule::repair_orphan_lines("repair".into())];
    let mut pipelines: Vec<Pipeline> = [
        Protocol::OpenaiChat,
        Protocol::OpenaiResponses,
        Protocol::Anthropic,
    ]
    .into_iter()
    .map(|protocol| Pipeline::new(repair(), None).with_contract(Contract::preset(protocol)))
    .collect();
    pipelines.push(
        Pipeline::new(repair(), Some(done_terminator())).with_contract(Contract {
            protocol: Protocol::Sse,
            complete_when: Some(CompleteWhen::Event(Bytes::from_static(b"done"))),
        }),
    );
    pipelines
}

/// The docs/architecture.md example pipeline, compiled from the example config
/// (`tests/fixtures/configs/valid/design.yaml`) exactly as the gateway compiles a
/// route's `stream` section: the one definition the tests, bench and fuzz target share.
pub fn design_pipeline() -> Pipeline {
    let path = format!(
        "{}/tests/fixtures/configs/valid/design.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let config = sse_gateway::config::GatewayConfig::load(std::path::Path::new(&path))
        .unwrap_or_else(|e| panic!("{e}"));
    let stream = config.routes[0].stream.as_ref().expect("a stream section");
    Pipeline::clone(&stream.pipeline)
}

/// Reads `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Every `tests/fixtures/*.sse`, sorted by name.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| {
            std::path::Path::new(name)
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("sse"))
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = fixture(&name);
            (name, bytes)
        })
        .collect()
}

/// One event as a client dispatches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatched {
    pub event_type: Vec<u8>,
    pub data: Vec<u8>,
    pub last_event_id: Vec<u8>,
}

/// A straightforward WHATWG event-stream parser over a whole input, written independently of the
/// crate: split into lines, then process each line as the spec's steps say.
///
/// `dispatch_at_eof`: treat the end of input as a final line end and blank line (what the gateway
/// does for a clean EOF) instead of discarding the incomplete event (what a client does).
pub fn reference_parse(input: &[u8], dispatch_at_eof: bool) -> Vec<Dispatched> {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut line = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' => {
                lines.push(std::mem::take(&mut line));
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => lines.push(std::mem::take(&mut line)),
            b => line.push(b),
        }
        i += 1;
    }
    if dispatch_at_eof {
        if !line.is_empty() {
            lines.push(line);
        }
        lines.push(Vec::new());
    }

    let mut out = Vec::new();
    let (mut data, mut event_type, mut id_buffer) = (Vec::new(), Vec::new(), Vec::new());
    for line in lines {
        if line.is_empty() {
            let last_event_id = id_buffer.clone();
            if data.is_empty() {
                event_type.clear();
                continue;
            }
            if data.last() == Some(&b'\n') {
                data.pop();
            }
            let event_type = std::mem::take(&mut event_type);
            out.push(Dispatched {
                event_type: if event_type.is_empty() {
                    b"message".to_vec()
                } else {
                    event_type
                },
                data: std::mem::take(&mut data),
                last_event_id,
            });
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        match name {
            b"event" => event_type = value.to_vec(),
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            b"id" if !value.contains(&0) => id_buffer = value.to_vec(),
            _ => {}
        }
    }
    out
}
