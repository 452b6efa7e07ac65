//! One stream's pass through a route's pipeline: framing, rules, the terminator, and
//! what happens at the upstream's end. Pure (no I/O, no clock), so the streaming body
//! and the offline `rewrite` command behave byte for byte alike.

use std::sync::Arc;

use bytes::Bytes;

use crate::sse::{FrameError, Framer};

use super::Pipeline;

/// What the session has for the caller next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// One upstream event went through the pipeline.
    Event {
        /// Bytes to send downstream; `None` when a rule dropped the event (or it is a
        /// terminator that is not forwarded).
        output: Option<Bytes>,
        /// The upstream event carried data (comments and pings do not): the caller's
        /// stuck and idle clocks restart.
        had_data: bool,
        /// The event is the terminator: send `output`, then end the stream.
        terminator: bool,
    },
    /// Every complete event has been handed out; more upstream bytes are needed.
    NeedMore,
    /// The event being framed grew past `max_event_size`: the stream must end.
    Oversize { limit: usize },
}

/// A stream's framer and its route's pipeline.
#[derive(Debug)]
pub struct Session {
    framer: Framer,
    pipeline: Arc<Pipeline>,
}

impl Session {
    pub fn new(pipeline: Arc<Pipeline>, max_event_size: usize) -> Session {
        Session {
            framer: Framer::new(max_event_size),
            pipeline,
        }
    }

    /// The next chunk of upstream bytes, split anywhere.
    pub fn push(&mut self, chunk: Bytes) {
        self.framer.push(chunk);
    }

    /// The next complete event through the pipeline; `on_hit(i)` for each rule `i`
    /// that changed or dropped it.
    pub fn next(&mut self, on_hit: &mut impl FnMut(usize)) -> Step {
        match self.framer.next_event() {
            Ok(Some(event)) => self.apply(event, on_hit),
            Ok(None) => Step::NeedMore,
            Err(FrameError::Oversize { limit }) => Step::Oversize { limit },
        }
    }

    /// The upstream ended cleanly: its unterminated tail, completed with a blank line
    /// and run through the pipeline, if there was one.
    pub fn finish(&mut self, on_hit: &mut impl FnMut(usize)) -> Option<Step> {
        let tail = self.framer.finish()?;
        Some(self.apply(tail, on_hit))
    }

    /// The terminator to send when the upstream ended without one, if the route
    /// synthesizes it.
    pub fn synthesized_terminator(&self) -> Option<Bytes> {
        self.pipeline.synthesized_terminator()
    }

    fn apply(&self, event: crate::sse::RawEvent, on_hit: &mut impl FnMut(usize)) -> Step {
        let had_data = event.has_data();
        let verdict = self.pipeline.apply(event, on_hit);
        Step::Event {
            output: verdict.output,
            had_data,
            terminator: verdict.is_terminator,
        }
    }
}
