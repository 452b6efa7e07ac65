//! A route's resumable streams by key, kept across config reloads (a reload must not
//! forget a stream a client is about to resume), and the count of detached streams
//! that `max_detached` caps.
//!
//! A finished stream leaves the table when its window is over (swept once a `tick`,
//! and checked exactly on every lookup); a running one when a client stops it, or when
//! its driver drops its upstream for lack of a client. Keys of expired and stopped
//! streams are remembered for one more window, bounded, so a late resume is told
//! `expired` rather than `unknown`, and one of a stopped stream gets `204` rather than
//! a new answer: the user stopped that one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

use super::id::{EventId, Fingerprint, StreamKey};
use super::slot::Slot;
use super::store::RedisStore;
use crate::config::RedisTarget;

/// Keys of expired and stopped streams remembered at most (about 100 bytes each).
const MAX_GONE_KEYS: usize = 16 * 1024;

/// Every route's table, by route name: what outlives a config generation.
#[derive(Debug, Default)]
pub struct Tables {
    routes: Routes,
    redis: Mutex<RedisState>,
}

/// The tables by route name, shared with the Redis store's stop listener.
#[derive(Debug, Default, Clone)]
pub(crate) struct Routes(Arc<Mutex<HashMap<String, Arc<Table>>>>);

impl Routes {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Table>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The table of `route`, if it has one.
    pub(crate) fn get(&self, route: &str) -> Option<Arc<Table>> {
        self.lock().get(route).cloned()
    }
}

/// `state.redis` of the config being compiled, and the store once started (with the
/// settings it was started for).
#[derive(Debug, Default)]
struct RedisState {
    target: Option<RedisTarget>,
    running: Option<(RedisTarget, Arc<RedisStore>)>,
}

impl Tables {
    pub fn new() -> Tables {
        Tables::default()
    }

    /// Sets the Redis of the config about to be compiled.
    pub(crate) fn set_redis(&self, target: Option<&RedisTarget>) {
        self.redis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .target = target.cloned();
    }

    /// The store for the configured Redis, started on first use (one writer per
    /// Redis and CA file).
    pub(crate) fn redis(&self) -> Option<Arc<RedisStore>> {
        let mut redis = self
            .redis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let target = redis.target.clone()?;
        if let Some((running, store)) = &redis.running {
            if *running == target {
                return Some(store.clone());
            }
        }
        match RedisStore::start(&target, self.routes.clone()) {
            Ok(store) => {
                redis.running = Some((target, store.clone()));
                Some(store)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot use state.redis; resume across replicas is off");
                None
            }
        }
    }

    /// The route's table, made on first use; `window` sets how often it is swept.
    pub(crate) fn table(&self, route: &str, window: Duration, detached: IntGauge) -> Arc<Table> {
        let mut tables = self.routes.lock();
        let table = tables
            .entry(route.to_owned())
            .or_insert_with(|| Arc::new(Table::new(detached)));
        table.set_tick(window);
        table.clone()
    }
}

#[derive(Debug)]
pub(crate) struct Table {
    inner: Mutex<Inner>,
    detached: AtomicUsize,
    detached_gauge: IntGauge,
    /// Milliseconds between sweeps.
    tick_ms: AtomicU64,
    sweeping: AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<StreamKey, Arc<Slot>>,
    /// Keys of streams no longer here: until when they are remembered, and why they
    /// went.
    gone: HashMap<StreamKey, (Instant, Gone)>,
    gone_order: VecDeque<StreamKey>,
}

/// Why a remembered stream left the table.
#[derive(Debug, Clone, Copy)]
enum Gone {
    /// Its window ran out.
    Expired,
    /// A client stopped it (`DELETE`); the credential it was opened with.
    Stopped(Fingerprint),
    /// Its client left before its first event, and it was cancelled; the credential it
    /// was opened with. A stop with the id from its response head finds it stopped
    /// already; a resume, which found nothing to resume, starts anew.
    Cancelled(Fingerprint),
}

