//! One resumable stream's shared state: its replay buffer, its lifetime, and the
//! wakers of the clients reading it.
//!
//! Written by the stream's one producer (the first client's body, or the task that
//! keeps reading the upstream once that client left) and read by resuming clients.
//! One lock, taken once per frame (a whole upstream read), never per event.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::id::{Fingerprint, StreamKey};
use super::lifetime::Lifetime;
use super::replay::{Read, ReplayLog};
use super::stamp::Stamper;
use super::store::Ending;
use crate::changes::{Changes, OwnedChange};
use crate::listener::ClientConnection;

/// [`Slot::stopped`]'s values.
const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const CANCELLED: u8 = 2;

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) key: StreamKey,
    pub(crate) fingerprint: Fingerprint,
    state: Mutex<SlotState>,
    /// [`RUNNING`], or why the stream's driver drops the upstream: a client asked to
    /// end it ([`STOPPED`]), or its last client left with the route's `max_detached`
    /// streams already kept ([`CANCELLED`]). The first reason given stays. Read
    /// without the lock, on every poll.
    stopped: AtomicU8,
    /// Bumped once, when the stream is stopped: wakes the first client's body, which
    /// may be waiting on a quiet upstream.
    stops: Arc<Changes>,
    /// Wakes the task that keeps a detached stream going: a client came or left, or
    /// a stop was asked.
    pub(crate) changed: Notify,
}

#[derive(Debug)]
pub(crate) struct SlotState {
    pub(crate) log: ReplayLog,
    pub(crate) lifetime: Lifetime,
    /// Heartbeats the producer had to send; readers send one when this moves.
    pub(crate) heartbeats: u64,
    /// Readers waiting for more.
    waiting: Vec<Waker>,
    /// The HTTP/1 connection of the client whose response drives the stream, while it
    /// does ([`Slot::take_over`]).
    first_client: Option<ClientConnection>,
}

impl Slot {
    pub(crate) fn new(
        key: StreamKey,
        fingerprint: Fingerprint,
        window: Duration,
        max_bytes: usize,
        first_client: Option<ClientConnection>,
    ) -> Slot {
        Slot {
            key,
            fingerprint,
            state: Mutex::new(SlotState {
                log: ReplayLog::new(max_bytes),
                lifetime: Lifetime::new(window),
                heartbeats: 0,
                waiting: Vec::new(),
                first_client,
            }),
            stopped: AtomicU8::new(RUNNING),
            stops: Arc::default(),
            changed: Notify::new(),
        }
    }

    /// The state; a poisoned lock (a panic elsewhere) still holds consistent data.
    pub(crate) fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the stream at a client's request: its driver drops the upstream at its
    /// next step, and followers end with it.
    pub(crate) fn stop(&self) {
        self.end_with(STOPPED);
    }

    /// Drops the stream that nobody reads, over the route's `max_detached`: its
    /// driver drops the upstream at its next step, and followers are told the answer
    /// was cut, not that it ended.
    pub(crate) fn cancel(&self) {
        self.end_with(CANCELLED);
    }

    fn end_with(&self, reason: u8) {
        // A later reason does not overwrite the first: a stop that comes after the
        // cancel must not turn it into an end.
        let first = self
            .stopped
            .compare_exchange(RUNNING, reason, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.stops.bump();
        }
        self.changed.notify_one();
    }

    /// Resolves once the stream is stopped (or at once if it is).
    pub(crate) fn stopped(&self) -> OwnedChange {
        self.stops.after_owned(0)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire) != RUNNING
    }

    /// Whether a client stopped the stream (not the cap on detached streams).
    pub(crate) fn stopped_by_client(&self) -> bool {
        self.stopped.load(Ordering::Acquire) == STOPPED
    }

    /// How a stopped stream ended, for its end entry.
    pub(crate) fn stopped_ending(&self) -> Ending {
        match self.stopped.load(Ordering::Acquire) {
            CANCELLED => Ending::Cancelled,
            STOPPED => Ending::Stopped,
            _ => Ending::Ended,
        }
    }

    /// A client resumes the stream while its first client's response still drives
    /// it: that client's connection is closed, and the stream is read on without it,
    /// as when a client leaves. A client that comes back with the stream's id has
    /// given up that connection; one that went without a FIN (a phone that lost its
    /// network) would otherwise hold the stream at the pace of a socket nobody reads,
    /// until the send timeout. (The resume cannot come on that connection: an HTTP/1
    /// connection takes its next request only after the response it carries.)
    pub(crate) fn take_over(&self) {
        let first = self.state().first_client.take();
        if let Some(first) = first {
            first.close();
        }
    }

    /// The first client's response no longer drives the stream (it ended, or the
    /// client left): its connection may carry other requests now.
    pub(crate) fn first_client_gone(&self) {
        self.state().first_client = None;
    }

    /// Whether `credential` is the one the stream was opened with.
    pub(crate) fn admits(&self, credential: Option<&[u8]>) -> bool {
        self.fingerprint.matches(&self.key.fingerprint(credential))
    }

    /// Numbers `frame`'s events (which end at `ends`, when known), keeps them for
    /// replay, wakes waiting readers, and returns the frame as sent.
    pub(crate) fn publish(
        &self,
        stamper: &mut Stamper,
        frame: &[u8],
        ends: Option<&[u32]>,
    ) -> Bytes {
        let (stamped, spans) = stamper.stamp(frame, ends);
        let mut state = self.state();
        state.log.append_frame(stamped.clone(), spans);
        state.wake_readers();
        stamped
    }

    /// The producer had to send a heartbeat: readers send their own.
    pub(crate) fn heartbeat(&self) {
        let mut state = self.state();
        state.heartbeats += 1;
        state.wake_readers();
    }

    /// The stream's body ended at `now`; true if it was detached until now.
    pub(crate) fn finish(&self, now: Instant) -> bool {
        let mut state = self.state();
        let was_detached = state.lifetime.finish(now);
        state.wake_readers();
        was_detached
    }

    /// A reader's next step from its cursor; registers its waker when there is
    /// nothing yet.
    pub(crate) fn read(
        &self,
        cursor: &mut u64,
        seen_heartbeats: &mut u64,
        out: &mut BytesMut,
        waker: &Waker,
    ) -> Step {
        /// A frame of replay is cut near this size, so a long replay is streamed.
        const READ_LIMIT: usize = 64 << 10;
        let mut state = self.state();
        match state.log.read(cursor, READ_LIMIT, out) {
            Read::Events { count, .. } => Step::Events(count),
            Read::Gap { from, to } => Step::Gap { from, to },
            Read::Ahead => Step::End,
            Read::CaughtUp if state.lifetime.is_finished() => Step::End,
            Read::CaughtUp if state.heartbeats != *seen_heartbeats => {
                *seen_heartbeats = state.heartbeats;
                Step::Heartbeat
            }
            Read::CaughtUp => {
                if !state.waiting.iter().any(|w| w.will_wake(waker)) {
                    state.waiting.push(waker.clone());
                }
                Step::Wait
            }
        }
    }
}

impl SlotState {
    fn wake_readers(&mut self) {
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }
}

/// What a reader does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// This many events were copied out.
    Events(u64),
    /// Events `from..=to` are gone.
    Gap {
        from: u64,
        to: u64,
    },
    Heartbeat,
    Wait,
    /// The stream ended and everything was read.
    End,
}
