//! `store: redis`: a resumable stream's events mirrored to a Redis Stream, so a
//! reconnect that lands on another replica can resume it.
//!
//! Layout, per stream: `sse-gateway:ROUTE:KEY` is a Redis Stream whose entries are the
//! events as sent (field `d`), with the ids `1-SEQ`, and a last entry `2-0` when the
//! stream ended, whose field `end` says how ([`Ending`]) and field `last` the number of
//! its last event: every way a stream ends writes it, so a follower never waits for
//! events that will not come, and one short of `last` knows events were lost;
//! `sse-gateway:ROUTE:KEY:meta` holds the credential's fingerprint. Both
//! live while the stream runs and expire between `window` and 1.25 × `window` after it
//! ended: a refresh (the fingerprint written again, and a `PEXPIRE` of 1.25 × `window`)
//! is sent by the stream's keeper task every quarter `window` while it runs, and
//! carried by its first write, its end and the first write after a lost one; the
//! expiry costs no command per event. Refreshed only by writes, the keys of a stream
//! whose model pauses longer than 1.25 × `window` would expire under a running stream,
//! and a stream whose Redis restarted empty would never get its fingerprint back (no
//! resume, no stop, on any other replica). The stream keeps about `max_bytes` of
//! events (`budget.rs`: `XTRIM MINID` as the bytes pass it), and at most about
//! `max_bytes / 64` entries (`MAXLEN ~`).
//!
//! **Never on the hot path.** A stream hands each frame's events to one writer task
//! per process through a bounded channel (`try_send`: never a wait); the task sends
//! whatever has queued up as one pipeline, one round trip for many events of many
//! streams. When Redis is down or slow, the queue fills and writes are dropped,
//! counted in `resume_store_errors_total` and logged: the user's stream is never
//! delayed or failed (fail open). A reader on another replica sees the hole in the
//! numbers and says so with an error event, never a silent gap.
//!
//! **Stops across replicas.** A `DELETE` that lands on a replica which does not own
//! the stream checks the credential against the stream's `:meta` fingerprint, then
//! publishes the stream's Redis key on [`STOP_CHANNEL`]. Every replica subscribes to it
//! (one connection per process, re-established when it drops), and the owner stops the
//! stream as if the `DELETE` had reached it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::{mpsc, oneshot};

use super::budget::Budget;
use super::id::{Fingerprint, StreamKey};
use super::stamp::Span;
use super::table::Routes;
use crate::config::RedisTarget;

/// Writes queued at most; beyond, writes are dropped and counted.
const QUEUE: usize = 8192;
/// Event bytes queued at most, over every stream of the process; beyond, writes are
/// dropped and counted. A write holds its upstream read (up to 256 KiB) until it is
/// sent: bounded by count alone, a fast stream with a slow Redis held gigabytes.
const QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Writes sent in one pipeline at most.
const BATCH: usize = 512;
/// How long a connection attempt or a pipeline may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Roughly the bytes of an event with its id: `max_bytes` in entries for `MAXLEN ~`.
const BYTES_PER_ENTRY: usize = 64;
/// The channel on which a replica asks the owner of a stream to stop it.
const STOP_CHANNEL: &str = "sse-gateway:stop";
/// How long the stop listener waits before it subscribes again after a failure.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// A process's connection to the Redis in `state.redis`.
#[derive(Debug)]
pub(crate) struct RedisStore {
    client: redis::Client,
    /// The connection the one-off commands share (lookups, stops): one per process,
    /// made on first use (by one caller, the others waiting for it) and again after it
    /// breaks. A connection per command would
    /// let a flood of requests with made-up ids open as many to Redis, and leave the
    /// gateway's ports in `TIME_WAIT`. Followers keep their own: a blocking read
    /// would hold up every command behind it.
    shared: tokio::sync::Mutex<SharedConnection>,
    queue: WriteQueue,
    /// Ends the stop listener with the store (a reload to another Redis drops it).
    _listener: tokio_util::sync::DropGuard,
}

