//! An h2 stream whose client grants it no flow-control window.
//!
//! hyper sends an h2 response body on a task of its own, which polls the body only
//! when the stream has window to send in. A client that never opens the window stops
//! the polls, and with them everything a stream does in its polls: its clocks
//! (`max_duration`, `idle_timeout`, heartbeats), its upstream reads, the end that
//! frees its place under `max_streams`. TCP stays healthy, so the send timeout of an
//! HTTP/1 connection (unacknowledged bytes) never comes.
//!
//! The watch here gives an h2 response the same bound: a body that has something for
//! hyper (it was just handed over, it returned a frame, or it was woken) and is not
//! polled within the send timeout is stalled by its client, and its connection is
//! closed, as NGINX's `send_timeout` closes it. A body that said `Pending` and waits
//! for its upstream is not woken, so a quiet model is no stall.
//!
//! State is kept in one atomic per response: the instant (on a process-wide clock)
//! since which the body waits to be polled, 0 when it does not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::activity::ClientConnection;

/// The process's clock origin: instants are kept as nanoseconds since it (never 0).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_nanos() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One h2 response body's wait to be polled, shared with its watch task.
#[derive(Debug)]
pub(super) struct Stall {
    /// Since when the body waits to be polled; 0: it does not.
    waiting_since: AtomicU64,
    /// hyper's waker of the body's task, woken through [`Stall::waker`].
    waker: std::sync::Mutex<Option<Waker>>,
    /// The body is gone: the watch ends.
    gone: Notify,
}

impl Stall {
    /// A watch for a response body about to be handed to hyper, which is to poll it
    /// at once; closes `connection` when a wait lasts `limit`.
    pub(super) fn watch(connection: ClientConnection, limit: Duration) -> Arc<Stall> {
        let stall = Arc::new(Stall {
            waiting_since: AtomicU64::new(now_nanos()),
            waker: std::sync::Mutex::new(None),
            gone: Notify::new(),
        });
        let watched = stall.clone();
        tokio::spawn(async move {
            let limit_nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
            loop {
                let since = watched.waiting_since.load(Ordering::Acquire);
                let check = if since == 0 {
                    limit
                } else {
                    let waited = now_nanos().saturating_sub(since);
                    if waited >= limit_nanos {
                        tracing::info!(
                            ?limit,
                            "closing an h2 connection: a response waited that long for the client to open its window"
                        );
                        connection.close();
                        return;
                    }
                    Duration::from_nanos(limit_nanos - waited)
                };
                tokio::select! {
                    () = watched.gone.notified() => return,
                    () = tokio::time::sleep(check) => {}
                }
            }
        });
        stall
    }

    /// The body is being polled: it waits no longer. Returns the waker to poll it
    /// with, which marks the wait's start when the body is woken.
    pub(super) fn polled(self: &Arc<Self>, cx: &Context<'_>) -> Waker {
        self.waiting_since.store(0, Ordering::Release);
        let mut waker = self
            .waker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Waker::from(self.clone())
    }

    /// The body has something for hyper (a frame just returned, or a wake): from now
    /// on it waits to be polled, unless it waited already.
    pub(super) fn wait(&self) {
        let _ = self.waiting_since.compare_exchange(
            0,
            now_nanos(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The body is gone.
    pub(super) fn end(&self) {
        self.gone.notify_one();
    }
}

impl Wake for Stall {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wait();
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}
