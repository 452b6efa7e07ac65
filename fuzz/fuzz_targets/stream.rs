//! Fuzz target: arbitrary bytes, cut into arbitrary chunks, through framer and the DESIGN.md
//! example pipeline. Must never panic, and chunking must never change the result.
//!
//! Input layout: byte 0 picks `max_event_size`, bytes 1..9 seed the chunk sizes, the rest is the
//! upstream stream.
//!
//! Run from the crate root (stable toolchain; cargo-fuzz needs nightly flags, hence the bootstrap):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run stream -- -max_total_time=600`
//! Seed with the fixtures:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run stream fuzz/corpus/stream tests/fixtures`.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use gateway::rewrite::Pipeline;
use gateway::sse::Framer;
use libfuzzer_sys::fuzz_target;

/// Largest chunk the fuzzer cuts; small, so CR/LF pairs and BOMs get split often.
const MAX_CHUNK: u64 = 17;

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(gateway::supervise::design_example_pipeline)
}

/// Everything observable about one run: events framed, output sent, rule hits, how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    events: Vec<Bytes>,
    sent: Vec<Bytes>,
    hits: Vec<usize>,
    terminated: bool,
    oversize: bool,
}

fn run(chunks: impl IntoIterator<Item = Bytes>, max_event_size: usize) -> Run {
    let pipeline = pipeline();
    let mut framer = Framer::new(max_event_size);
    let mut run = Run {
        events: Vec::new(),
        sent: Vec::new(),
        hits: vec![0; pipeline.rules().len()],
        terminated: false,
        oversize: false,
    };
    let apply = |run: &mut Run, event: gateway::sse::RawEvent| {
        assert!(event.as_bytes().len() <= max_event_size + 2);
        run.events.push(event.as_bytes().clone());
        let hits = &mut run.hits;
        let verdict = pipeline.apply(event, &mut |i| hits[i] += 1);
        if let Some(out) = verdict.output {
            assert!(
                out.ends_with(b"\n\n") && !out.contains(&b'\r'),
                "bad output {out:?}"
            );
            run.sent.push(out);
        }
        run.terminated = verdict.is_terminator;
        verdict.is_terminator
    };
    for chunk in chunks {
        framer.push(chunk);
        loop {
            match framer.next_event() {
                Ok(Some(event)) => {
                    if apply(&mut run, event) {
                        return run;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    run.oversize = true;
                    return run;
                }
            }
        }
    }
    if let Some(tail) = framer.finish() {
        apply(&mut run, tail);
    }
    run
}

fuzz_target!(|data: &[u8]| {
    let Some((&size_byte, rest)) = data.split_first() else {
        return;
    };
    let (seed, stream) = rest.split_at(rest.len().min(8));
    let max_event_size = match size_byte {
        0..=127 => 1 << 20,
        small => usize::from(small - 127),
    };
    let stream = Bytes::copy_from_slice(stream);

    let whole = run([stream.clone()], max_event_size);

    let mut state = seed.iter().fold(0x9E37_79B9_7F4A_7C15u64, |s, &b| {
        (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    });
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < stream.len() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Zero-length chunks too: an empty read must change nothing.
        let size = ((state >> 33) % (MAX_CHUNK + 1)) as usize;
        let end = (start + size).min(stream.len());
        chunks.push(stream.slice(start..end));
        start = end;
    }
    let pieces = run(chunks, max_event_size);
    assert_eq!(whole, pieces, "chunking changed the result");
});