/// The connection the one-off commands share, numbered so that a caller that saw it
/// fail drops that one, not the one another caller made since.
#[derive(Debug, Default)]
struct SharedConnection {
    connection: Option<(u64, MultiplexedConnection)>,
    made: u64,
    /// When making one last failed.
    failed_at: Option<tokio::time::Instant>,
}

impl SharedConnection {
    fn forget(&mut self, made: u64) {
        if self
            .connection
            .as_ref()
            .is_some_and(|(number, _)| *number == made)
        {
            self.connection = None;
        }
    }
}

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("cannot read the CA file {}: {source}", file.display())]
    CaFile {
        file: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// How a stream ended, as its end entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The upstream's answer ended: followers end with it.
    Ended,
    /// A client stopped it (`DELETE`): followers end with it, and a reconnect on any
    /// replica is told to stop (`204`). A replica not yet upgraded reads it as
    /// [`Ending::Ended`].
    Stopped,
    /// Dropped at its window, no client having come back: on the owner its id is
    /// `expired`.
    Expired,
    /// Dropped when its client left (the route kept `max_detached` streams already):
    /// on the owner its id is unknown.
    Cancelled,
}

impl Ending {
    /// The end entry's `end` field; `1` for [`Ending::Ended`], as before endings were
    /// told apart, so a replica not yet upgraded reads every end entry as an end.
    fn field(self) -> &'static [u8] {
        match self {
            Ending::Ended => b"1",
            Ending::Stopped => b"stopped",
            Ending::Expired => b"expired",
            Ending::Cancelled => b"cancelled",
        }
    }

    /// The ending an end entry's `end` field names (anything unknown is an end).
    pub(crate) fn parse(field: &[u8]) -> Ending {
        match field {
            b"stopped" => Ending::Stopped,
            b"expired" => Ending::Expired,
            b"cancelled" => Ending::Cancelled,
            _ => Ending::Ended,
        }
    }
}

/// One stream's part of a batch: a frame's events, a refresh of its keys, the end.
#[derive(Debug, Clone)]
struct Write {
    key: Arc<str>,
    /// The events' bytes, as [`WriteQueue`] counts them.
    bytes: usize,
    refresh: Option<Refresh>,
    max_entries: usize,
    events: Vec<(u64, Bytes)>,
    /// Events before this one go (`XTRIM MINID`): what is kept passed `max_bytes`.
    keep_from: Option<u64>,
    /// How the stream ended, and the number of its last event.
    end: Option<(Ending, u64)>,
    errors: IntCounter,
    /// The stream's [`Mirror::lost`], set when this write is lost.
    lost: Arc<AtomicBool>,
}

/// What keeps a stream's keys alive: the fingerprint written again to `:meta` (Redis
/// may have lost it), and both keys' expiry.
#[derive(Debug, Clone, Copy)]
struct Refresh {
    fingerprint: Fingerprint,
    expire_ms: u64,
}

/// A stream's handle on the store: where its events go, and how they are bounded.
#[derive(Debug)]
pub(crate) struct Mirror {
    store: Arc<RedisStore>,
    key: Arc<str>,
    refresh: Refresh,
    max_entries: usize,
    /// What the stream's events weigh, for trimming by bytes.
    budget: Budget,
    /// Redis may not hold the stream's keys: set at first, and when a write is lost
    /// (queue full, Redis failed, maybe restarted empty). The next write then carries
    /// the refresh, rather than the keeper up to a quarter window later.
    lost: Arc<AtomicBool>,
    /// Dropped when the stream ends (or is dropped): the keeper task then stops.
    keeper: Option<oneshot::Sender<()>>,
    errors: IntCounter,
}

/// The Redis key of a stream.
pub(crate) fn stream_key(route: &str, key: &StreamKey) -> String {
    format!(
        "sse-gateway:{route}:{}",
        String::from_utf8_lossy(&key.hex())
    )
}

/// The route and stream key of a stream's Redis key (the inverse of [`stream_key`]).
fn parse_stream_key(redis_key: &str) -> Option<(&str, StreamKey)> {
    let rest = redis_key.strip_prefix("sse-gateway:")?;
    let (route, key) = rest.rsplit_once(':')?;
    Some((route, StreamKey::parse_hex(key.as_bytes())?))
}

