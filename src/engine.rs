//! The stream engine: one event stream's whole life as pure code.
//!
//! Upstream bytes go in ([`Engine::push`]), and so do the ways a stream can end: the
//! upstream's clean end, its failure, and the supervisor's verdicts (idle timeout, max
//! duration, shutdown) as plain calls ([`Engine::stop`]). Out come the frames to send
//! ([`Engine::next_frame`]), exactly one [`Outcome`], and the [`Progress`] the caller
//! turns into metrics, clocks and logs.
//!
//! Sans-I/O, like quinn-proto or rustls: no tokio, no clock, no socket, no metric
//! registry. The live body (`supervise`), the offline `rewrite` command, the fuzz
//! target, the bench and the tests all drive this one engine, so what is fuzzed and
//! benched is what runs.
//!
//! **Frames.** The events that one upstream read completes leave as one frame: events
//! no rule changed are slices of that read, and adjacent ones are joined by re-slicing
//! it, with no copy (`batch`). A rewritten event or a gap starts the next frame.
//!
//! **Endings.** The terminator ends the stream after it is sent (outcome
//! `terminator`); bytes after it are never sent. Every other end sends what the route
//! asks for: an error event in the route's protocol's error shape when the end is an
//! error, then the synthesized terminator when the route synthesizes one. A partial
//! event is never sent: what the framer holds when the stream is cut is dropped, except
//! at a clean upstream end, where the unterminated tail is completed and sent. On a
//! protocol preset's route the tail is sent only when its data is whole JSON: a cut
//! there (most likely in the largest event, the Responses API's `response.completed`
//! repeating the whole answer) would reach the SDK as a JSON error, or as the
//! terminal event with its body missing; a browser would not dispatch it either.
//!
//! **Protocols.** A route whose protocol asks for completion evidence
//! ([`crate::protocol`]) never ends without it looking like a success: whatever cut
//! the stream, the client gets an `upstream_incomplete` error (outcome `truncated`).
//! With the evidence, any cut is a complete answer and gets the terminator. The
//! upstream's own error event is passed through and ends the stream (outcome
//! `upstream_error_event`).

mod batch;
mod outcome;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::HumanDuration;
use crate::protocol::{Choices, Class, FinishReasons, Usage};
use crate::rewrite::Pipeline;
use crate::sse::{FrameError, Framer, RawEvent};
use crate::terminator::TerminatorMatch;

use batch::Batch;

pub use outcome::Outcome;

/// A verdict of the stream's supervisor: the caller owns the clocks and the drain
/// signal, and tells the engine when one of them ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No data from the upstream for `after`.
    IdleTimeout { after: Duration },
    /// The stream reached its `limit`.
    MaxDuration { limit: Duration },
    /// The gateway's drain time ran out.
    Shutdown,
}

/// What happened since the caller last asked ([`Engine::take_progress`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Upstream events framed, dropped ones included.
    pub events_in: u64,
    /// Events forwarded downstream (the terminator and closing frames not counted).
    pub events_out: u64,
    /// Rule hits, all rules together; [`Engine::take_rule_hits`] says which.
    pub rules_hit: u64,
    /// An upstream event that counted as content arrived (dropped or not): the data
    /// clock restarts. Comments such as `: ping` do not count, nor do keep-alive events
    /// that carry data (Anthropic's `event: ping`).
    pub content_seen: bool,
    /// The stream's first data event was forwarded (not a keep-alive).
    pub first_data_event: bool,
    /// Content events forwarded: what the protocol calls content (a non-empty text or
    /// tool-call delta; [`crate::protocol::Class::content`]), not a role-only delta, a
    /// `response.created` or a ping.
    pub content_events: u64,
    /// The stream's first content event was forwarded: time to first token ends here.
    pub first_content_event: bool,
    /// The upstream's own error event ended the stream: its error type, a bounded label.
    pub upstream_error_event: Option<&'static str>,
    /// Token usage the upstream reported (the latest values; totals, not increments).
    pub usage: Option<Usage>,
    /// Finish reasons the upstream gave ([`crate::protocol::FinishReasons`]).
    pub finish_reasons: FinishReasons,
}

