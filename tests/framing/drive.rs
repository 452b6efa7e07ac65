//! Drives the stream engine as the live body does, and checks what every run must
//! satisfy. Shared by the tests and the fuzz target (which includes this file), so
//! both drive and judge the engine the same way.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sse_gateway::engine::{Engine, Outcome, Stop};
use sse_gateway::protocol::{FinishReasons, Protocol, Usage};
use sse_gateway::rewrite::Pipeline;
use sse_gateway::sse::Event;

/// What ends a driven stream, after its reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The upstream ends its response cleanly.
    Clean,
    /// The upstream fails (a reset).
    Failure,
    /// The supervisor's verdicts.
    IdleTimeout,
    MaxDuration,
    Shutdown,
    /// Nothing: the reads just stop (a client that left, from the engine's view).
    Open,
}

impl End {
    pub const ALL: [End; 6] = [
        End::Clean,
        End::Failure,
        End::IdleTimeout,
        End::MaxDuration,
        End::Shutdown,
        End::Open,
    ];

    fn give(self, engine: &mut Engine) {
        match self {
            End::Clean => engine.upstream_end(),
            End::Failure => engine.upstream_failure(&"connection reset by peer"),
            End::IdleTimeout => engine.stop(Stop::IdleTimeout {
                after: Duration::from_secs(300),
            }),
            End::MaxDuration => engine.stop(Stop::MaxDuration {
                limit: Duration::from_secs(1800),
            }),
            End::Shutdown => engine.stop(Stop::Shutdown),
            End::Open => {}
        }
    }
}

/// Everything observable about one run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// Every byte sent downstream.
    pub output: Vec<u8>,
    pub outcome: Option<Outcome>,
    /// Hits per rule, indexed like the pipeline's rules.
    pub hits: Vec<u64>,
    pub events_in: u64,
    pub events_out: u64,
    /// The route's protocol saw the answer complete.
    pub evidence: bool,
    /// Why the answer ended, as the upstream said.
    pub finish_reasons: FinishReasons,
    /// The upstream's token usage, as last reported.
    pub usage: Option<Usage>,
}

/// Pushes each read, takes every frame after it (the live body sends all it has
/// before it reads again), then gives `end`, then `late`: a second input, which must
/// change nothing once the outcome is decided.
pub fn drive(
    pipeline: &Arc<Pipeline>,
    max_event_size: usize,
    reads: impl IntoIterator<Item = Bytes>,
    end: End,
    late: End,
) -> Run {
    let mut engine = Engine::new(pipeline.clone(), max_event_size, Arc::from("chat"));
    let mut run = Run {
        hits: vec![0; pipeline.rules().len()],
        ..Run::default()
    };
    let take = |engine: &mut Engine, run: &mut Run| {
        while let Some(frame) = engine.next_frame() {
            assert!(!frame.is_empty(), "an empty frame");
            run.output.extend_from_slice(&frame);
        }
        let progress = engine.take_progress();
        run.events_in += progress.events_in;
        run.events_out += progress.events_out;
        run.finish_reasons.add(progress.finish_reasons);
        if let Some(usage) = progress.usage {
            run.usage.get_or_insert_default().update(usage);
        }
        engine.take_rule_hits(|rule, hits| run.hits[rule] += hits);
    };
    for read in reads {
        engine.push(read);
        take(&mut engine, &mut run);
    }
    end.give(&mut engine);
    take(&mut engine, &mut run);
    run.outcome = engine.outcome();
    run.evidence = engine.has_evidence();
    if run.outcome.is_some() {
        assert!(engine.is_finished(), "frames left after the end");
        late.give(&mut engine);
        engine.push(Bytes::from_static(b"data: late\n\n"));
        take(&mut engine, &mut run);
        assert_eq!(engine.outcome(), run.outcome, "a second outcome");
    }
    run
}

/// The events of an output (each ends at its one blank line).
pub fn events(output: &[u8]) -> Vec<&[u8]> {
    let mut events = Vec::new();
    let mut rest = output;
    while let Some(at) = rest.windows(2).position(|w| w == b"\n\n") {
        events.push(&rest[..at + 2]);
        rest = &rest[at + 2..];
    }
    assert!(rest.is_empty(), "output ends inside an event: {rest:?}");
    events
}

