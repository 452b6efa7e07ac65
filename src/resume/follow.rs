//! A resume on a replica that does not own the stream (`store: redis`): the events
//! after the client's id are read from the stream's Redis Stream, then followed live
//! with `XREAD BLOCK` until its end entry.
//!
//! A task reads Redis and hands whole frames to the response body through a small
//! channel; the body only forwards them. A hole in the numbers (entries trimmed, or
//! writes dropped while Redis was unreachable) ends the resume with an error event
//! saying which events are missing, never a silent gap. So does a stream whose keys
//! are gone without an end entry: its owner keeps them alive while the stream runs
//! and writes the end on every way a stream ends, so the keys are gone only when the
//! owner died or Redis lost them, and the rest of the answer will not come. An end
//! entry saying the owner dropped the stream (at its window, or over `max_detached`)
//! ends the resume with the same error event: the answer is not complete.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use redis::Value;
use tokio::sync::mpsc;

use super::stamp::HEARTBEAT_LINE;
use super::store::{reader_key, Ending, RedisStore};
use super::{ResumePlan, ResumeResult};
use crate::access_log::RequestLog;
use crate::engine::{StreamError, SHUTDOWN_MESSAGE};
use crate::shutdown::{DrainWatch, Shutdown};
use crate::supervise::Never;

/// Entries read per `XREAD`.
const COUNT: usize = 256;
/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_secs(2);
/// A keep-alive comment after this many empty waits (about 16 s), like `heartbeat`.
const IDLE_ROUNDS_PER_HEARTBEAT: u32 = 8;
/// How long the reader mark (`store::reader_key`) outlives the follower's last round;
/// a round takes at most `BLOCK`.
const READER_MARK: Duration = Duration::from_secs(6);
/// The mark is renewed at most this often.
const READER_MARK_EVERY: Duration = Duration::from_secs(1);

/// The body of a resume served from Redis.
#[derive(Debug)]
pub(crate) struct RemoteBody {
    frames: mpsc::Receiver<Bytes>,
    ended: bool,
    log: RequestLog,
    /// `None` for a body that ends at once.
    plan: Option<Arc<ResumePlan>>,
    /// The drain deadline, watched once [`RemoteBody::ends_at`] gave it: no stream of
    /// this replica feeds the resume, so nothing else would end it with the drain.
    drain: Option<Box<DrainWatch>>,
    /// The route's closing, sent after the shutdown's error event.
    closing: Option<Bytes>,
}

impl RemoteBody {
    /// Starts following `follow.redis_key` after event `follow.last_seen`.
    pub(super) fn start(
        store: Arc<RedisStore>,
        follow: Follow,
        plan: Arc<ResumePlan>,
        log: RequestLog,
    ) -> RemoteBody {
        let (sender, frames) = mpsc::channel(4);
        let body_plan = plan.clone();
        tokio::spawn(async move {
            // The client leaving ends the follower at once. Otherwise a follower of a
            // quiet stream learns it only when its next keep-alive fails to send
            // (about 16 s), and renews its reader mark until then, which keeps the
            // owner reading the upstream for nobody.
            let client = sender.clone();
            let follower = Follower {
                redis_key: follow.redis_key,
                cursor: follow.last_seen,
                plan,
                sender,
                result: Some(follow.result),
            };
            tokio::select! {
                () = follower.run(&store) => {}
                () = client.closed() => {}
            }
        });
        RemoteBody {
            frames,
            ended: false,
            log,
            plan: Some(body_plan),
            drain: None,
            closing: None,
        }
    }

    /// A body that ends at once.
    pub(super) fn closed(log: RequestLog) -> RemoteBody {
        let (_, frames) = mpsc::channel(1);
        RemoteBody {
            frames,
            ended: false,
            log,
            plan: None,
            drain: None,
            closing: None,
        }
    }