/// The key a follower on another replica sets, with a short expiry, while it reads
/// the stream: the owner does not drop a stream someone still reads.
pub(crate) fn reader_key(redis_key: &str) -> String {
    format!("{redis_key}:reader")
}

impl RedisStore {
    /// Opens the client (no connection yet) and starts the writer task, and the
    /// listener that stops `routes`' streams when another replica asks.
    pub(crate) fn start(
        target: &RedisTarget,
        routes: Routes,
    ) -> Result<Arc<RedisStore>, StartError> {
        let client = match &target.ca_file {
            None => redis::Client::open(target.url.as_str())?,
            Some(file) => {
                // Read when the store starts: a reload that keeps url and path keeps
                // this store, and the CA it read.
                let root_cert = std::fs::read(file).map_err(|source| StartError::CaFile {
                    file: file.clone(),
                    source,
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(target.url.as_str(), certificates)?
            }
        };
        let (sender, writes) = mpsc::channel(QUEUE);
        let queue = WriteQueue {
            sender,
            bytes: Arc::default(),
        };
        tokio::spawn(write_batches(client.clone(), writes, queue.bytes.clone()));
        let listener = tokio_util::sync::CancellationToken::new();
        let stopped = listener.clone();
        let listening = listen_for_stops(client.clone(), routes);
        tokio::spawn(async move {
            tokio::select! {
                () = stopped.cancelled() => {}
                () = listening => {}
            }
        });
        Ok(Arc::new(RedisStore {
            client,
            shared: tokio::sync::Mutex::new(SharedConnection::default()),
            queue,
            _listener: listener.drop_guard(),
        }))
    }

    /// Asks every replica to stop the stream at `redis_key` (its owner does); how
    /// many replicas heard it. 0 when none listens right now (each subscribes again a
    /// second after losing Redis), so the stop reached nobody.
    pub(crate) async fn publish_stop(&self, redis_key: &str) -> redis::RedisResult<i64> {
        self.query_shared(redis::cmd("PUBLISH").arg(STOP_CHANNEL).arg(redis_key))
            .await
    }

    /// `command`'s answer, asked on the shared connection ([`Self::on_shared`]).
    async fn query_shared<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        self.on_shared(|mut connection| async move { command.query_async(&mut connection).await })
            .await
    }

    /// Runs `command` on the shared connection. One that broke (Redis restarted) or
    /// went silent (a NAT or load balancer that forgot the flow answers nothing) is
    /// replaced, and the command sent once more.
    async fn on_shared<T, F, Fut>(&self, command: F) -> redis::RedisResult<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let cached = self.shared.lock().await.connection.clone();
        if let Some((made, connection)) = cached {
            match command(connection).await {
                Err(error) if error.is_unrecoverable_error() || error.is_timeout() => {
                    self.shared.lock().await.forget(made);
                }
                done => return done,
            }
        }
        let connection = self.shared_or_new().await?;
        command(connection).await
    }