/// The `type` of a gateway error event in `protocol`'s shape, if `event` is one.
fn error_event_type(protocol: Protocol, event: &[u8]) -> Option<String> {
    let data = event.strip_prefix(b"event: error\ndata: ")?;
    let json: serde_json::Value = serde_json::from_slice(data.strip_suffix(b"\n\n")?).ok()?;
    let error_type = match protocol {
        Protocol::OpenaiResponses => {
            assert!(
                json["sequence_number"].is_u64(),
                "a numbered Responses error"
            );
            &json["code"]
        }
        _ => &json["error"]["type"],
    };
    error_type.as_str().map(str::to_owned)
}

/// What every run must satisfy: exactly one outcome once it ended; nothing after the
/// terminator; an error event exactly when the end is an error, in the protocol's
/// shape, followed by the synthesized terminator where the route synthesizes one and
/// the protocol closes after errors; an end without the evidence the route asks for is
/// `truncated`, never a success.
pub fn check(pipeline: &Pipeline, end: End, run: &Run) {
    let Some(outcome) = run.outcome else {
        assert_eq!(end, End::Open, "no outcome after {end:?}");
        return;
    };
    assert!(!run.output.contains(&b'\r'), "output is LF-only");
    let events = events(&run.output);
    for event in &events {
        assert!(!event.starts_with(b"\n"), "an empty line before an event");
    }
    let contract = pipeline.contract();
    let protocol = contract.protocol;
    let terminator = pipeline.terminator();
    let synthesized = pipeline.synthesized_terminator();
    // The error event the gateway writes for this outcome, if any; with the evidence a
    // cut is a complete answer and gets none.
    let error_type = match outcome {
        Outcome::Terminator
        | Outcome::UpstreamEof
        | Outcome::ClientClosed
        | Outcome::UpstreamErrorEvent => None,
        Outcome::Oversize => Some("oversize"),
        _ if run.evidence => None,
        Outcome::Truncated => Some("upstream_incomplete"),
        Outcome::IdleTimeout => Some("upstream_idle_timeout"),
        Outcome::MaxDuration => Some("max_duration"),
        Outcome::UpstreamError => Some("upstream_error"),
        Outcome::Shutdown => Some("shutdown"),
    };
    if outcome == Outcome::Terminator {
        let last = events.last().map(|last| &last[..last.len() - 1]);
        match terminator {
            Some(terminator) if terminator.forward => {
                let last = last.expect("the terminator was sent");
                // Or the protocol's terminal event, known by its data alone.
                let terminal = || {
                    contract
                        .classify(&[last, b"\n"].concat(), pipeline.ends_at_terminal_events())
                        .terminal
                };
                assert!(
                    terminator.matches(&Event::new(last)) || terminal(),
                    "the last event is not the terminator: {last:?}"
                );
            }
            Some(_) => {}
            None => {
                let last = last.expect("the terminal event was sent");
                let class = contract.classify(&[last, b"\n"].concat(), true);
                assert!(class.terminal, "the last event is not terminal: {last:?}");
            }
        }
    } else {
        let is_error = error_type.is_some() || outcome == Outcome::UpstreamErrorEvent;
        let mut tail = events.iter().rev();
        if let Some(synthesized) = &synthesized {
            if !is_error || protocol.closes_after_error() {
                assert_eq!(tail.next().copied(), Some(&synthesized[..]), "synthesized");
            }
        }
        if let Some(error_type) = error_type {
            let error = tail.next().expect("an error event");
            assert_eq!(
                error_event_type(protocol, error).as_deref(),
                Some(error_type),
                "not the error event: {error:?}"
            );
        }
        if outcome == Outcome::UpstreamErrorEvent {
            let error = tail.next().expect("the upstream's error event");
            let class = contract.classify(error, pipeline.terminator().is_none());
            assert!(
                class.upstream_error.is_some(),
                "not an upstream error: {error:?}"
            );
        }
    }
    let expected = match end {
        End::Clean => Outcome::UpstreamEof,
        End::Failure => Outcome::UpstreamError,
        End::IdleTimeout => Outcome::IdleTimeout,
        End::MaxDuration => Outcome::MaxDuration,
        End::Shutdown => Outcome::Shutdown,
        End::Open => outcome,
    };
    if !matches!(
        outcome,
        Outcome::Terminator | Outcome::Oversize | Outcome::UpstreamErrorEvent
    ) {
        if contract.asks_evidence() && !run.evidence && end != End::Open {
            assert_eq!(outcome, Outcome::Truncated, "an end without evidence");
        } else {
            assert_eq!(outcome, expected, "the outcome of {end:?}");
        }
    }
}
