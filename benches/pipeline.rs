//! Throughput of the stream engine (framer, pipeline, frames, endings), driven exactly as
//! the live body drives it, on a realistic LLM stream (~200-byte OpenAI-style chunks with
//! an occasional `: ping`), pushed in 4 KiB reads and in irregular reads of 1..=1500 bytes.
//!
//! Run: `cargo bench --bench pipeline` (add `-- --quick` for a short run).
//!
//! - `no_rules`: framing and zero-copy forwarding only;
//! - `design_rules`: the example route of docs/architecture.md (repair, two replaces, drop pings, `[DONE]`);
//!   deltas use `"content"`, so only the pings are touched;
//! - `design_rules_rewrite`: same rules, every delta uses `"text"`, so every event is rewritten;
//! - `design_rules_repair`: same rules, every event also arrives as `data:\n{...}` and needs
//!   repair;
//! - `openai_chat_preset`: the `design_rules` route and stream with `protocol: openai-chat`,
//!   so every event is also classified (finish reason, in-band error): the preset's cost.
//!
//! Measured 2026-11-24 on the 2-core dev machine while another build ran (load ~2), 4 KiB /
//! irregular reads: `no_rules` 3.07 / 2.73 GiB/s; `design_rules` 926 / 898 MiB/s;
//! `design_rules_rewrite` 311 / 262 MiB/s; `design_rules_repair` 247 / 247 MiB/s.
//!
//! `openai_chat_preset` against `design_rules`, 2026-11-29, same machine under load ~6 (other
//! builds and load tests): `--quick` runs swing by ±20 % between runs (1.09–1.28 GiB/s for
//! `design_rules`, 1.12–1.41 GiB/s for the preset); timed alternately, the fastest of 400 runs
//! over the 1 MiB stream in 4 KiB reads is 129 ns per event for `design_rules` and 141 ns with the
//! preset (+9 %): one search of an event's last 64 bytes for `"finish_reason"`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sse_gateway::engine::{Engine, Outcome};
use sse_gateway::protocol::{Contract, Protocol};
use sse_gateway::rewrite::Pipeline;

#[path = "../tests/framing/mod.rs"]
mod framing;

/// Size of the generated stream.
const STREAM_BYTES: usize = 1 << 20;
/// A ping comment every this many events.
const PING_EVERY: usize = 50;
const MAX_EVENT_SIZE: usize = 1 << 20;

#[derive(Clone, Copy)]
enum Shape {
    /// `data: {..."content":"tok"...}`
    Content,
    /// `data: {..."text":"tok"...}`
    Text,
    /// `data:\n{..."text":"tok"...}`
    BrokenText,
}

fn stream(shape: Shape) -> Vec<u8> {
    let tokens = [
        "Hel", "lo", ",", " wor", "ld", "!", " The", " quick", " brown", " fox",
    ];
    let mut out = Vec::with_capacity(STREAM_BYTES + 512);
    let mut i = 0;
    while out.len() < STREAM_BYTES {
        if i % PING_EVERY == PING_EVERY - 1 {
            out.extend_from_slice(b": ping\n\n");
        }
        let (prefix, key) = match shape {
            Shape::Content => ("data: ", "content"),
            Shape::Text => ("data: ", "text"),
            Shape::BrokenText => ("data:\n", "text"),
        };
        let event = format!(
            "{prefix}{{\"id\":\"chatcmpl-8f3kQ2x9Zr7LmNp4\",\"object\":\"chat.completion.chunk\",\
             \"created\":{},\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\
             \"delta\":{{\"{key}\":\"{}\"}},\"finish_reason\":null}}]}}\n\n",
            1_700_000_000 + i,
            tokens[i % tokens.len()]
        );
        out.extend_from_slice(event.as_bytes());
        i += 1;
    }
    out.extend_from_slice(
        b"data: {\"id\":\"chatcmpl-8f3kQ2x9Zr7LmNp4\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    );
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn fixed_chunks(stream: &Bytes, size: usize) -> Vec<Bytes> {
    (0..stream.len())
        .step_by(size)
        .map(|start| stream.slice(start..(start + size).min(stream.len())))
        .collect()
}

/// Irregular reads of 1..=1500 bytes from a fixed-seed generator (repeatable runs).
fn irregular_chunks(stream: &Bytes) -> Vec<Bytes> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < stream.len() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let size = 1 + (state >> 33) as usize % 1500;
        let end = (start + size).min(stream.len());
        chunks.push(stream.slice(start..end));
        start = end;
    }
    chunks
}

/// What the proxy does per stream: each read pushed, its frames taken, then the
/// upstream's end. Returns bytes sent so the work cannot be optimised away.
fn run(pipeline: &Arc<Pipeline>, route: &Arc<str>, chunks: &[Bytes]) -> usize {
    let mut engine = Engine::new(pipeline.clone(), MAX_EVENT_SIZE, route.clone());
    let mut sent = 0;
    let mut take = |engine: &mut Engine| {
        while let Some(frame) = engine.next_frame() {
            sent += frame.len();
        }
        usize::try_from(engine.take_progress().rules_hit).expect("a count")
    };
    let mut hits = 0;
    for chunk in chunks {
        engine.push(chunk.clone());
        hits += take(&mut engine);
        if engine.outcome().is_some() {
            break;
        }
    }
    engine.upstream_end();
    hits += take(&mut engine);
    // Every case must run the whole stream to its end (its `[DONE]` where the route has
    // a terminator), or it measures less work.
    let whole = match pipeline.terminator() {
        Some(_) => Outcome::Terminator,
        None => Outcome::UpstreamEof,
    };
    assert_eq!(engine.outcome(), Some(whole));
    sent + hits
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("no_rules", Shape::Content, Pipeline::new(Vec::new(), None)),
        ("design_rules", Shape::Content, framing::design_pipeline()),
        (
            "design_rules_rewrite",
            Shape::Text,
            framing::design_pipeline(),
        ),
        (
            "design_rules_repair",
            Shape::BrokenText,
            framing::design_pipeline(),
        ),
        (
            "openai_chat_preset",
            Shape::Content,
            framing::design_pipeline().with_contract(Contract::preset(Protocol::OpenaiChat)),
        ),
    ];
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(20);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(3));
    let route: Arc<str> = Arc::from("chat");
    for (name, shape, pipeline) in cases {
        let pipeline = Arc::new(pipeline);
        let stream = Bytes::from(stream(shape));
        group.throughput(Throughput::Bytes(stream.len() as u64));
        for (reads, chunks) in [
            ("4KiB", fixed_chunks(&stream, 4096)),
            ("irregular", irregular_chunks(&stream)),
        ] {
            group.bench_with_input(BenchmarkId::new(name, reads), &chunks, |b, chunks| {
                b.iter(|| black_box(run(&pipeline, &route, black_box(chunks))));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