/// One event stream's framer, pipeline, frames and outcome.
// Its flags are independent facts about the stream so far, each read by one decision.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub struct Engine {
    framer: Framer,
    pipeline: Arc<Pipeline>,
    /// Named in the error events the engine writes.
    route: Arc<str>,
    /// The frame being collected from the events of the last upstream read.
    batch: Batch,
    /// Frames decided but not yet taken, behind the batch: events that could not join
    /// it without a copy, and closing frames.
    queue: VecDeque<Bytes>,
    outcome: Option<Outcome>,
    progress: Progress,
    first_data_sent: bool,
    /// A content event has been forwarded: the client has seen part of the answer.
    content_sent: bool,
    /// Content or streamed reasoning has been forwarded: the client has seen part of
    /// the model's output.
    output_sent: bool,
    /// Hits per rule since the last [`Engine::take_rule_hits`], indexed like the
    /// pipeline's rules.
    rule_hits: Box<[u32]>,
    /// The route's protocol saw the answer complete.
    evidence: bool,
    /// Chat Completions choices seen and finished: with `n` above 1, the evidence
    /// waits for the last choice to finish.
    choices: Choices,
    /// The upstream's clean end cut an event, which was not sent.
    tail_cut: bool,
    /// The last Responses `sequence_number` forwarded.
    sequence_number: Option<u64>,
    /// What becomes of a usage-only chunk ([`Engine::remove_usage_chunk`]).
    usage_chunk: UsageChunk,
}

/// What the engine does with a Chat Completions usage-only chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UsageChunk {
    /// The client asked for it (or nobody did): it is forwarded.
    Forward,
    /// The gateway asked the upstream for it: it is read, then dropped.
    Remove,
}

impl Engine {
    /// A stream through `pipeline`; events larger than `max_event_size` end it.
    pub fn new(pipeline: Arc<Pipeline>, max_event_size: usize, route: Arc<str>) -> Engine {
        let rules = pipeline.rules().len();
        Engine {
            framer: Framer::new(max_event_size),
            pipeline,
            route,
            batch: Batch::default(),
            queue: VecDeque::new(),
            outcome: None,
            progress: Progress::default(),
            first_data_sent: false,
            content_sent: false,
            output_sent: false,
            rule_hits: vec![0; rules].into_boxed_slice(),
            evidence: false,
            choices: Choices::default(),
            tail_cut: false,
            sequence_number: None,
            usage_chunk: UsageChunk::Forward,
        }
    }

    /// Keep where the events of each frame end ([`Engine::event_ends`]), for a caller
    /// that handles every event of a frame (resume's ids).
    pub fn track_event_ends(&mut self) {
        self.batch.track_ends();
    }

    /// Where the events of the frame [`Engine::next_frame`] returned last end
    /// (exclusive offsets, in order), when the engine tracks them and that frame was
    /// collected from a read; `None` for queued and closing frames, whose events the
    /// caller finds itself.
    pub fn event_ends(&self) -> Option<&[u32]> {
        let ends = self.batch.taken_ends();
        (!ends.is_empty()).then_some(ends)
    }

    /// Drops the Chat Completions usage-only chunk (`choices` empty) after its usage
    /// is read: the gateway added `stream_options.include_usage` to this request, and
    /// the client, which did not ask for it, must not see it.
    pub fn remove_usage_chunk(&mut self) {
        self.usage_chunk = UsageChunk::Remove;
    }

    /// The next upstream read, split anywhere. Ignored once the stream has ended.
    pub fn push(&mut self, chunk: Bytes) {
        if self.outcome.is_none() {
            self.batch.set_chunk(&chunk);
            self.framer.push(chunk);
        }
    }

    /// The next frame to send: queued frames first, then the events that the last
    /// read completed, as one frame. `None`: nothing to send until the next input.
    pub fn next_frame(&mut self) -> Option<Bytes> {
        // Only a frame the batch hands over now has its ends.
        self.batch.forget_taken_ends();
        if let Some(frame) = self.queue.pop_front() {
            return Some(frame);
        }
        // Polled several times per event; most polls find nothing new to frame.
        if self.outcome.is_some() || self.framer.is_drained() {
            return None;
        }
        self.run(false).or_else(|| self.queue.pop_front())
    }

    /// The upstream ended its response cleanly: its unterminated tail is completed
    /// and sent, then the stream ends (`upstream_eof`, with the synthesized
    /// terminator), unless the tail was the terminator.
    pub fn upstream_end(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        if let Some(frame) = self.run(true) {
            // Ahead of anything the run queued behind it.
            self.queue.push_front(frame);
        }
        if self.outcome.is_none() {
            if self.lacks_evidence() {
                self.truncated(if self.tail_cut {
                    "the upstream closed the stream in the middle of an event"
                } else {
                    "the upstream closed the stream"
                });
            } else {
                self.end(Outcome::UpstreamEof, None);
            }
        }
    }

