//! When a resumable stream stops being resumable: pure bookkeeping over instants the
//! caller passes in.
//!
//! A stream is *attached* while at least one client reads it, *detached* while none
//! does and it is not finished, and *finished* once its body ended. A detached stream
//! expires `window` after its last client left (its upstream is then dropped); a
//! finished one `window` after its end (its buffer is then freed). An attached
//! stream never expires.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Lifetime {
    window: Duration,
    readers: usize,
    detached_since: Option<Instant>,
    finished_at: Option<Instant>,
}

impl Lifetime {
    /// A stream that starts with one reader, its first client.
    pub fn new(window: Duration) -> Lifetime {
        Lifetime {
            window,
            readers: 1,
            detached_since: None,
            finished_at: None,
        }
    }

    /// A client starts reading; true if the stream was detached until now.
    pub fn attach(&mut self) -> bool {
        self.readers += 1;
        self.detached_since.take().is_some()
    }

    /// A client stopped reading at `now`; true if that left the stream detached.
    pub fn release(&mut self, now: Instant) -> bool {
        self.readers = self.readers.saturating_sub(1);
        if self.readers == 0 && self.finished_at.is_none() {
            self.detached_since = Some(now);
            return true;
        }
        false
    }

    /// The stream's body ended at `now`; true if it was detached until now.
    pub fn finish(&mut self, now: Instant) -> bool {
        if self.finished_at.is_some() {
            return false;
        }
        self.finished_at = Some(now);
        self.detached_since.take().is_some()
    }

    /// A client reads the stream elsewhere (on another replica, through Redis) at
    /// `now`: a detached stream's window starts again from here.
    pub fn renew(&mut self, now: Instant) {
        if self.detached_since.is_some() {
            self.detached_since = Some(now);
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some()
    }

    pub fn is_detached(&self) -> bool {
        self.detached_since.is_some()
    }

    /// When the stream stops being resumable, if nothing changes; `None` while attached.
    pub fn expires_at(&self) -> Option<Instant> {
        self.finished_at
            .or(self.detached_since)
            .map(|since| since + self.window)
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at().is_some_and(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);

    #[test]
    fn an_attached_stream_never_expires() {
        let start = Instant::now();
        let life = Lifetime::new(WINDOW);
        assert_eq!(life.expires_at(), None);
        assert!(!life.is_expired(start + Duration::from_secs(86_400)));
    }

    #[test]
    fn a_detached_stream_expires_window_after_its_client_left() {
        let start = Instant::now();
        let mut life = Lifetime::new(WINDOW);
        assert!(life.release(start));
        assert!(life.is_detached());
        assert!(!life.is_expired(start + WINDOW - Duration::from_millis(1)));
        assert!(life.is_expired(start + WINDOW));
        // A resume before that stops the clock; leaving again restarts it.
        assert!(life.attach());
        assert_eq!(life.expires_at(), None);
        let later = start + Duration::from_secs(20);
        assert!(life.release(later));
        assert_eq!(life.expires_at(), Some(later + WINDOW));
    }

    #[test]
    fn a_finished_stream_expires_window_after_its_end() {
        let start = Instant::now();
        let mut life = Lifetime::new(WINDOW);
        let end = start + Duration::from_secs(5);
        assert!(!life.finish(end), "it was attached");
        assert_eq!(life.expires_at(), Some(end + WINDOW));
        assert!(
            !life.release(end),
            "leaving a finished stream detaches nothing"
        );
        assert!(!life.is_detached());
        assert!(life.is_expired(end + WINDOW));

        let mut life = Lifetime::new(WINDOW);
        life.release(start);
        assert!(life.finish(end), "it was detached");
        assert_eq!(life.expires_at(), Some(end + WINDOW));
        assert!(!life.finish(end + WINDOW), "one end only");
    }

    #[test]
    fn two_readers_detach_when_the_last_leaves() {
        let start = Instant::now();
        let mut life = Lifetime::new(WINDOW);
        assert!(!life.attach());
        assert!(!life.release(start));
        assert!(life.release(start));
    }
}
