//! A cap on a listener's open connections that a flood of idle ones cannot use to
//! lock out a well-behaved client.
//!
//! The admin listener answers the kubelet's probes, which open a connection and send
//! their request at once. Refusing connections at the cap would let anyone who holds
//! that many idle connections fail the pod's liveness probe; so at the cap the
//! oldest connection with no request in flight is closed to make room, and only when
//! every open connection is busy is the new one refused.
//!
//! The one chosen closes as at the idle deadline, not at once: "no request in flight"
//! is as of the choice, and a request may have come that its connection has not read
//! yet, or an answer be still in hyper's buffer. Its place is the new connection's
//! from the choice on; it has its answers and at most a second once idle
//! (`CLOSE_GRACE`) to finish.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::activity::Activity;
use super::signal::Signal;

/// The open connections of one listener, oldest first.
#[derive(Debug)]
pub(super) struct Slots {
    limit: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    next: u64,
    /// By age: the id grows with every connection.
    slots: BTreeMap<u64, Slot>,
}

#[derive(Debug)]
struct Slot {
    activity: Arc<Activity>,
    evict: Arc<Signal>,
}

/// A connection's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub(super) struct Admitted {
    slots: Arc<Slots>,
    id: u64,
    /// Fired when the connection is to close to make room for a newer one.
    pub(super) evicted: Arc<Signal>,
}

impl Slots {
    pub(super) fn new(limit: usize) -> Slots {
        Slots {
            limit,
            open: Mutex::new(Open::default()),
        }
    }

    /// A place for a new connection, closing the oldest idle one if the cap is
    /// reached; `None` when every open connection has a request in flight.
    pub(super) fn admit(self: &Arc<Self>, activity: Arc<Activity>) -> Option<Admitted> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.slots.len() >= self.limit {
            let idle = open
                .slots
                .iter()
                .find(|(_, slot)| slot.activity.is_idle())
                .map(|(id, _)| *id)?;
            if let Some(slot) = open.slots.remove(&idle) {
                slot.evict.fire();
            }
        }
        let id = open.next;
        open.next += 1;
        let evicted = Arc::new(Signal::default());
        open.slots.insert(
            id,
            Slot {
                activity,
                evict: evicted.clone(),
            },
        );
        Some(Admitted {
            slots: self.clone(),
            id,
            evicted,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.slots.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let slots = Arc::new(Slots::new(2));
        let (busy, busy_counter) = Activity::new();
        let _request = busy_counter.request();
        let (idle, _idle_counter) = Activity::new();
        let first = slots.admit(busy.clone()).unwrap();
        let second = slots.admit(idle.clone()).unwrap();
        let third = slots.admit(idle.clone()).unwrap();
        assert!(!first.evicted.is_fired(), "a busy connection stays");
        assert!(second.evicted.is_fired(), "the oldest idle one goes");
        drop(second);
        // Every open connection busy: the new one is refused.
        let (busy_too, busy_too_counter) = Activity::new();
        let _other_request = busy_too_counter.request();
        drop(third);
        let _fourth = slots.admit(busy_too.clone()).unwrap();
        assert!(slots.admit(busy_too).is_none());
        drop(first);
        assert!(slots.admit(idle).is_some());
    }
}
