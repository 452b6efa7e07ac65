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

use super::stamp::Span;

/// A stream's numbered events, as sent (ids included). The frames are kept whole and
/// the events are offsets into them, so keeping and dropping an event is index
/// arithmetic: no reference count moves per event, only per frame.
#[derive(Debug)]
pub struct ReplayLog {
    /// Consecutive numbers from `first_kept`, oldest first.
    events: VecDeque<EventAt>,
    /// The frames the events sit in; `frames[0]` is frame number `first_frame`.
    frames: VecDeque<Bytes>,
    first_frame: u64,
    bytes: usize,
    max_bytes: usize,
    /// The number the next appended event has.
    next_seq: u64,
    /// Events numbered below this were dropped for room.
    first_kept: u64,
}

/// Where an event sits: its frame's number and its bounds in that frame.
#[derive(Debug, Clone, Copy)]
struct EventAt {
    frame: u64,
    start: u32,
    end: u32,
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
            frames: VecDeque::new(),
            first_frame: 0,
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

    /// Appends one event numbered `seq` (the next number).
    pub fn append(&mut self, seq: u64, event: Bytes) {
        let end = event.len();
        self.append_frame(event, &[Span { seq, start: 0, end }]);
    }

    /// Appends a frame's numbered events (the next numbers, in order), dropping the
    /// oldest events while the buffer is over its bound. The frame's own events stay,
    /// even when they alone are over it: a resumed client reading live is about to
    /// copy them, and dropping them would tell it of a gap it never fell into. They
    /// go with the next frame.
    pub fn append_frame(&mut self, frame: Bytes, spans: &[Span]) {
        if spans.is_empty() {
            return;
        }
        let number = self.first_frame + self.frames.len() as u64;
        for span in spans {
            debug_assert_eq!(span.seq, self.next_seq, "events are appended in order");
            self.next_seq = span.seq + 1;
            self.bytes += span.end - span.start;
            self.events.push_back(EventAt {
                frame: number,
                start: u32::try_from(span.start).unwrap_or(u32::MAX),
                end: u32::try_from(span.end).unwrap_or(u32::MAX),
            });
        }
        self.frames.push_back(frame);
        while self.bytes > self.max_bytes && self.events.len() > spans.len() {
            let Some(dropped) = self.events.pop_front() else {
                break;
            };
            self.bytes -= (dropped.end - dropped.start) as usize;
            self.first_kept += 1;
        }
        // Frames with no event left go (the reference count moves once per frame).
        let oldest = self.events.front().map_or(number + 1, |event| event.frame);
        while self.first_frame < oldest && self.frames.pop_front().is_some() {
            self.first_frame += 1;
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
        let skip = usize::try_from(*cursor - self.first_kept).unwrap_or(usize::MAX);
        let mut count = 0;
        for event in self.events.iter().skip(skip) {
            let len = (event.end - event.start) as usize;
            if count > 0 && out.len() + len > limit {
                break;
            }
            let index = usize::try_from(event.frame - self.first_frame).unwrap_or(usize::MAX);
            if let Some(frame) = self.frames.get(index) {
                out.extend_from_slice(&frame[event.start as usize..event.end as usize]);
            }
            *cursor += 1;
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
    fn an_event_larger_than_the_bound_is_kept_until_the_next() {
        let mut log = ReplayLog::new(8);
        let long = Bytes::from_static(b"data: far too long\n\n");
        log.append(1, long.clone());
        assert_eq!(log.bytes(), long.len());
        let mut cursor = 1;
        assert_eq!(
            read_all(&log, &mut cursor),
            (
                Read::Events { count: 1, next: 2 },
                "data: far too long\n\n".to_owned()
            )
        );
        log.append(2, Bytes::from_static(b"data: x\n\n"));
        assert_eq!(log.first_kept(), 2);
        let mut cursor = 1;
        assert_eq!(read_all(&log, &mut cursor).0, Read::Gap { from: 1, to: 1 });
    }

    #[test]
    fn a_frame_over_the_bound_keeps_all_its_events() {
        let mut log = ReplayLog::new(16);
        log.append(1, event(1));
        let frame = Bytes::from([event(2), event(3), event(4)].concat());
        let size = event(2).len();
        let spans: Vec<Span> = (0..3)
            .map(|i| Span {
                seq: 2 + i as u64,
                start: i * size,
                end: (i + 1) * size,
            })
            .collect();
        log.append_frame(frame, &spans);
        assert_eq!(
            log.first_kept(),
            2,
            "the older event went, the frame's stayed"
        );
        let mut cursor = 2;
        assert_eq!(
            read_all(&log, &mut cursor).0,
            Read::Events { count: 3, next: 5 }
        );
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

    fn frame_of(seqs: std::ops::RangeInclusive<u64>) -> (Bytes, Vec<Span>) {
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for seq in seqs {
            let start = bytes.len();
            bytes.extend_from_slice(&event(seq));
            spans.push(Span {
                seq,
                start,
                end: bytes.len(),
            });
        }
        (Bytes::from(bytes), spans)
    }

    #[test]
    fn a_frame_is_kept_while_one_of_its_events_is_and_freed_after() {
        let size = event(1).len();
        let mut log = ReplayLog::new(3 * size);
        for (frame, spans) in [frame_of(1..=2), frame_of(3..=4)] {
            log.append_frame(frame, &spans);
        }
        assert_eq!((log.first_kept(), log.frames.len()), (2, 2));
        let mut cursor = 2;
        let (read, text) = read_all(&log, &mut cursor);
        assert_eq!(read, Read::Events { count: 3, next: 5 });
        assert!(text.starts_with("data: 2\n") && text.ends_with("id: k-4\n\n"));
        let (frame, spans) = frame_of(5..=5);
        log.append_frame(frame, &spans);
        assert_eq!(
            (log.first_kept(), log.frames.len()),
            (3, 2),
            "the first frame is freed"
        );
        let mut cursor = 3;
        let (_, text) = read_all(&log, &mut cursor);
        assert!(text.starts_with("data: 3\n") && text.ends_with("id: k-5\n\n"));
    }
}