    /// The upstream failed mid-stream (reset, bad chunked encoding): the partial
    /// event is dropped and the stream ends with an error event.
    pub fn upstream_failure(&mut self, error: &dyn fmt::Display) {
        let message = format!("upstream failed mid-stream: {error}");
        self.cut(Outcome::UpstreamError, StreamError::UpstreamError, message);
    }

    /// The supervisor ends the stream, between events.
    pub fn stop(&mut self, stop: Stop) {
        let (outcome, error, message) = match stop {
            Stop::IdleTimeout { after } => (
                Outcome::IdleTimeout,
                StreamError::IdleTimeout,
                format!("no data from upstream for {}", HumanDuration(after)),
            ),
            Stop::MaxDuration { limit } => (
                Outcome::MaxDuration,
                StreamError::MaxDuration,
                format!(
                    "stream reached its max_duration of {}",
                    HumanDuration(limit)
                ),
            ),
            Stop::Shutdown => (
                Outcome::Shutdown,
                StreamError::Shutdown,
                SHUTDOWN_MESSAGE.to_owned(),
            ),
        };
        self.cut(outcome, error, message);
    }

    /// Whether the route's protocol saw the answer complete.
    pub fn has_evidence(&self) -> bool {
        self.evidence
    }

    /// Whether content or streamed reasoning has been forwarded: from then on the
    /// client holds part of the model's output, and the stream cannot be started again
    /// elsewhere unnoticed.
    pub fn has_sent_output(&self) -> bool {
        self.output_sent
    }

