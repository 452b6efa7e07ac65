//! The response bodies of a resumable route, and the task that keeps a stream going
//! once its client left.
//!
//! [`LiveBody`] is the first client's: it polls the supervised stream as hyper asks,
//! stamps ids on the frames and keeps them for replay. When hyper drops it mid-stream
//! (the client left) after it sent an id, the supervised stream is handed to
//! [`keep_reading`], a task that polls it on (same engine, same clocks, same metrics,
//! same record) into the replay buffer, until it ends, a client stops it, or `window`
//! passes with no client (then it is dropped: outcome `client_closed`); before any id,
//! nobody could resume it, and it is cancelled. [`ReplayBody`] is a resuming
//! client's: it reads the buffer from its cursor, replay and live alike.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{sleep_until, Instant};

use super::follow::RemoteBody;
use super::slot::{Slot, Step};
use super::stamp::{Stamper, HEARTBEAT_LINE};
use super::store::{Ending, Mirror};
use super::table::Removal;
use super::ResumePlan;
use crate::access_log::RequestLog;
use crate::admission::Slot as Admission;
use crate::changes::OwnedChange;
use crate::shutdown::Detached;
use crate::supervise::{is_heartbeat, Never, SupervisedBody};

type Polled = Poll<Option<Result<Frame<Bytes>, Never>>>;

/// The body of a response on a resumable route: the first client's, or a resume's.
#[derive(Debug)]
pub(crate) enum ResumeBody {
    Live(LiveBody),
    Replay(ReplayBody),
    /// A resume served from Redis (`store: redis`, another replica's stream).
    Remote(RemoteBody),
}

impl ResumeBody {
    /// Ends a resume served from Redis at the drain deadline; the others end with the
    /// stream they read, which watches it.
    pub(crate) fn ends_at(&mut self, signal: crate::shutdown::Shutdown) {
        if let ResumeBody::Remote(body) = self {
            body.ends_at(signal);
        }
    }
}

