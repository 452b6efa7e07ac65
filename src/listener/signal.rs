//! A one-shot signal a connection's watch waits on: the drain, or an eviction. A
//! count of changes ([`Changes`]) that is fired when it is not zero, so that waiting
//! on it costs a connection's task one atomic load per wake.

use crate::changes::{Change, Changes};
use tokio::sync::futures::Notified;

/// Fired once, seen by every waiter, before or after it began to wait.
#[derive(Debug, Default)]
pub(crate) struct Signal(Changes);

impl Signal {
    pub(crate) fn fire(&self) {
        self.0.bump();
    }

    #[cfg(test)]
    pub(crate) fn is_fired(&self) -> bool {
        self.0.count() > 0
    }

    /// Resolves once the signal is fired.
    pub(crate) fn fired(&self) -> Change<&Changes, Notified<'_>> {
        self.0.after(0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_when_fired_and_a_later_one_resolves_at_once() {
        let signal = Arc::new(Signal::default());
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.fired().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert!(signal.is_fired());
        tokio::time::timeout(Duration::from_secs(5), signal.fired())
            .await
            .expect("already fired");
    }
}