/// Why a stream leaves the table: what its key is remembered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// It ended, was stopped (remembered as such) or cut: a resume finds it unknown.
    Ended,
    /// Its window ran out: a resume finds it expired.
    Expired,
    /// Its client left before its first event: cancelled, as [`Gone::Cancelled`].
    Unstarted,
}

/// What a resume's id names.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A live or finished stream the request may read; it is attached to it now.
    Found(Arc<Slot>),
    Unknown,
    Expired,
    /// Known, but the request's credential is not the stream's.
    Forbidden,
    /// A client stopped the stream (`DELETE`).
    Stopped,
    /// This replica owns the stream, and the id is past every event it gave out: no
    /// other replica, nor Redis, knows better.
    NotGiven,
    /// The stream has finished and the request's id is its last event: nothing is
    /// left to send. Not attached.
    HadAll,
}

/// What a client leaving did to its stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Others still read it, or it has finished.
    Kept,
    /// Nobody reads it now: its upstream goes on for `window`.
    Detached,
    /// Nobody reads it, and the route already keeps `max_detached` such streams.
    OverCap,
}

impl Table {
    fn new(detached_gauge: IntGauge) -> Table {
        Table {
            inner: Mutex::default(),
            detached: AtomicUsize::new(0),
            detached_gauge,
            tick_ms: AtomicU64::new(1000),
            sweeping: AtomicBool::new(false),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sweeps often enough that a finished stream is freed soon after its window:
    /// a quarter of the window, between 10 ms and 1 s.
    fn set_tick(&self, window: Duration) {
        let tick = (window / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let ms = u64::try_from(tick.as_millis()).unwrap_or(1000);
        self.tick_ms.store(ms, Ordering::Relaxed);
    }

    /// Streams without a client now.
    pub(crate) fn detached(&self) -> usize {
        self.detached.load(Ordering::Relaxed)
    }

    /// Adds a new stream (attached to its first client); starts the sweeper on first use.
    pub(crate) fn insert(self: &Arc<Self>, slot: Arc<Slot>) {
        self.inner().slots.insert(slot.key, slot);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep_every_tick(Arc::downgrade(self)));
        }
    }

    /// The stream an id names, checked against the request's credential; a found
    /// stream has one more reader.
    ///
    /// Looked up, checked and attached under the table's lock, under which a removal
    /// ends a stream and takes it out: a lookup finds a stream before its removal or
    /// not at all, never ended by it but still here, which a resume would read to a
    /// clean end (a cut answer taken for a whole one).
    pub(crate) fn lookup(&self, id: &EventId, credential: Option<&[u8]>, now: Instant) -> Lookup {
        let mut inner = self.inner();
        let slot = match inner.slots.get(&id.key) {
            Some(slot) => slot.clone(),
            None => {
                return match inner.remembered(&id.key, now) {
                    Some(Gone::Expired) => Lookup::Expired,
                    Some(Gone::Stopped(fingerprint))
                        if fingerprint.matches(&id.key.fingerprint(credential)) =>
                    {
                        Lookup::Stopped
                    }
                    Some(Gone::Stopped(_)) => Lookup::Forbidden,
                    Some(Gone::Cancelled(_)) | None => Lookup::Unknown,
                }
            }
        };
        if !slot.admits(credential) {
            return Lookup::Forbidden;
        }
        let mut state = slot.state();
        if state.lifetime.is_expired(now) {
            drop(state);
            self.take_out(&mut inner, &slot, now, Removal::Expired);
            return Lookup::Expired;
        }
        if slot.is_stopped() {
            // Stopped, or cut over `max_detached`: its driver takes it out of the table
            // at its next step. Refused as just after that, not read to a clean end as
            // if the answer were whole.
            return if slot.stopped_by_client() {
                Lookup::Stopped
            } else {
                Lookup::Unknown
            };
        }
        if id.seq >= state.log.next_seq() {
            // Not an id this stream gave out: nothing to resume from.
            return Lookup::NotGiven;
        }
        if state.lifetime.is_finished() && id.seq + 1 == state.log.next_seq() {
            return Lookup::HadAll;
        }
        if state.lifetime.attach() {
            self.count_detached(-1);
        }
        drop(state);
        drop(inner);
        slot.changed.notify_one();
        Lookup::Found(slot)
    }

    /// A client stopped reading `slot` at `now`.
    pub(crate) fn release(&self, slot: &Slot, now: Instant, max_detached: usize) -> Release {
        let mut state = slot.state();
        if !state.lifetime.release(now) {
            return Release::Kept;
        }
        if self.detached() >= max_detached {
            // Never counted: ended now, and its driver drops the upstream. Cancelled
            // under the lock, so a lookup never finds it ended but not yet cut.
            state.lifetime.finish(now);
            slot.cancel();
            drop(state);
            return Release::OverCap;
        }
        self.count_detached(1);
        drop(state);
        slot.changed.notify_one();
        Release::Detached
    }

    /// `slot`'s body ended at `now`: it stays resumable for its window.
    pub(crate) fn finish(&self, slot: &Slot, now: Instant) {
        if slot.finish(now) {
            self.count_detached(-1);
        }
    }

    /// Takes `slot` out of the table, its key remembered as `why` says (a stopped
    /// stream's as stopped, whatever the reason given).
    pub(crate) fn remove(&self, slot: &Slot, now: Instant, why: Removal) {
        let mut inner = self.inner();
        self.take_out(&mut inner, slot, now, why);
    }

    /// A detached stream's window ran out at `now`, as its driver found: taken out of
    /// the table (and so ended) if it is still so under the table's lock. A resume
    /// that came first has attached it, and it no longer expires; one that comes after
    /// finds it gone (`expired`).
    pub(crate) fn expire(&self, slot: &Slot, now: Instant) {
        let mut inner = self.inner();
        if slot.state().lifetime.is_expired(now) {
            self.take_out(&mut inner, slot, now, Removal::Expired);
        }
    }

    /// Ends `slot` and takes it out of `inner`, this table's, locked by the caller: a
    /// lookup never finds it ended but still here.
    fn take_out(&self, inner: &mut Inner, slot: &Slot, now: Instant, why: Removal) {
        let window = slot.state().lifetime.window();
        // Ends it for any reader still attached (woken to see it: a resumed client
        // waiting for more would otherwise wait for ever), and uncounts it once.
        // `finish` says "detached" once per detach: the one removal told so uncounts
        // it, whichever of two removals (an expiry and a resume, say) comes first.
        let was_detached = slot.finish(now);
        if was_detached {
            self.count_detached(-1);
        }
        // A stream may be taken out twice (a stop, then its driver): remembered once.
        if inner.slots.remove(&slot.key).is_none() {
            return;
        }
        let gone = match why {
            _ if slot.stopped_by_client() => Some(Gone::Stopped(slot.fingerprint)),
            Removal::Expired => Some(Gone::Expired),
            Removal::Unstarted => Some(Gone::Cancelled(slot.fingerprint)),
            Removal::Ended => None,
        };
        if let Some(gone) = gone {
            inner.remember(slot.key, now + window, gone);
        }
    }

    /// Stops the stream `key` names, if the credential is its own; true if it was there,
    /// or was stopped already within its window (a double click, a second tab's stop
    /// button: the stream is stopped as asked, not unknown).
    pub(crate) fn stop(&self, key: &StreamKey, credential: Option<&[u8]>) -> bool {
        let slot = {
            let inner = self.inner();
            match inner.slots.get(key) {
                Some(slot) => slot.clone(),
                None => {
                    return matches!(
                        inner.remembered(key, Instant::now()),
                        Some(Gone::Stopped(fingerprint) | Gone::Cancelled(fingerprint))
                            if fingerprint.matches(&key.fingerprint(credential))
                    )
                }
            }
        };
        if !slot.admits(credential) {
            return false;
        }
        self.stop_slot(&slot);
        true
    }

    /// Stops the stream `key` names for another replica, which checked the credential
    /// against the fingerprint in Redis; true if it was here.
    pub(crate) fn stop_checked_elsewhere(&self, key: &StreamKey) -> bool {
        let Some(slot) = self.inner().slots.get(key).cloned() else {
            return false;
        };
        self.stop_slot(&slot);
        true
    }

    fn stop_slot(&self, slot: &Slot) {
        slot.stop();
        self.remove(slot, Instant::now(), Removal::Ended);
    }

    /// Frees the finished streams whose window is over. A detached stream that still
    /// runs is left to its driver, which decides at its window's end, after asking
    /// whether another replica follows it: stopping it here would race that question.
    fn sweep(&self, now: Instant) {
        let expired: Vec<Arc<Slot>> = self
            .inner()
            .slots
            .values()
            .filter(|slot| {
                let state = slot.state();
                state.lifetime.is_finished() && state.lifetime.is_expired(now)
            })
            .cloned()
            .collect();
        for slot in expired {
            self.remove(&slot, now, Removal::Expired);
        }
        self.inner().forget_gone(now);
    }

    fn count_detached(&self, delta: isize) {
        if delta > 0 {
            self.detached.fetch_add(1, Ordering::Relaxed);
            self.detached_gauge.inc();
        } else {
            self.detached.fetch_sub(1, Ordering::Relaxed);
            self.detached_gauge.dec();
        }
    }
}

impl Inner {
    fn remembered(&self, key: &StreamKey, now: Instant) -> Option<Gone> {
        match self.gone.get(key) {
            Some((until, gone)) if now < *until => Some(*gone),
            _ => None,
        }
    }