impl Body for ResumeBody {
    type Data = Bytes;
    type Error = Never;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match self.get_mut() {
            ResumeBody::Live(body) => body.poll(cx),
            ResumeBody::Replay(body) => body.poll(cx),
            ResumeBody::Remote(body) => body.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResumeBody::Live(body) => body.supervised.is_none(),
            ResumeBody::Replay(body) => body.ended && body.closing.is_none(),
            ResumeBody::Remote(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The first client's body.
#[derive(Debug)]
pub(crate) struct LiveBody {
    /// `None` once the stream ended (or was handed to [`keep_reading`]).
    supervised: Option<Box<SupervisedBody>>,
    producer: Producer,
    slot: Arc<Slot>,
    plan: Arc<ResumePlan>,
    /// The route's admission slot (`limits`): held while the upstream is read, by this
    /// body, then by [`keep_reading`] once the client left.
    admission: Option<Admission>,
    /// Wakes this body when a client stops the stream while its upstream is quiet.
    stopped: Pin<Box<OwnedChange>>,
}

/// What numbers a stream's events and hands them on: to the replay buffer, and to
/// Redis with `store: redis`. Moves with the stream when its first client leaves.
#[derive(Debug)]
struct Producer {
    stamper: Stamper,
    mirror: Option<Mirror>,
}

impl Producer {
    /// Publishes a frame from the supervised stream (whose events end at `ends`, when
    /// it knows); returns the bytes to send.
    /// Also returns how many of those bytes are kept for replay (the numbered events;
    /// comments and heartbeats are not).
    fn publish(&mut self, slot: &Slot, frame: Bytes, ends: Option<&[u32]>) -> (Bytes, usize) {
        if is_heartbeat(&frame) {
            slot.heartbeat();
            return (Bytes::from_static(HEARTBEAT_LINE), 0);
        }
        let stamped = slot.publish(&mut self.stamper, &frame, ends);
        if self.stamper.spans().is_empty() && !stamped.is_empty() {
            // Comments alone (an upstream's pings): kept for no one, they still keep
            // this client's connection busy, so resumed readers, who get nothing of
            // them, send a heartbeat of their own instead. Not for comments past the
            // stamper's bound, which reach no one.
            slot.heartbeat();
        }
        if let Some(mirror) = &mut self.mirror {
            mirror.events(&stamped, self.stamper.spans());
        }
        let kept = self
            .stamper
            .spans()
            .iter()
            .map(|span| span.end - span.start);
        (stamped, kept.sum())
    }

    /// Tells followers on other replicas how the stream ended (once; later calls do
    /// nothing).
    fn end(&mut self, ending: Ending) {
        if let Some(mirror) = &mut self.mirror {
            mirror.end(ending, self.stamper.next_seq() - 1);
        }
    }
}

impl LiveBody {
    pub(super) fn new(
        mut supervised: SupervisedBody,
        slot: Arc<Slot>,
        mirror: Option<Mirror>,
        plan: Arc<ResumePlan>,
        admission: Option<Admission>,
    ) -> Self {
        // The stamper numbers every event; the engine says where they end.
        supervised.track_event_ends();
        supervised.count_sent_above();
        LiveBody {
            admission,
            stopped: Box::pin(slot.stopped()),
            supervised: Some(Box::new(supervised)),
            producer: Producer {
                stamper: Stamper::new(&slot.key),
                mirror,
            },
            slot,
            plan,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Polled {
        if self.slot.is_stopped() {
            // Stopped by a client while this one still reads: it ends here too, and
            // for the clients that follow it on other replicas.
            if self.supervised.take().is_some() {
                self.producer.end(self.slot.stopped_ending());
            }
            return Poll::Ready(None);
        }
        let Some(supervised) = self.supervised.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut **supervised).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let data = frame.into_data().unwrap_or_default();
                let sent = self
                    .producer
                    .publish(&self.slot, data, supervised.event_ends())
                    .0;
                supervised.sent(sent.len());
                if supervised.is_end_stream() {
                    self.end();
                }
                Poll::Ready(Some(Ok(Frame::data(sent))))
            }
            Poll::Ready(None) => {
                self.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(never))) => match never {},
            // Registers the waker once; then one atomic load per poll (`changes.rs`).
            Poll::Pending if self.stopped.as_mut().poll(cx).is_ready() => self.poll(cx),
            Poll::Pending => Poll::Pending,
        }
    }

    fn end(&mut self) {
        self.supervised = None;
        self.slot.first_client_gone();
        self.producer.end(Ending::Ended);
        self.plan.table.finish(&self.slot, Instant::now());
    }
}

impl Drop for LiveBody {
    fn drop(&mut self) {
        let now = Instant::now();
        let plan = &self.plan;
        self.slot.first_client_gone();
        // A client that left before its first event has no event id to come back
        // with (the id in the response head serves a stop): read on, the answer would
        // be generated for nobody. Such a stream is cancelled as one over the cap is,
        // and remembered as cancelled, so the stop button that follows finds it so.
        let unresumable = self.supervised.is_some() && self.producer.stamper.next_seq() == 1;
        let room = if unresumable {
            0
        } else {
            plan.config.max_detached
        };
        let release = plan.table.release(&self.slot, now, room);
        let Some(supervised) = self.supervised.take() else {
            return;
        };
        // The client left mid-stream.
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !self.slot.is_stopped() => {
                tracing::debug!(route = %plan.route, release = ?release, "client left a resumable stream; reading on for a resume");
                let spent = Producer {
                    stamper: Stamper::new(&self.slot.key),
                    mirror: None,
                };
                let producer = std::mem::replace(&mut self.producer, spent);
                // Counted before this connection is: a drain never finds neither.
                let detached = supervised.shutdown().detached();
                runtime.spawn(keep_reading(
                    supervised,
                    producer,
                    self.slot.clone(),
                    plan.clone(),
                    self.admission.take(),
                    detached,
                ));
            }
            _ => {
                // Stopped, over the cap, left before any id, or no runtime: cancelled
                // as without resume.
                // Followers on other replicas get the end at once, not when the keys
                // expire; a stop is an end they share, a cancel one they are told of.
                let ending = if self.slot.is_stopped() {
                    self.slot.stopped_ending()
                } else {
                    Ending::Cancelled
                };
                drop(supervised);
                self.producer.end(ending);
                let why = if unresumable {
                    Removal::Unstarted
                } else {
                    Removal::Ended
                };
                plan.table.remove(&self.slot, now, why);
            }
        }
    }
}