    /// The shared connection, made if there is none. One caller connects while the
    /// others wait for its connection, so a burst of lookups opens one; when it fails,
    /// those that waited fail at once, and the next try comes a `TIMEOUT` later.
    async fn shared_or_new(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut shared = self.shared.lock().await;
        if let Some((_, connection)) = &shared.connection {
            return Ok(connection.clone());
        }
        if shared.failed_at.is_some_and(|at| at.elapsed() < TIMEOUT) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis could not be reached a moment ago",
            )));
        }
        match self.connect().await {
            Ok(connection) => {
                shared.made += 1;
                shared.connection = Some((shared.made, connection.clone()));
                shared.failed_at = None;
                Ok(connection)
            }
            Err(error) => {
                shared.failed_at = Some(tokio::time::Instant::now());
                Err(error)
            }
        }
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A connection for a blocking read: its responses may take `block` longer.
    pub(crate) async fn connect_blocking(
        &self,
        block: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT + block));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Whether a replica other than the owner follows the stream now: its follower
    /// keeps [`reader_key`] alive while it reads.
    pub(crate) async fn has_remote_reader(&self, redis_key: &str) -> redis::RedisResult<bool> {
        self.query_shared(redis::cmd("EXISTS").arg(reader_key(redis_key)))
            .await
    }

    /// What Redis holds of a stream, `None` when it knows no such stream. One round
    /// trip.
    pub(crate) async fn resumable(&self, redis_key: &str) -> redis::RedisResult<Option<Held>> {
        let mut lookup = redis::pipe();
        lookup
            .cmd("GET")
            .arg(format!("{redis_key}:meta"))
            .cmd("XRANGE")
            .arg(redis_key)
            .arg("2-0")
            .arg("2-0")
            .cmd("XRANGE")
            .arg(redis_key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let (meta, end, first): (Option<Vec<u8>>, redis::Value, redis::Value) = self
            .on_shared(|mut connection| {
                let lookup = &lookup;
                async move { lookup.query_async(&mut connection).await }
            })
            .await?;
        let Some(fingerprint) = meta.and_then(|bytes| Some(Fingerprint(bytes.try_into().ok()?)))
        else {
            return Ok(None);
        };
        let end = super::follow::entries_of_range(&end);
        let ending = end.first().map(|entry| Ending::parse(entry.value));
        let last = end.first().and_then(|entry| entry.last);
        // Event entries are `1-SEQ`, the end entry `2-0`: a stream trimmed of all its
        // events holds none up to the last one the end names.
        let first_kept = super::follow::entries_of_range(&first)
            .first()
            .and_then(|entry| match entry.id.strip_prefix(b"1-") {
                Some(seq) => std::str::from_utf8(seq).ok()?.parse().ok(),
                None => entry.last.map(|last| last + 1),
            });
        Ok(Some(Held {
            fingerprint,
            ending,
            first_kept,
            last,
        }))
    }

    /// The fingerprint a stream was opened with; `None` when Redis knows no such stream.
    pub(crate) async fn fingerprint(
        &self,
        redis_key: &str,
    ) -> redis::RedisResult<Option<Fingerprint>> {
        let meta: Option<Vec<u8>> = self
            .query_shared(redis::cmd("GET").arg(format!("{redis_key}:meta")))
            .await?;
        Ok(meta.and_then(|bytes| Some(Fingerprint(bytes.try_into().ok()?))))
    }
}

/// What Redis holds of a stream ([`RedisStore::resumable`]).
#[derive(Debug)]
pub(crate) struct Held {
    /// The credential's fingerprint the stream was opened with.
    pub(crate) fingerprint: Fingerprint,
    /// How it ended, if it did.
    pub(crate) ending: Option<Ending>,
    /// The number of the oldest event still held, if any.
    pub(crate) first_kept: Option<u64>,
    /// The number of the stream's last event, once it ended (from its end entry).
    pub(crate) last: Option<u64>,
}

impl Mirror {
    pub(crate) fn new(
        store: Arc<RedisStore>,
        key: String,
        window: Duration,
        max_bytes: usize,
        fingerprint: Fingerprint,
        errors: IntCounter,
    ) -> Mirror {
        let key: Arc<str> = Arc::from(key);
        let max_entries = (max_bytes / BYTES_PER_ENTRY).max(16);
        let lost = Arc::new(AtomicBool::new(true));
        let (keeper, stopped) = oneshot::channel();
        let refresh = Refresh {
            fingerprint,
            expire_ms: expire_ms(window),
        };
        let write = Write {
            key: key.clone(),
            bytes: 0,
            refresh: Some(refresh),
            max_entries,
            events: Vec::new(),
            keep_from: None,
            end: None,
            errors: errors.clone(),
            lost: lost.clone(),
        };
        tokio::spawn(keep_alive(store.queue.clone(), write, window / 4, stopped));
        Mirror {
            store,
            key,
            refresh,
            max_entries,
            budget: Budget::new(max_bytes),
            lost,
            keeper: Some(keeper),
            errors,
        }
    }

