//! The replay buffer: a stream's numbered events, bounded by bytes, oldest dropped
//! first, and reads from any id.
//!
//! A reader holds a cursor, the number of the next event it wants, and every read
//! moves it past what it returned. The replayed part and the live part of a resume are
//! read from this one buffer with that one cursor, so the seam between them can
//! neither repeat nor skip an event. A cursor that points at dropped events gets a
//! [`Read::Gap`] naming them: a client is told what it cannot get, never handed a
//! silent hole.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// A stream's numbered events, as sent (ids included).
#[derive(Debug)]
pub struct ReplayLog {
    /// Consecutive numbers, oldest first.
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
    max_bytes: usize,
    /// The number the next appended event has.
    next_seq: u64,
    /// Events numbered below this were dropped for room.
    first_kept: u64,
}

/// What a read found at a cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// `count` events were copied out; the cursor is now `next`.
    Events { count: u64, next: u64 },
    /// Events `from..=to` were dropped for room before the reader got them.
    Gap { from: u64, to: u64 },
    /// Nothing after the cursor yet.
    CaughtUp,
    /// The cursor is past anything this stream ever numbered: not one of its ids.
    Ahead,
}

impl ReplayLog {
    /// An empty buffer of at most `max_bytes`; numbering starts at 1.
    pub fn new(max_bytes: usize) -> ReplayLog {
        ReplayLog {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes,
            next_seq: 1,
            first_kept: 1,
        }
    }

    /// The number the next appended event will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest number still held (the next one when empty).
    pub fn first_kept(&self) -> u64 {
        self.first_kept
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the event numbered `seq` (the next number), dropping the oldest events
    /// while the buffer is over its bound; an event larger than the whole bound is
    /// dropped at once.
    pub fn append(&mut self, seq: u64, event: Bytes) {
        debug_assert_eq!(seq, self.next_seq, "events are appended in order");
        self.next_seq = seq + 1;
        self.bytes += event.len();
        self.events.push_back((seq, event));
        while self.bytes > self.max_bytes {
            let Some((dropped, event)) = self.events.pop_front() else {
                break;
            };
            self.bytes -= event.len();
            self.first_kept = dropped + 1;
        }
    }

    /// Copies the events from `*cursor` on into `out`, up to about `limit` bytes
    /// (at least one event), and moves the cursor past them.
    pub fn read(&self, cursor: &mut u64, limit: usize, out: &mut BytesMut) -> Read {
        if *cursor < self.first_kept {
            return Read::Gap {
                from: *cursor,
                to: self.first_kept - 1,
            };
        }
        if *cursor > self.next_seq {
            return Read::Ahead;
        }
        let Some((front, _)) = self.events.front() else {
            return Read::CaughtUp;
        };
        let skip = usize::try_from(*cursor - front).unwrap_or(usize::MAX);
        let mut count = 0;
        for (seq, event) in self.events.iter().skip(skip) {
            if count > 0 && out.len() + event.len() > limit {
                break;
            }
            out.extend_from_slice(event);
            *cursor = seq + 1;
            count += 1;
        }
        if count == 0 {
            Read::CaughtUp
        } else {
            Read::Events {
                count,
                next: *cursor,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Bytes {
        Bytes::from(format!("data: {seq}\nid: k-{seq}\n\n"))
    }

    fn log_of(n: u64, max_bytes: usize) -> ReplayLog {
        let mut log = ReplayLog::new(max_bytes);
        for seq in 1..=n {
            log.append(seq, event(seq));
        }
        log
    }

    fn read_all(log: &ReplayLog, cursor: &mut u64) -> (Read, String) {
        let mut out = BytesMut::new();
        let read = log.read(cursor, usize::MAX, &mut out);
        (read, String::from_utf8(out.to_vec()).unwrap())
    }

    #[test]
    fn replay_from_any_id_gives_exactly_the_rest() {
        let log = log_of(20, 1 << 20);
        for last_seen in 0..=20u64 {
            let mut cursor = last_seen + 1;
            let (read, text) = read_all(&log, &mut cursor);
            let expected: String = (last_seen + 1..=20)
                .map(|seq| String::from_utf8(event(seq).to_vec()).unwrap())
                .collect();
            assert_eq!(text, expected, "after {last_seen}");
            assert_eq!(cursor, 21);
            if last_seen == 20 {
                assert_eq!(read, Read::CaughtUp);
            } else {
                assert_eq!(
                    read,
                    Read::Events {
                        count: 20 - last_seen,
                        next: 21
                    }
                );
            }
        }
    }

    #[test]
    fn the_seam_between_replay_and_live_repeats_and_skips_nothing() {
        let mut log = log_of(5, 1 << 20);
        let mut cursor = 3;
        let (_, replayed) = read_all(&log, &mut cursor);
        // Live events arrive after the replay, and one at the very moment of the read.
        log.append(6, event(6));
        let (_, live) = read_all(&log, &mut cursor);
        let (read, nothing) = read_all(&log, &mut cursor);
        assert_eq!(read, Read::CaughtUp);
        assert!(nothing.is_empty());
        log.append(7, event(7));
        log.append(8, event(8));
        let (_, more) = read_all(&log, &mut cursor);
        let all = format!("{replayed}{live}{more}");
        let expected: String = (3..=8)
            .map(|seq| String::from_utf8(event(seq).to_vec()).unwrap())
            .collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_a_read_before_them_is_a_gap() {
        let size = event(1).len(); // every event of 1..=9 is the same size
        let log = log_of(9, 3 * size);
        assert_eq!(log.bytes(), 3 * size, "never above the bound");
        let mut cursor = 2;
        assert_eq!(read_all(&log, &mut cursor).0, Read::Gap { from: 2, to: 6 });
        assert_eq!(cursor, 2, "a gap does not move the cursor");
        let mut cursor = 7;
        let (read, text) = read_all(&log, &mut cursor);
        assert_eq!(read, Read::Events { count: 3, next: 10 });
        assert!(text.starts_with("data: 7\n"));
    }

    #[test]
    fn an_event_larger_than_the_bound_is_not_kept() {
        let mut log = ReplayLog::new(8);
        log.append(1, Bytes::from_static(b"data: far too long\n\n"));
        assert_eq!(log.bytes(), 0);
        let mut cursor = 1;
        assert_eq!(read_all(&log, &mut cursor).0, Read::Gap { from: 1, to: 1 });
        let mut cursor = 2;
        assert_eq!(read_all(&log, &mut cursor).0, Read::CaughtUp);
    }

    #[test]
    fn reads_are_cut_at_the_limit_but_never_empty() {
        let log = log_of(10, 1 << 20);
        let size = event(1).len();
        let mut cursor = 1;
        let mut out = BytesMut::new();
        assert_eq!(
            log.read(&mut cursor, 1, &mut out),
            Read::Events { count: 1, next: 2 }
        );
        out.clear();
        assert_eq!(
            log.read(&mut cursor, 3 * size, &mut out),
            Read::Events { count: 3, next: 5 }
        );
    }

    #[test]
    fn a_cursor_past_the_stream_is_not_its_id() {
        let log = log_of(3, 1 << 20);
        let mut cursor = 4;
        assert_eq!(read_all(&log, &mut cursor).0, Read::CaughtUp);
        let mut cursor = 9;
        assert_eq!(read_all(&log, &mut cursor).0, Read::Ahead);
    }
}
