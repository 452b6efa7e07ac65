//! How much of a stream its Redis Stream keeps: about `max_bytes` of events, as the
//! replay buffer in memory does.
//!
//! Redis trims a stream by entry count (`MAXLEN`) or by id (`MINID`), never by bytes.
//! A count alone, sized for token events, would let a stream of large events (a
//! Responses `response.completed`, base64 images) keep hundreds of times
//! `max_bytes`. So each stream's events are counted in slices of an eighth of
//! `max_bytes`; once the slices kept pass `max_bytes`, the oldest go, and the stream
//! is trimmed to the first event of the slice that stays. What Redis keeps is then at
//! most `max_bytes` plus one slice (or one event larger than that), and a stream
//! holds at most nine slices' bookkeeping, whatever its length.

use std::collections::VecDeque;

/// Slices per `max_bytes`.
const SLICES: usize = 8;

/// The byte bookkeeping of one stream's mirror.
#[derive(Debug)]
pub(crate) struct Budget {
    max_bytes: usize,
    slice: usize,
    /// Oldest first: each slice's first event and its bytes.
    slices: VecDeque<(u64, usize)>,
    total: usize,
}

impl Budget {
    pub(crate) fn new(max_bytes: usize) -> Budget {
        Budget {
            max_bytes,
            slice: (max_bytes / SLICES).max(1),
            slices: VecDeque::new(),
            total: 0,
        }
    }

    /// Counts event `seq` of `len` bytes (events come in order); returns the first
    /// event to keep when older ones must go (`XTRIM MINID`).
    pub(crate) fn add(&mut self, seq: u64, len: usize) -> Option<u64> {
        match self.slices.back_mut() {
            Some((_, bytes)) if *bytes < self.slice => *bytes += len,
            _ => self.slices.push_back((seq, len)),
        }
        self.total += len;
        let mut keep_from = None;
        // The newest slice always stays: an event larger than `max_bytes` is kept
        // alone, as the replay buffer keeps its last event.
        while self.total > self.max_bytes && self.slices.len() > 1 {
            if let Some((_, bytes)) = self.slices.pop_front() {
                self.total -= bytes;
            }
            keep_from = self.slices.front().map(|&(seq, _)| seq);
        }
        keep_from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_stays_within_max_bytes_and_a_slice() {
        let mut budget = Budget::new(8_000);
        let mut kept_from = 1;
        for seq in 1..=1_000 {
            if let Some(from) = budget.add(seq, 300) {
                assert!(from > kept_from, "the trim point only moves on");
                kept_from = from;
            }
            let kept = (seq - kept_from + 1) * 300;
            assert!(
                kept <= 8_000 + 1_000 + 300,
                "event {seq}: {kept} bytes kept"
            );
        }
        assert!(kept_from > 900, "old events went: kept from {kept_from}");
        assert!(budget.slices.len() <= SLICES + 1);
    }

    #[test]
    fn small_streams_are_never_trimmed_and_a_huge_event_is_kept_alone() {
        let mut budget = Budget::new(8_000);
        assert!((1..=20).all(|seq| budget.add(seq, 100).is_none()));
        assert_eq!(budget.add(21, 50_000), Some(21), "all before it go");
        assert_eq!(budget.add(22, 10), Some(22), "then it goes too");
    }
}