    /// Queues a frame's numbered events (slices of `stamped`, which they keep whole
    /// until sent: the queue counts it whole).
    pub(crate) fn events(&mut self, stamped: &Bytes, spans: &[Span]) {
        if spans.is_empty() {
            return;
        }
        let mut keep_from = None;
        let events = spans
            .iter()
            .map(|span| {
                keep_from = self
                    .budget
                    .add(span.seq, span.end - span.start)
                    .or(keep_from);
                (span.seq, stamped.slice(span.start..span.end))
            })
            .collect();
        self.queue(events, stamped.len(), keep_from, None);
    }

    /// Queues the stream's end after event `last` (once: every path that ends a
    /// stream may call it), and stops the keeper: from here the keys expire after
    /// 1.25 × `window`.
    pub(crate) fn end(&mut self, ending: Ending, last: u64) {
        if self.keeper.take().is_some() {
            self.queue(Vec::new(), 0, None, Some((ending, last)));
        }
    }

    fn queue(
        &mut self,
        events: Vec<(u64, Bytes)>,
        bytes: usize,
        keep_from: Option<u64>,
        end: Option<(Ending, u64)>,
    ) {
        let count = events.len().max(1) as u64;
        // A plain load per frame; the swap only after a loss.
        let lost = self.lost.load(Ordering::Relaxed) && self.lost.swap(false, Ordering::Relaxed);
        let write = Write {
            key: self.key.clone(),
            bytes,
            refresh: (end.is_some() || lost).then_some(self.refresh),
            max_entries: self.max_entries,
            events,
            keep_from,
            end,
            errors: self.errors.clone(),
            lost: self.lost.clone(),
        };
        if let Err(error) = self.store.queue.try_send(write) {
            self.errors.inc_by(count);
            self.lost.store(true, Ordering::Relaxed);
            warn_once(&format!("the Redis write queue is {error}; events dropped, resume on other replicas may fail"));
        }
    }
}

/// The keys' expiry after a refresh: 1.25 × `window`, so refreshes a quarter window
/// apart leave a whole window of slack for a slow or lost one.
fn expire_ms(window: Duration) -> u64 {
    let expiry = window + window / 4;
    u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A stream's keeper: queues `refresh` (a write with no events) every `every`, until
/// `stopped` (the stream ended, or its mirror was dropped). An upstream silent for
/// longer than the keys' expiry (a model thinking) then does not lose them under a
/// follower on another replica.
async fn keep_alive(
    queue: WriteQueue,
    refresh: Write,
    every: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let every = every.max(Duration::from_millis(1));
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(error) = queue.try_send(refresh.clone()) {
            refresh.errors.inc();
            refresh.lost.store(true, Ordering::Relaxed);
            warn_once(&format!("the Redis write queue is {error}; a stream's keys were not refreshed, resume on other replicas may fail"));
        }
    }
}

/// The stop listener: subscribed to [`STOP_CHANNEL`] for as long as the process runs,
/// again after every failure, and stops the streams of `routes` it is asked to.
async fn listen_for_stops(client: redis::Client, routes: Routes) {
    loop {
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
                })??;
            pubsub.subscribe(STOP_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = match subscribed.await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                tracing::debug!(%error, "cannot subscribe to stops from other replicas; retrying");
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                continue;
            }
        };
        let mut messages = std::pin::pin!(pubsub.on_message());
        while let Some(message) =
            std::future::poll_fn(|cx| futures_core::Stream::poll_next(messages.as_mut(), cx)).await
        {
            let Ok(redis_key) = std::str::from_utf8(message.get_payload_bytes()) else {
                continue;
            };
            let Some((route, key)) = parse_stream_key(redis_key) else {
                continue;
            };
            let table = routes.get(route);
            if table.is_some_and(|table| table.stop_checked_elsewhere(&key)) {
                tracing::info!(route, "stream stopped at another replica's request");
            }
        }
        tracing::debug!("the subscription to stops from other replicas ended; subscribing again");
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

/// The queue to the writer task, bounded in writes and in the bytes they hold.
#[derive(Debug, Clone)]
struct WriteQueue {
    sender: mpsc::Sender<Write>,
    /// Event bytes queued or in the pipeline being sent; the writer takes back a
    /// batch's once it is done with it.
    bytes: Arc<AtomicUsize>,
}