    /// Ends the resume when `signal` fires (the drain deadline), with the `shutdown`
    /// error event and the route's closing, as the replica's own streams end.
    pub(super) fn ends_at(&mut self, signal: Shutdown) {
        if self.plan.is_some() && !self.ended {
            self.drain = Some(Box::new(DrainWatch::new(signal)));
        }
    }

    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Never>>> {
        if let Some(closing) = self.closing.take() {
            return self.send(closing);
        }
        if self.ended {
            return Poll::Ready(None);
        }
        if self.drain.as_ref().is_some_and(|drain| drain.is_over()) {
            return self.shut_down();
        }
        match Pin::new(&mut self.frames).poll_recv(cx) {
            Poll::Ready(Some(frame)) => self.send(frame),
            Poll::Ready(None) => {
                self.ended = true;
                self.log.finished();
                Poll::Ready(None)
            }
            Poll::Pending if self.drain.as_mut().is_some_and(|d| d.poll_over(cx)) => {
                self.shut_down()
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether nothing more will come: ended, the closing sent.
    pub(super) fn is_end_stream(&self) -> bool {
        self.ended && self.closing.is_none()
    }

    fn send(&mut self, frame: Bytes) -> Poll<Option<Result<Frame<Bytes>, Never>>> {
        self.log.add_bytes(frame.len());
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    /// The drain time is over: the follower is let go (its sends fail), and the client
    /// gets the `shutdown` error event, then the closing.
    fn shut_down(&mut self) -> Poll<Option<Result<Frame<Bytes>, Never>>> {
        self.frames.close();
        self.ended = true;
        self.log.ended_by_shutdown();
        let Some(plan) = &self.plan else {
            return Poll::Ready(None);
        };
        let (error, closing) = plan.closing_with(StreamError::Shutdown.as_str(), SHUTDOWN_MESSAGE);
        self.closing = closing;
        self.send(error)
    }
}

struct Follower {
    redis_key: String,
    /// The last event sent.
    cursor: u64,
    plan: Arc<ResumePlan>,
    sender: mpsc::Sender<Bytes>,
    /// The resume's result, until counted ([`Follower::count_result`]).
    result: Option<ResumeResult>,
}

/// A resume to follow from Redis: the stream, the client's last event, and how the
/// lookup judged it.
pub(super) struct Follow {
    pub(super) redis_key: String,
    pub(super) last_seen: u64,
    pub(super) result: ResumeResult,
}

/// What one read brought.
enum Batch {
    Events {
        frame: BytesMut,
        count: u64,
        read: usize,
    },
    End(BytesMut, Ending),
    /// The stream ended at event `last`, before the event the client says it saw.
    NotGiven {
        frame: BytesMut,
        last: u64,
    },
    Gap {
        frame: BytesMut,
        from: u64,
        to: u64,
    },
}

impl Drop for Follower {
    /// A follower that ends before any read told more (Redis failed, the client
    /// left) counts the result its lookup gave.
    fn drop(&mut self) {
        self.count_result(false);
    }
}

impl Follower {
    /// Counts the resume's result, once: at the first read that brought anything,
    /// which may show that the client's id was never given out (`unknown`).
    fn count_result(&mut self, never_given: bool) {
        if let Some(result) = self.result.take() {
            let result = if never_given {
                ResumeResult::Unknown
            } else {
                result
            };
            self.plan.metrics.count(result);
        }
    }

    async fn run(mut self, store: &RedisStore) {
        let mut connection = match store.connect_blocking(BLOCK).await {
            Ok(connection) => connection,
            Err(error) => return self.fail(&error).await,
        };
        let mut catching_up = true;
        let mut idle_rounds = 0;
        let mut marked: Option<tokio::time::Instant> = None;
        loop {
            if marked.is_none_or(|at| at.elapsed() >= READER_MARK_EVERY) {
                // The owner checks the mark before it drops a stream whose own client
                // left: this client still reads it.
                let mark: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(reader_key(&self.redis_key))
                    .arg(1)
                    .arg("PX")
                    .arg(u64::try_from(READER_MARK.as_millis()).unwrap_or(6000))
                    .query_async(&mut connection)
                    .await;
                if let Err(error) = mark {
                    return self.fail(&error).await;
                }
                marked = Some(tokio::time::Instant::now());
            }
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT").arg(COUNT);
            if !catching_up {
                read.arg("BLOCK")
                    .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(2000));
            }
            read.arg("STREAMS")
                .arg(&self.redis_key)
                .arg(format!("1-{}", self.cursor));
            let reply: Value = match read.query_async(&mut connection).await {
                Ok(reply) => reply,
                Err(error) => return self.fail(&error).await,
            };
            let batch = self.batch(&reply);
            if !matches!(batch, Batch::Events { read: 0, .. }) {
                self.count_result(matches!(batch, Batch::NotGiven { .. }));
            }
            match batch {
                Batch::Events { frame, count, read } => {
                    if catching_up {
                        self.plan.metrics.replayed_events.inc_by(count);
                    }
                    catching_up &= read == COUNT;
                    if read == 0 {
                        idle_rounds += 1;
                        let exists: redis::RedisResult<bool> = redis::cmd("EXISTS")
                            .arg(&self.redis_key)
                            .query_async(&mut connection)
                            .await;
                        match exists {
                            Ok(false) => return self.lost().await,
                            Err(error) => return self.fail(&error).await,
                            Ok(true) => {}
                        }
                        if idle_rounds % IDLE_ROUNDS_PER_HEARTBEAT == 0
                            && !self.send(Bytes::from_static(HEARTBEAT_LINE)).await
                        {
                            return;
                        }
                        continue;
                    }
                    idle_rounds = 0;
                    if !self.send(frame.freeze()).await {
                        return;
                    }
                }
                Batch::End(frame, Ending::Ended | Ending::Stopped) => {
                    if !frame.is_empty() {
                        self.send(frame.freeze()).await;
                    }
                    return;
                }
                Batch::End(frame, dropped) => {
                    if !frame.is_empty() && !self.send(frame.freeze()).await {
                        return;
                    }
                    return self.dropped(dropped).await;
                }
                Batch::NotGiven { mut frame, last } => {
                    let message = format!(
                        "cannot resume after event {}: this stream ended at event {last}, so that event was never sent; reload the answer",
                        self.cursor
                    );
                    let (error, closing) = self.plan.closing_with("resume_gap", &message);
                    frame.extend_from_slice(&error);
                    if let Some(closing) = closing {
                        frame.extend_from_slice(&closing);
                    }
                    self.send(frame.freeze()).await;
                    return;
                }
                Batch::Gap {
                    mut frame,
                    from,
                    to,
                } => {
                    let (error, closing) = self.plan.gap(from, to);
                    frame.extend_from_slice(&error);
                    if let Some(closing) = closing {
                        frame.extend_from_slice(&closing);
                    }
                    self.send(frame.freeze()).await;
                    return;
                }
            }
        }
    }

    /// The events of an `XREAD` reply after the cursor, checked for holes.
    fn batch(&mut self, reply: &Value) -> Batch {
        // Numbers from Redis are another process's word: no arithmetic on them may
        // overflow, whatever an entry says.
        let mut frame = BytesMut::new();
        let mut count = 0;
        let entries = entries_of(reply);
        let read = entries.len();
        for Entry { id, value, last } in entries {
            if id == b"2-0" {
                // Events the owner sent that never reached Redis (a full write queue, a
                // Redis that restarted empty) end the resume with the gap said.
                if let Some(last) = last.filter(|&last| last > self.cursor) {
                    return Batch::Gap {
                        frame,
                        from: self.cursor.saturating_add(1),
                        to: last,
                    };
                }
                // An id past every event of a stream still running when it was looked
                // up: only its end tells it was never given out. Not a whole answer.
                if let Some(last) = last.filter(|&last| last < self.cursor) {
                    return Batch::NotGiven { frame, last };
                }
                return Batch::End(frame, Ending::parse(value));
            }
            let seq = id
                .strip_prefix(b"1-")
                .and_then(|seq| std::str::from_utf8(seq).ok()?.parse::<u64>().ok());
            let next = self.cursor.saturating_add(1);
            let Some(seq) = seq.filter(|&seq| seq == next && seq > self.cursor) else {
                let to = seq.map_or(u64::MAX, |seq| seq.saturating_sub(1));
                return Batch::Gap {
                    frame,
                    from: next,
                    to,
                };
            };
            frame.extend_from_slice(value);
            self.cursor = seq;
            count += 1;
        }
        Batch::Events { frame, count, read }
    }

    async fn send(&self, frame: Bytes) -> bool {
        self.sender.send(frame).await.is_ok()
    }

    /// Redis failed mid-resume: the client is told, in the route's error shape.
    async fn fail(&self, error: &redis::RedisError) {
        self.plan.metrics.store_errors.inc();
        tracing::warn!(route = %self.plan.route, %error, "resume from Redis failed");
        self.tell(&format!("cannot resume: the resume store failed ({error})"))
            .await;
    }

    /// The stream's keys are gone without an end entry: the client is told, as for a
    /// failed store, rather than ended as if the answer were complete.
    async fn lost(&self) {
        self.plan.metrics.store_errors.inc();
        tracing::warn!(route = %self.plan.route, after = self.cursor, "a stream followed from Redis is gone from it without an end");
        let message = format!(
            "cannot resume: the events after {} of this stream are no longer in the resume store; reload the answer",
            self.cursor
        );
        self.tell(&message).await;
    }

    /// The owner dropped the stream before its end: the rest of the answer will not
    /// come, and the client is told so rather than ended as if it were complete.
    async fn dropped(&self, ending: Ending) {
        let why = match ending {
            Ending::Expired => "no client came back within its window",
            _ => "the route kept as many streams without a client as it may",
        };
        tracing::info!(route = %self.plan.route, after = self.cursor, why, "a stream followed from Redis was dropped by its replica");
        let message = format!(
            "cannot resume: the stream was dropped after event {} before its end ({why}); reload the answer",
            self.cursor
        );
        self.tell(&message).await;
    }

    /// Sends the route's error event of type `resume_store_unavailable` saying
    /// `message`, then the protocol's closing.
    async fn tell(&self, message: &str) {
        let (error, closing) = self.plan.closing_with("resume_store_unavailable", message);
        let mut frame = BytesMut::from(&error[..]);
        if let Some(closing) = closing {
            frame.extend_from_slice(&closing);
        }
        self.send(frame.freeze()).await;
    }
}

/// The entries of a one-stream `XREAD` reply (RESP2 arrays or RESP3 maps); nothing
/// for a timeout's nil.
fn entries_of(reply: &Value) -> Vec<Entry<'_>> {
    let streams: Vec<&Value> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|stream| match stream {
                Value::Array(pair) => pair.get(1),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams.into_iter().flat_map(entries_of_range).collect()
}

/// One entry of a stream's Redis Stream.
pub(super) struct Entry<'a> {
    pub(super) id: &'a [u8],
    /// An event's bytes (field `d`), or the end entry's `end` field.
    pub(super) value: &'a [u8],
    /// The end entry's `last`: the number of the stream's last event. Absent from end
    /// entries written before it was added.
    pub(super) last: Option<u64>,
}

/// The entries of an `XRANGE` reply, as [`entries_of`].
pub(super) fn entries_of_range(entries: &Value) -> Vec<Entry<'_>> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let Value::Array(entry) = entry else { continue };
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
            (entry.first(), entry.get(1))
        else {
            continue;
        };
        let field = |wanted: &[&[u8]]| {
            fields.chunks(2).find_map(|pair| match pair {
                [Value::BulkString(name), Value::BulkString(value)]
                    if wanted.contains(&name.as_slice()) =>
                {
                    Some(value.as_slice())
                }
                _ => None,
            })
        };
        let last =
            field(&[b"last"]).and_then(|last| std::str::from_utf8(last).ok()?.parse::<u64>().ok());
        out.push(Entry {
            id: id.as_slice(),
            value: field(&[b"d", b"end"]).unwrap_or_default(),
            last,
        });
    }
    out
}