    /// The outcome, once decided; the upstream is no longer needed then.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The outcome is decided and every frame has been taken.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some() && self.queue.is_empty()
    }

    /// Whether [`Engine::take_progress`] has anything to report: all progress comes
    /// from events read, so none were read means nothing happened.
    pub fn has_progress(&self) -> bool {
        let read_some = self.progress.events_in > 0;
        debug_assert!(
            read_some || self.progress == Progress::default(),
            "progress without an event read: {:?}",
            self.progress
        );
        read_some
    }

    /// What happened since the last call.
    pub fn take_progress(&mut self) -> Progress {
        std::mem::take(&mut self.progress)
    }

    /// Whether a data event (no keep-alive) arrived since the last call or
    /// [`Engine::take_progress`]; clears it. For a caller that keeps the data clock
    /// before the progress is taken (a held-back start).
    pub fn take_content_seen(&mut self) -> bool {
        std::mem::take(&mut self.progress.content_seen)
    }

    /// Calls `f(rule, hits)` for each rule that hit since the last call.
    pub fn take_rule_hits(&mut self, mut f: impl FnMut(usize, u64)) {
        for (rule, hits) in self.rule_hits.iter_mut().enumerate() {
            if *hits > 0 {
                f(rule, u64::from(std::mem::take(hits)));
            }
        }
    }

    /// The pipeline's rules' names, in `take_rule_hits` order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.pipeline.rules().iter().map(crate::rewrite::Rule::name)
    }

    /// Runs every complete event through the pipeline and collects what to send into
    /// one frame, which it returns; frames that must follow it are queued. `at_eof`:
    /// the upstream has ended, and its unterminated tail is taken too.
    fn run(&mut self, at_eof: bool) -> Option<Bytes> {
        loop {
            let (event, is_tail) = match self.next_event(at_eof) {
                Ok(Some(event)) => event,
                Ok(None) => {
                    self.batch.release_chunk();
                    break;
                }
                Err(FrameError::Oversize { limit }) => {
                    self.end_oversize(limit);
                    break;
                }
            };
            if !self.apply(event, is_tail) {
                break;
            }
        }
        let frame = self.batch.take();
        if self.outcome.is_some() || self.framer.is_drained() {
            // Nothing more will be sliced from the last read (`next_frame` skips the
            // run that would find that out): let it go.
            self.batch.release_chunk();
        }
        frame
    }

    /// The next complete event; at the upstream's end, then its completed tail (the
    /// flag).
    fn next_event(&mut self, at_eof: bool) -> Result<Option<(RawEvent, bool)>, FrameError> {
        match self.framer.next_event()? {
            Some(event) => Ok(Some((event, false))),
            None if at_eof => match self.framer.finish() {
                Some(tail) => Ok(Some((tail, true))),
                // `finish` may leave a last complete event for `next_event`.
                None => Ok(self.framer.next_event()?.map(|event| (event, false))),
            },
            None => Ok(None),
        }
    }

    /// One event through the pipeline; false when the frame is complete (the event
    /// could not join it, or it ended the stream). `is_tail`: the event was completed
    /// at the upstream's end.
    fn apply(&mut self, event: RawEvent, is_tail: bool) -> bool {
        let had_data = event.has_data();
        let contract = self.pipeline.contract();
        let content = had_data && !contract.is_keep_alive(&event.view());
        let progress = &mut self.progress;
        let rule_hits = &mut self.rule_hits;
        let verdict = self.pipeline.apply(event, &mut |rule| {
            progress.rules_hit += 1;
            rule_hits[rule] = rule_hits[rule].saturating_add(1);
        });
        progress.events_in += 1;
        progress.content_seen |= content;
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(too_large) => {
                let rule = self.pipeline.rules()[too_large.rule].name();
                let message = format!(
                    "rule {rule} would write an event over max_event_size ({} bytes)",
                    too_large.limit
                );
                self.end(Outcome::Oversize, Some((StreamError::Oversize, message)));
                return false;
            }
        };
        let is_terminator = verdict.is_terminator;
        let Some(output) = verdict.output else {
            if is_terminator {
                self.end(Outcome::Terminator, None);
                return false;
            }
            return true;
        };
        if is_tail && self.is_cut_tail(&output, is_terminator) {
            self.tail_cut = true;
            return true;
        }
        // A terminator the route names may be a protocol event that carries the
        // answer's usage and finish (`response.completed`) or an error: classified too.
        let class = self.classify(&output);
        if class.usage_only && self.usage_chunk == UsageChunk::Remove {
            return true;
        }
        if is_terminator || class.upstream_error.is_some() || class.terminal {
            // The route's own terminator is not counted as an event; the protocol's
            // terminal events and error events are.
            self.progress.events_out += u64::from(!is_terminator);
            self.push_output(output);
            match class.upstream_error {
                Some(error_type) => {
                    self.progress.upstream_error_event = Some(error_type);
                    // The client's SDK would not see this error: the gateway's own
                    // error event tells it.
                    let told = class.error_unseen.then(|| {
                        let message = format!(
                            "the upstream failed ({error_type}) in a form its clients do not raise on: the answer is incomplete"
                        );
                        (StreamError::UpstreamError, message)
                    });
                    self.end(Outcome::UpstreamErrorEvent, told);
                }
                None => self.end(Outcome::Terminator, None),
            }
            return false;
        }
        // As EventSource counts: a block without data (comments, an `id` alone) is
        // forwarded but dispatches no event.
        self.progress.events_out += u64::from(had_data);
        if content && !self.first_data_sent {
            self.first_data_sent = true;
            self.progress.first_data_event = true;
        }
        if class.content {
            self.progress.content_events += 1;
            if !self.content_sent {
                self.content_sent = true;
                self.progress.first_content_event = true;
            }
        }
        self.output_sent |= class.content || class.reasoning;
        self.push_output(output)
    }

    /// What a forwarded event means on the route's protocol; its evidence, choices,
    /// finish reasons, usage and sequence number are taken into the stream's.
    fn classify(&mut self, output: &[u8]) -> Class {
        let class = self
            .pipeline
            .contract()
            .classify(output, self.pipeline.ends_at_terminal_events());
        self.choices.add(class.choices);
        self.evidence = (self.evidence || class.evidence) && self.choices.all_finished();
        self.progress.finish_reasons.add(class.finish);
        if let Some(usage) = class.usage {
            self.progress.usage.get_or_insert_default().update(usage);
        }
        if class.sequence_number.is_some() {
            self.sequence_number = class.sequence_number;
        }
        class
    }

    /// An event completed at the upstream's clean close that the close cut, and that is
    /// not sent: on a protocol whose data is JSON, data that is not whole JSON. A
    /// terminator known by its data matched that data whole; one known by its `event:`
    /// line alone would end the stream as complete and reach the client with its JSON
    /// cut (or no data at all), which SDKs fail to parse. The stream's evidence, or its
    /// lack, decides the ending as for any cut tail.
    fn is_cut_tail(&self, output: &[u8], is_terminator: bool) -> bool {
        if is_terminator {
            self.is_cut_event_terminator(output)
        } else {
            self.pipeline.contract().protocol.has_json_data() && !is_whole_json(output)
        }
    }

    /// A terminator completed at the upstream's clean close that the route knows by
    /// its event name, on a protocol whose data is JSON, without its whole JSON (a
    /// terminator known by its data matched that data whole).
    fn is_cut_event_terminator(&self, output: &[u8]) -> bool {
        let by_event = self
            .pipeline
            .terminator()
            .is_some_and(|t| matches!(t.matcher, TerminatorMatch::Event(_)));
        by_event && self.pipeline.contract().protocol.has_json_data() && !is_whole_json(output)
    }

    /// Adds `output` to the frame; false when it had to be queued behind it instead,
    /// and the frame is complete.
    fn push_output(&mut self, output: Bytes) -> bool {
        match self.batch.push(output) {
            Ok(()) => true,
            Err(output) => {
                self.queue.push_back(output);
                false
            }
        }
    }

    fn end_oversize(&mut self, limit: usize) {
        let message = format!("an upstream event exceeded max_event_size ({limit} bytes)");
        self.end(Outcome::Oversize, Some((StreamError::Oversize, message)));
    }

    /// The route asks for completion evidence and has not seen it.
    fn lacks_evidence(&self) -> bool {
        !self.evidence && self.pipeline.contract().asks_evidence()
    }

    /// A cut that is not the upstream's clean end: an error, unless the route's
    /// protocol saw the answer complete (then the client gets the terminator and the
    /// outcome still names the cut); a truncation when it asks for evidence it lacks.
    fn cut(&mut self, outcome: Outcome, error: StreamError, message: String) {
        if self.lacks_evidence() {
            self.truncated(&message);
        } else if self.evidence {
            self.end(outcome, None);
        } else {
            self.end(outcome, Some((error, message)));
        }
    }

    /// The stream ended without its completion evidence: `what` happened.
    fn truncated(&mut self, what: &str) {
        let missing = self.pipeline.contract().missing();
        let message = format!("{what} before the answer was complete: {missing}");
        self.end(
            Outcome::Truncated,
            Some((StreamError::UpstreamIncomplete, message)),
        );
    }

    /// Decides the outcome (the first decision stands), drops what the framer holds,
    /// and queues the closing frames: the error event, if any, then the synthesized
    /// terminator, unless the terminator itself ended the stream or the protocol ends
    /// at an error event.
    fn end(&mut self, outcome: Outcome, error: Option<(StreamError, String)>) {
        if self.outcome.is_some() {
            return;
        }
        self.outcome = Some(outcome);
        self.framer = Framer::new(0);
        let protocol = self.pipeline.contract().protocol;
        let is_error = error.is_some() || outcome == Outcome::UpstreamErrorEvent;
        if let Some((error, message)) = error {
            // One past the upstream's last, as the Responses API numbers its events.
            let sequence_number = self.sequence_number.map_or(0, |n| n.saturating_add(1));
            let event =
                protocol.error_event(error.as_str(), &message, &self.route, sequence_number);
            self.queue.push_back(event);
        }
        let closes = !is_error || protocol.closes_after_error();
        if outcome != Outcome::Terminator && closes {
            if let Some(terminator) = self.pipeline.synthesized_terminator() {
                self.queue.push_back(terminator);
            }
        }
    }
}