impl WriteQueue {
    /// Queues `write` unless the queue is full in writes or in bytes, or closed.
    fn try_send(&self, write: Write) -> Result<(), &'static str> {
        let bytes = write.bytes;
        // A write without events (an end, a refresh) holds nothing: never refused for
        // room, also not while other senders' bytes briefly overshoot the bound.
        if bytes > 0 && self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err("full (32 MiB of events wait for Redis)");
        }
        self.sender.try_send(write).map_err(|error| {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            match error {
                mpsc::error::TrySendError::Full(_) => "full",
                mpsc::error::TrySendError::Closed(_) => "closed",
            }
        })
    }
}

/// The writer task: whatever is queued goes out as one pipeline. `queued`: the
/// queue's byte count, given back once a batch is sent or lost.
async fn write_batches(
    client: redis::Client,
    mut writes: mpsc::Receiver<Write>,
    queued: Arc<AtomicUsize>,
) {
    let store_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let mut connection: Option<MultiplexedConnection> = None;
    let mut batch = Vec::with_capacity(BATCH);
    while writes.recv_many(&mut batch, BATCH).await > 0 {
        let pipeline = pipeline_of(&batch);
        if connection.is_none() {
            connection = client
                .get_multiplexed_async_connection_with_config(&store_config)
                .await
                .map_err(|error| warn_once(&format!("cannot connect to Redis: {error}")))
                .ok();
        }
        let sent = match connection.as_mut() {
            Some(connection) => pipeline
                .query_async::<()>(connection)
                .await
                .map_err(|error| warn_once(&format!("Redis write failed: {error}"))),
            None => Err(()),
        };
        if sent.is_ok() {
            if WARNED.swap(false, Ordering::Relaxed) {
                tracing::info!("Redis writes succeed again; resume across replicas is back");
            }
        } else {
            connection = None;
            for write in &batch {
                write.errors.inc_by(write.events.len().max(1) as u64);
                write.lost.store(true, Ordering::Relaxed);
            }
        }
        drop(pipeline);
        let sent_bytes: usize = batch.iter().map(|write| write.bytes).sum();
        batch.clear();
        queued.fetch_sub(sent_bytes, Ordering::Relaxed);
    }
}

fn pipeline_of(batch: &[Write]) -> redis::Pipeline {
    let mut pipeline = redis::pipe();
    for write in batch {
        if let Some(refresh) = &write.refresh {
            // Written again with every refresh: after a restart Redis has it back.
            pipeline
                .cmd("SET")
                .arg(format!("{}:meta", write.key))
                .arg(&refresh.fingerprint.0[..])
                .arg("PX")
                .arg(refresh.expire_ms)
                .ignore();
        }
        for (seq, event) in &write.events {
            pipeline
                .cmd("XADD")
                .arg(&*write.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(write.max_entries)
                .arg(format!("1-{seq}"))
                .arg("d")
                .arg(&event[..])
                .ignore();
        }
        if let Some(keep_from) = write.keep_from {
            // Exact, not `~`: the bound is in bytes, and this runs once per slice.
            pipeline
                .cmd("XTRIM")
                .arg(&*write.key)
                .arg("MINID")
                .arg(format!("1-{keep_from}"))
                .ignore();
        }
        if let Some((ending, last)) = write.end {
            // `last`: a follower short of it lost events on the way, and says so.
            pipeline
                .cmd("XADD")
                .arg(&*write.key)
                .arg("2-0")
                .arg("end")
                .arg(ending.field())
                .arg("last")
                .arg(last)
                .ignore();
        }
        if let Some(refresh) = &write.refresh {
            // After the entries, so a stream they create expires too. A refresh alone
            // on a stream Redis lost is a no-op: the next entry creates it again.
            pipeline
                .cmd("PEXPIRE")
                .arg(&*write.key)
                .arg(refresh.expire_ms)
                .ignore();
        }
    }
    pipeline
}

/// Whether a Redis problem was logged and not yet followed by a success.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Logs a Redis problem once per outage, not once per batch.
fn warn_once(message: &str) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("{message}; streams go on without resume across replicas (counted in resume_store_errors_total)");
    }
}