    fn remember(&mut self, key: StreamKey, until: Instant, gone: Gone) {
        if self.gone_order.len() >= MAX_GONE_KEYS {
            if let Some(oldest) = self.gone_order.pop_front() {
                self.gone.remove(&oldest);
            }
        }
        self.gone.insert(key, (until, gone));
        self.gone_order.push_back(key);
    }

    fn forget_gone(&mut self, now: Instant) {
        while let Some(key) = self.gone_order.front() {
            if self.gone.get(key).is_some_and(|(until, _)| now < *until) {
                break;
            }
            self.gone.remove(key);
            self.gone_order.pop_front();
        }
    }
}

/// The sweeper of one table; ends when the table is gone.
async fn sweep_every_tick(table: Weak<Table>) {
    loop {
        let tick = match table.upgrade() {
            Some(table) => Duration::from_millis(table.tick_ms.load(Ordering::Relaxed)),
            None => return,
        };
        tokio::time::sleep(tick).await;
        let Some(table) = table.upgrade() else {
            return;
        };
        table.sweep(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::resume::stamp::Stamper;

    const WINDOW: Duration = Duration::from_secs(30);
    const CREDENTIAL: Option<&[u8]> = Some(b"Bearer user-1");

    /// A table with one stream, one event in, whose client left at `left`.
    fn detached_stream(left: Instant) -> (Arc<Table>, Arc<Slot>, EventId) {
        let table = Arc::new(Table::new(IntGauge::new("detached", "detached").unwrap()));
        let key = StreamKey::generate().unwrap();
        let fingerprint = key.fingerprint(CREDENTIAL);
        let slot = Arc::new(Slot::new(key, fingerprint, WINDOW, 1 << 20, None));
        slot.publish(&mut Stamper::new(&key), b"data: 1\n\n", None);
        // Not `insert`, which starts the sweeper on a runtime.
        table.inner().slots.insert(key, slot.clone());
        assert_eq!(table.release(&slot, left, 10), Release::Detached);
        (table, slot, EventId { key, seq: 1 })
    }

    /// A stopped stream is taken out twice (the stop, then its driver): its key is
    /// remembered once, and pushes no other key out of a full memory.
    #[test]
    fn a_stream_taken_out_twice_is_remembered_once() {
        let now = Instant::now();
        let (table, slot, id) = detached_stream(now);
        {
            let mut inner = table.inner();
            for _ in 0..MAX_GONE_KEYS - 1 {
                let other = StreamKey::generate().unwrap();
                inner.remember(other, now + WINDOW, Gone::Expired);
            }
        }
        assert!(table.stop(&id.key, CREDENTIAL));
        table.remove(&slot, now, Removal::Ended);
        let inner = table.inner();
        assert_eq!(inner.gone.len(), MAX_GONE_KEYS);
        assert_eq!(inner.gone_order.len(), MAX_GONE_KEYS);
        drop(inner);
        assert!(matches!(
            table.lookup(&id, CREDENTIAL, now),
            Lookup::Stopped
        ));
    }

    /// A finished stream's last id has nothing after it: told so, and no reader is
    /// attached for it. An earlier id still resumes.
    #[test]
    fn the_last_id_of_a_finished_stream_had_all() {
        let now = Instant::now();
        let table = Arc::new(Table::new(IntGauge::new("detached", "detached").unwrap()));
        let key = StreamKey::generate().unwrap();
        let slot = Arc::new(Slot::new(
            key,
            key.fingerprint(CREDENTIAL),
            WINDOW,
            1 << 20,
            None,
        ));
        let mut stamper = Stamper::new(&key);
        slot.publish(&mut stamper, b"data: 1\n\n", None);
        slot.publish(&mut stamper, b"data: 2\n\n", None);
        table.inner().slots.insert(key, slot.clone());
        slot.finish(now);
        let readers_before = format!("{:?}", slot.state().lifetime);
        let last = EventId { key, seq: 2 };
        assert!(matches!(
            table.lookup(&last, CREDENTIAL, now),
            Lookup::HadAll
        ));
        assert_eq!(format!("{:?}", slot.state().lifetime), readers_before);
        let earlier = EventId { key, seq: 1 };
        assert!(matches!(
            table.lookup(&earlier, CREDENTIAL, now),
            Lookup::Found(_)
        ));
    }

    /// A detached stream's window runs out, and its driver ends it and takes it out of
    /// the table, as a resume comes on another thread (at the window's end, or just
    /// before it). The resume either came first and keeps the stream (attached, it no
    /// longer expires) or is refused as expired; it never finds the stream ended by
    /// the expiry, which it would read to a clean end, a cut answer taken for a whole
    /// one. Neither has an await inside, so they meet only on two threads, as on the
    /// gateway's multi-thread runtime (a test's gateway runs on the test's one
    /// thread), and only now and then: many rounds.
    #[test]
    fn a_resume_racing_the_window_keeps_the_stream_or_is_refused() {
        for round in 0..10_000 {
            let left = Instant::now();
            let (table, slot, id) = detached_stream(left);
            let end = left + WINDOW;
            let resumed = if round % 2 == 0 {
                end
            } else {
                end - Duration::from_micros(1)
            };
            let start = Arc::new(Barrier::new(2));
            let driver = std::thread::spawn({
                let (table, slot, start) = (table.clone(), slot.clone(), start.clone());
                move || {
                    start.wait();
                    table.expire(&slot, end);
                }
            });
            start.wait();
            let lookup = table.lookup(&id, CREDENTIAL, resumed);
            driver.join().unwrap();
            let finished = slot.state().lifetime.is_finished();
            match lookup {
                Lookup::Found(_) => assert!(
                    !finished,
                    "round {round}: the resume found the stream ended by its expiry"
                ),
                Lookup::Expired => assert!(finished, "round {round}: refused, yet kept"),
                other => panic!("round {round}: {other:?}"),
            }
            assert_eq!(table.detached(), 0, "round {round}");
        }
    }
}