/// Polls a stream whose first client left, into its replay buffer, until it ends, is
/// stopped, or has had no client for its window. `_admission` is released on return,
/// and `_detached` tells a drain the stream has ended.
async fn keep_reading(
    mut supervised: Box<SupervisedBody>,
    mut producer: Producer,
    slot: Arc<Slot>,
    plan: Arc<ResumePlan>,
    _admission: Option<Admission>,
    _detached: Detached,
) {
    let table = &plan.table;
    loop {
        if slot.is_stopped() {
            break;
        }
        let (expires, finished) = {
            let state = slot.state();
            let expires = state
                .lifetime
                .is_detached()
                .then(|| state.lifetime.expires_at())
                .flatten();
            (expires, state.lifetime.is_finished())
        };
        if finished {
            // Found expired and taken out of the table: below at the window, or by a
            // resume that came as the window ran out (while this task asked Redis).
            // Reading on would be for nobody, with no window left to end it.
            tracing::info!(route = %plan.route, "no client resumed the stream within its window; upstream dropped");
            drop(supervised);
            // A late resume on another replica is `expired` there too.
            producer.end(Ending::Expired);
            return;
        }
        let changed = slot.changed.notified();
        let expiry = async {
            match expires {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = changed => {}
            () = expiry => {
                let now = Instant::now();
                if slot.state().lifetime.is_expired(now) && plan.followed_elsewhere(&slot).await {
                    slot.state().lifetime.renew(Instant::now());
                    continue;
                }
                // Taken out if its window is still over under the table's lock (a
                // resume that came meanwhile keeps it); finished then, the check above
                // ends it.
                table.expire(&slot, Instant::now());
            }
            frame = poll_fn(|cx| Pin::new(&mut *supervised).poll_frame(cx)) => match frame {
                Some(Ok(frame)) => {
                    let ends = supervised.event_ends();
                    // Sent to no one now: what is kept for the client's resume counts.
                    let data = frame.into_data().unwrap_or_default();
                    let (_, kept) = producer.publish(&slot, data, ends);
                    supervised.sent(kept);
                    if supervised.is_end_stream() {
                        drop(supervised);
                        producer.end(Ending::Ended);
                        table.finish(&slot, Instant::now());
                        return;
                    }
                }
                None => {
                    drop(supervised);
                    producer.end(Ending::Ended);
                    table.finish(&slot, Instant::now());
                    return;
                }
                Some(Err(never)) => match never {},
            }
        }
    }
    // Stopped or cancelled: dropping the undecided stream drops the upstream
    // (`client_closed`); clients following it on other replicas are told it ended
    // (a stop) or was cut (over `max_detached`, once a resumed client left).
    drop(supervised);
    producer.end(slot.stopped_ending());
    table.remove(&slot, Instant::now(), Removal::Ended);
}

/// A resuming client's body.
#[derive(Debug)]
pub(crate) struct ReplayBody {
    slot: Arc<Slot>,
    plan: Arc<ResumePlan>,
    /// The next event this client gets.
    cursor: u64,
    /// Events numbered below this were there when the client came back: replayed.
    replay_until: u64,
    seen_heartbeats: u64,
    /// What is left to send after a gap: the closing, then the end.
    closing: Option<Bytes>,
    ended: bool,
    log: RequestLog,
}

impl ReplayBody {
    pub(super) fn new(
        slot: Arc<Slot>,
        plan: Arc<ResumePlan>,
        last_seen: u64,
        log: RequestLog,
    ) -> ReplayBody {
        let (replay_until, seen_heartbeats) = {
            let state = slot.state();
            (state.log.next_seq(), state.heartbeats)
        };
        ReplayBody {
            slot,
            plan,
            cursor: last_seen + 1,
            replay_until,
            seen_heartbeats,
            closing: None,
            ended: false,
            log,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Polled {
        if let Some(closing) = self.closing.take() {
            return self.send(closing);
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let before = self.cursor;
        let mut out = BytesMut::new();
        let step = self.slot.read(
            &mut self.cursor,
            &mut self.seen_heartbeats,
            &mut out,
            cx.waker(),
        );
        match step {
            Step::Events(_) => {
                let replayed = self.cursor.min(self.replay_until) - before.min(self.replay_until);
                if replayed > 0 {
                    self.plan.metrics.replayed_events.inc_by(replayed);
                }
                self.send(out.freeze())
            }
            Step::Gap { from, to } => {
                // Counted as `expired` when the resume was looked up.
                let (error, closing) = self.plan.gap(from, to);
                self.ended = true;
                self.closing = closing;
                self.send(error)
            }
            Step::Heartbeat => self.send(Bytes::from_static(HEARTBEAT_LINE)),
            Step::Wait => Poll::Pending,
            Step::End => {
                self.ended = true;
                self.log.finished();
                Poll::Ready(None)
            }
        }
    }

    fn send(&mut self, bytes: Bytes) -> Polled {
        if self.ended && self.closing.is_none() {
            self.log.finished();
        }
        self.log.add_bytes(bytes.len());
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        let plan = &self.plan;
        plan.table
            .release(&self.slot, Instant::now(), plan.config.max_detached);
    }
}
