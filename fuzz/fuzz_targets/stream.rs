//! Fuzz target: the stream engine, driven as the live body drives it, on arbitrary
//! bytes cut into arbitrary reads and ended by an arbitrary input (clean end, failure,
//! idle timeout, max duration, shutdown, or none), with the example route of docs/architecture.md as
//! an `sse` route or with each protocol preset.
//!
//! Checks: never a panic; any chunking gives the same output, hits and outcome;
//! exactly one outcome, which a second, late input does not change; nothing after the
//! terminator; an error event exactly where the end is an error, in the protocol's
//! shape, followed by the synthesized terminator where the protocol closes so; an end
//! without completion evidence is never a success (`tests/framing/drive.rs`, shared
//! with the tests).
//!
//! Input layout: byte 0 picks `max_event_size`, byte 1 the end (low nibble) and the
//! late input (high nibble), byte 2 the protocol, bytes 3..11 seed the read sizes, the
//! rest is the upstream stream.
//!
//! Run from the crate root (stable toolchain; cargo-fuzz needs nightly flags, hence the bootstrap):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run stream -- -max_total_time=600`
//! Seed with the fixtures:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run stream fuzz/corpus/stream tests/fixtures`.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sse_gateway::config::GatewayConfig;
use sse_gateway::protocol::{Contract, Protocol};
use sse_gateway::rewrite::Pipeline;

#[path = "../../tests/framing/drive.rs"]
mod drive;

use drive::End;

/// Largest read the fuzzer cuts; small, so CR/LF pairs and BOMs get split often.
const MAX_READ: u64 = 17;

/// The docs/architecture.md example route's pipeline, compiled as the gateway compiles it, then
/// its rules under each preset (with the preset's terminator).
fn pipelines() -> &'static [Arc<Pipeline>] {
    static PIPELINES: OnceLock<Vec<Arc<Pipeline>>> = OnceLock::new();
    PIPELINES.get_or_init(|| {
        let text = include_str!("../../tests/fixtures/configs/valid/design.yaml");
        let config = GatewayConfig::parse(text, "design.yaml", &|_| None).expect("valid");
        let stream = config.routes[0].stream.as_ref().expect("a stream section");
        let design = stream.pipeline.clone();
        let presets = [
            Protocol::OpenaiChat,
            Protocol::OpenaiResponses,
            Protocol::Anthropic,
        ]
        .map(|protocol| {
            let rules = design.rules().to_vec();
            Arc::new(Pipeline::new(rules, None).with_contract(Contract::preset(protocol)))
        });
        std::iter::once(design).chain(presets).collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let [size_byte, ends, protocol, rest @ ..] = data else {
        return;
    };
    let (seed, stream) = rest.split_at(rest.len().min(8));
    let max_event_size = match size_byte {
        0..=127 => 1 << 20,
        small => usize::from(small - 127),
    };
    let end = End::ALL[usize::from(ends & 0x0f) % End::ALL.len()];
    let late = End::ALL[usize::from(ends >> 4) % End::ALL.len()];
    let stream = Bytes::copy_from_slice(stream);
    let pipelines = pipelines();
    let pipeline = &pipelines[usize::from(*protocol) % pipelines.len()];

    let whole = drive::drive(pipeline, max_event_size, [stream.clone()], end, late);
    drive::check(pipeline, end, &whole);

    let mut state = seed.iter().fold(0x9E37_79B9_7F4A_7C15u64, |s, &b| {
        (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    });
    let mut reads = Vec::new();
    let mut start = 0;
    while start < stream.len() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Zero-length reads too: an empty read must change nothing.
        let size = ((state >> 33) % (MAX_READ + 1)) as usize;
        let end = (start + size).min(stream.len());
        reads.push(stream.slice(start..end));
        start = end;
    }
    let pieces = drive::drive(pipeline, max_event_size, reads, end, late);
    assert_eq!(whole, pieces, "chunking changed the result");
});