/// Whether an event's data is one whole JSON value.
fn is_whole_json(event: &[u8]) -> bool {
    crate::sse::Event::new(event)
        .data()
        .is_some_and(|data| serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok())
}

/// What a stream's client is told when the drain time is over.
pub(crate) const SHUTDOWN_MESSAGE: &str = "the gateway is shutting down; retry on another instance";

/// The `type` of an error event the engine writes into a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    IdleTimeout,
    MaxDuration,
    UpstreamError,
    Oversize,
    Shutdown,
    /// The stream ended without the completion evidence its route asks for.
    UpstreamIncomplete,
}

impl StreamError {
    /// Every stream error type.
    pub const ALL: [StreamError; 6] = [
        StreamError::IdleTimeout,
        StreamError::MaxDuration,
        StreamError::UpstreamError,
        StreamError::Oversize,
        StreamError::Shutdown,
        StreamError::UpstreamIncomplete,
    ];

    /// The `type` field of the error event.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamError::IdleTimeout => "upstream_idle_timeout",
            StreamError::MaxDuration => "max_duration",
            StreamError::UpstreamError => "upstream_error",
            StreamError::Oversize => "oversize",
            StreamError::Shutdown => "shutdown",
            StreamError::UpstreamIncomplete => "upstream_incomplete",
        }
    }
}

#[cfg(test)]
mod tests;
