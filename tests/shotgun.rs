//! "The shotgun": every fixture fed split at every byte offset, and in one-byte pieces, must give
//! the same events (byte for byte) and the same pipeline output as when fed in one piece.

mod framing;

use framing::{
    bytewise, cut, design_pipeline, fixtures, frame_chunks, frame_whole, pipe_chunks, Framed, MAX,
};

#[test]
fn fixtures_are_present() {
    let names: Vec<String> = fixtures().into_iter().map(|(name, _)| name).collect();
    for wanted in [
        "lf", "cr", "crlf", "bom", "utf8", "blog", "pings", "tail", "mixed", "openai",
    ] {
        assert!(
            names.contains(&format!("{wanted}.sse")),
            "missing fixture {wanted}.sse"
        );
    }
}

#[test]
fn framer_events_do_not_depend_on_chunking() {
    for (name, input) in fixtures() {
        let whole = frame_whole(&input);
        assert!(!whole.events.is_empty(), "{name}: no events");
        assert_eq!(whole.error, None, "{name}");
        for at in 0..=input.len() {
            let split = frame_chunks(cut(&input, &[at]), MAX);
            assert_same(&name, &format!("split at {at}"), &whole, &split);
        }
        let bytes = frame_chunks(bytewise(&input), MAX);
        assert_same(&name, "one-byte pieces", &whole, &bytes);
    }
}

#[test]
fn pipeline_output_does_not_depend_on_chunking() {
    let pipeline = design_pipeline();
    for (name, input) in fixtures() {
        let whole = pipe_chunks(&pipeline, [&input[..]]);
        assert!(!whole.output.is_empty(), "{name}: no output");
        for at in 0..=input.len() {
            let split = pipe_chunks(&pipeline, cut(&input, &[at]));
            assert_eq!(whole, split, "{name}: split at {at}");
        }
        assert_eq!(
            whole,
            pipe_chunks(&pipeline, bytewise(&input)),
            "{name}: one-byte pieces"
        );
    }
}

#[test]
fn every_fixture_ends_on_done() {
    // All fixtures carry a `[DONE]`, some only after repair or tail completion.
    let pipeline = design_pipeline();
    for (name, input) in fixtures() {
        let piped = pipe_chunks(&pipeline, bytewise(&input));
        assert!(piped.terminated, "{name}: no terminator recognised");
        assert!(piped.output.ends_with(b"[DONE]\n\n"), "{name}");
        assert!(
            !piped.output.contains(&b'\r'),
            "{name}: output must be LF-only"
        );
    }
}

fn assert_same(name: &str, how: &str, whole: &Framed, other: &Framed) {
    assert_eq!(whole.error, other.error, "{name}: {how}");
    assert_eq!(
        whole.events.len(),
        other.events.len(),
        "{name}: {how}: event count"
    );
    for (i, (a, b)) in whole.events.iter().zip(&other.events).enumerate() {
        assert_eq!(a, b, "{name}: {how}: event {i}");
    }
}
