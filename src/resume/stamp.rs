//! Ids on events: every event of a frame gets `id: KEY-SEQ` as its last line.
//!
//! Comments are the exception. Once a stream has carried an id, a client that keeps
//! the last id (the openai Python SDK's decoder, unlike the WHATWG rules) dispatches
//! an event at every blank line, data or not, and the SDK then fails to parse its
//! empty data as JSON. So on a stream with ids, a block of comments alone (an
//! upstream's `: ping`, the heartbeat) goes out as its lines without the blank line:
//! they join the next event's lines, where every decoder skips them. Such a block
//! gets no id and is not kept for replay: it carries nothing to resume. Nor is it
//! sent past `COMMENTS_BETWEEN_EVENTS` bytes of them since the last event: an
//! upstream that only pings would otherwise grow one event without end, which a
//! client that reads up to a blank line holds whole.
//!
//! The engine's frames hold whole events with LF line ends, each ending in a blank
//! line, so an event ends at the first `\n\n`. The id goes after the event's own lines,
//! so it is the last `id` field of the event and wins over any `id:` line the upstream
//! sent (those are left in place, unread: a client's `Last-Event-ID` is always the
//! gateway's). One buffer per frame, never one per event; the spans say where each
//! numbered event sits in it, for the replay buffer to keep as slices.

use bytes::{BufMut, Bytes, BytesMut};

use super::id::{StreamKey, KEY_TEXT_LEN};

/// The heartbeat of a stream with ids: a comment line with no blank line after it
/// (see above).
pub(crate) const HEARTBEAT_LINE: &[u8] = b": keep-alive\n";

/// The bytes of comment lines sent between two events at most; further comment
/// blocks are dropped until the next event. The heartbeat says the stream is alive.
pub(crate) const COMMENTS_BETWEEN_EVENTS: usize = 4096;

/// Where one numbered event sits in a stamped frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub seq: u64,
    pub start: usize,
    pub end: usize,
}

/// Numbers a stream's events, frame after frame.
#[derive(Debug)]
pub struct Stamper {
    /// The next event's id line and the blank line that ends it, ready to copy:
    /// `id: KEY-SEQ\n\n`. The number's digits are counted up in place, so stamping an
    /// event is one copy of its lines and one of this, with no formatting.
    line: IdLine,
    next_seq: u64,
    /// Reused per frame: where its events end, and where they sit once stamped.
    ends: Vec<usize>,
    spans: Vec<Span>,
    /// Bytes of comment lines sent since the last numbered event.
    comments: usize,
}

/// `id: ` (4), the key's text, `-`: where the number's digits start.
const DIGITS_AT: usize = 4 + KEY_TEXT_LEN + 1;
/// The longest number a `u64` has, in decimal.
const MAX_DIGITS: usize = 20;

/// An id line whose number is counted up as decimal digits.
#[derive(Debug)]
struct IdLine {
    bytes: [u8; DIGITS_AT + MAX_DIGITS + 2],
    /// Digits in the number now.
    digits: usize,
}

impl IdLine {
    /// The line of event 1.
    fn new(key: &StreamKey) -> IdLine {
        let mut bytes = [0; DIGITS_AT + MAX_DIGITS + 2];
        bytes[..4].copy_from_slice(b"id: ");
        bytes[4..DIGITS_AT - 1].copy_from_slice(&key.text());
        bytes[DIGITS_AT - 1] = b'-';
        bytes[DIGITS_AT..DIGITS_AT + 3].copy_from_slice(b"1\n\n");
        IdLine { bytes, digits: 1 }
    }

    /// The line, its blank line included.
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..DIGITS_AT + self.digits + 2]
    }

    /// The next number's line: the last digit goes up, nines roll over, and a number
    /// of all nines grows a digit (numbers stop growing at `u64::MAX`'s 20 digits,
    /// which no stream reaches).
    fn advance(&mut self) {
        let digits = &mut self.bytes[DIGITS_AT..DIGITS_AT + self.digits];
        for digit in digits.iter_mut().rev() {
            if *digit == b'9' {
                *digit = b'0';
            } else {
                *digit += 1;
                return;
            }
        }
        if self.digits == MAX_DIGITS {
            return;
        }
        // All nines: `1` and as many zeros, one digit longer.
        self.bytes[DIGITS_AT] = b'1';
        self.digits += 1;
        let end = DIGITS_AT + self.digits;
        self.bytes[DIGITS_AT + 1..end].fill(b'0');
        self.bytes[end..end + 2].copy_from_slice(b"\n\n");
    }
}

impl Stamper {
    /// Numbers from 1.
    pub fn new(key: &StreamKey) -> Stamper {
        Stamper {
            line: IdLine::new(key),
            next_seq: 1,
            ends: Vec::new(),
            spans: Vec::new(),
            comments: 0,
        }
    }

    /// The number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The spans of the frame stamped last.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// `frame` with an id on each event, and the spans of the numbered events. A stray
    /// blank line, or a tail that is not a whole event (which the engine never sends),
    /// is passed on unnumbered. `ends`: where the frame's events end, when the engine
    /// knows (its untouched events), which spares a search through the frame.
    pub fn stamp(&mut self, frame: &[u8], ends: Option<&[u32]>) -> (Bytes, &[Span]) {
        // First where the events end, so the buffer is allocated once at its size (a
        // growing buffer would copy the frame again).
        self.ends.clear();
        match ends {
            Some(ends) if vouched(frame, ends) => {
                self.ends.extend(ends.iter().map(|&end| end as usize));
            }
            _ => find_ends(frame, &mut self.ends),
        }
        // Sized for the longest line any of these numbers can have.
        let longest_line = DIGITS_AT + MAX_DIGITS + 1;
        let mut out = BytesMut::with_capacity(frame.len() + self.ends.len() * longest_line);
        self.spans.clear();
        let mut start = 0;
        for &end in &self.ends {
            // Stray blank lines before the event pass as they are.
            while frame[start] == b'\n' {
                out.put_u8(b'\n');
                start += 1;
            }
            let at = out.len();
            let lines = &frame[start..end - 1];
            if is_comments_only(lines) {
                self.comments += lines.len();
                if self.comments <= COMMENTS_BETWEEN_EVENTS {
                    out.extend_from_slice(lines);
                }
                start = end;
                continue;
            }
            self.comments = 0;
            // The event's lines (its blank line left off), then the id line and the
            // blank line.
            out.extend_from_slice(lines);
            out.extend_from_slice(self.line.as_bytes());
            self.spans.push(Span {
                seq: self.next_seq,
                start: at,
                end: out.len(),
            });
            self.next_seq += 1;
            self.line.advance();
            start = end;
        }
        // What follows the last event: blank lines, or a tail the engine never sends.
        out.extend_from_slice(&frame[start..]);
        (out.freeze(), &self.spans)
    }
}

/// Whether an event's lines (each ending in LF) are all comments. An event starts
/// with a field far more often than with a comment: one byte tells most apart.
fn is_comments_only(lines: &[u8]) -> bool {
    lines.first() == Some(&b':')
        && lines
            .split_inclusive(|&b| b == b'\n')
            .all(|line| line.first() == Some(&b':'))
}

/// Whether `ends` can stand for a search: in order, inside the frame, each just past a
/// blank line, the last at the frame's end. Two byte compares per event, against the
/// search's pass over every byte.
fn vouched(frame: &[u8], ends: &[u32]) -> bool {
    let mut previous = 0;
    ends.last()
        .is_some_and(|&last| last as usize == frame.len())
        && ends.iter().all(|&end| {
            let end = end as usize;
            // An event starts with a field, never a line end (the framer skips those),
            // and is more than its blank line.
            let fits = end > previous + 2
                && frame.get(end - 2..end) == Some(b"\n\n")
                && frame[previous] != b'\n';
            previous = end;
            fits
        })
}

/// Where the events of `frame` end, found by searching it.
fn find_ends(frame: &[u8], ends: &mut Vec<usize>) {
    let mut start = 0;
    while start < frame.len() {
        if frame[start] == b'\n' {
            start += 1;
            continue;
        }
        let Some(end) = event_end(frame, start) else {
            break;
        };
        ends.push(end);
        start = end;
    }
}

/// The end (exclusive) of the event starting at `start`: just past its `\n\n`.
fn event_end(frame: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        let newline = at + memchr::memchr(b'\n', &frame[at..])?;
        if frame.get(newline + 1) == Some(&b'\n') {
            return Some(newline + 2);
        }
        at = newline + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_text(key: &StreamKey) -> String {
        String::from_utf8(key.text().to_vec()).unwrap()
    }

    #[test]
    fn every_event_gets_the_next_id_as_its_last_line() {
        let key = StreamKey::generate().unwrap();
        let k = key_text(&key);
        let mut stamper = Stamper::new(&key);
        let (bytes, spans) = stamper.stamp(b"data: a\n\nevent: x\ndata: b\n\n", None);
        let expected = format!("data: a\nid: {k}-1\n\nevent: x\ndata: b\nid: {k}-2\n\n");
        assert_eq!(bytes, expected.as_bytes());
        assert_eq!(spans.len(), 2);
        assert_eq!(
            &bytes[spans[0].start..spans[0].end],
            format!("data: a\nid: {k}-1\n\n").as_bytes()
        );
        assert_eq!(spans[1].seq, 2);
        assert_eq!(spans[1].end, bytes.len());
        let (bytes, spans) = stamper.stamp(b"data: [DONE]\n\n", None);
        assert_eq!(bytes, format!("data: [DONE]\nid: {k}-3\n\n").as_bytes());
        assert_eq!(spans[0].seq, 3);
        assert_eq!(stamper.next_seq(), 4);
    }

    /// An upstream that only pings would grow one event without end: comments past
    /// the bound are dropped until the next event, which starts a new allowance.
    #[test]
    fn comments_between_two_events_are_bounded() {
        let key = StreamKey::generate().unwrap();
        let k = key_text(&key);
        let mut stamper = Stamper::new(&key);
        let mut sent = Vec::new();
        for _ in 0..2000 {
            sent.extend_from_slice(&stamper.stamp(b": ping\n\n", None).0);
        }
        assert_eq!(sent.len(), COMMENTS_BETWEEN_EVENTS / 7 * 7);
        assert!(sent.chunks(7).all(|line| line == b": ping\n"));
        let (bytes, _) = stamper.stamp(b": ping\n\ndata: a\n\n: ping\n\n", None);
        assert_eq!(bytes, format!("data: a\nid: {k}-1\n\n: ping\n").as_bytes());
    }

    #[test]
    fn an_upstream_id_is_overridden_by_the_last_line() {
        let key = StreamKey::generate().unwrap();
        let k = key_text(&key);
        let mut stamper = Stamper::new(&key);
        let (bytes, _) = stamper.stamp(b"id: up-7\ndata: a\n\n", None);
        assert_eq!(
            bytes,
            format!("id: up-7\ndata: a\nid: {k}-1\n\n").as_bytes()
        );
    }

    #[test]
    fn comment_blocks_lose_their_blank_line_and_get_no_id() {
        let key = StreamKey::generate().unwrap();
        let k = key_text(&key);
        let mut stamper = Stamper::new(&key);
        let frame = b": ping\n\ndata: a\n\n: one\n: two\n\n: mixed\ndata: b\n\n";
        let (bytes, spans) = stamper.stamp(frame, None);
        let expected =
            format!(": ping\ndata: a\nid: {k}-1\n\n: one\n: two\n: mixed\ndata: b\nid: {k}-2\n\n");
        assert_eq!(bytes, expected.as_bytes());
        let kept: Vec<&[u8]> = spans.iter().map(|s| &bytes[s.start..s.end]).collect();
        assert_eq!(
            kept,
            [
                format!("data: a\nid: {k}-1\n\n").as_bytes(),
                format!(": mixed\ndata: b\nid: {k}-2\n\n").as_bytes()
            ]
        );
        let (bytes, spans) = stamper.stamp(b": alone\n\n", Some(&[10]));
        assert_eq!(bytes, &b": alone\n"[..]);
        assert!(spans.is_empty());
        assert_eq!(stamper.next_seq(), 3);
    }

    #[test]
    fn stray_blank_lines_and_tails_pass_unnumbered() {
        let key = StreamKey::generate().unwrap();
        let k = key_text(&key);
        let mut stamper = Stamper::new(&key);
        let (bytes, spans) = stamper.stamp(b"\ndata: a\n\ndata: part", None);
        assert_eq!(
            bytes,
            format!("\ndata: a\nid: {k}-1\n\ndata: part").as_bytes()
        );
        assert_eq!(spans.len(), 1);
        let (bytes, spans) = stamper.stamp(b"", None);
        assert!(bytes.is_empty() && spans.is_empty());
    }

    #[test]
    fn the_engines_ends_give_the_same_frame_and_wrong_ones_are_not_trusted() {
        let key = StreamKey::generate().unwrap();
        let frame = b"data: a\n\nevent: x\ndata: b\n\n";
        let mut searched = Stamper::new(&key);
        let (expected, spans) = searched.stamp(frame, None);
        let expected_spans = spans.to_vec();
        let wrong: [&[u32]; 7] = [
            &[9],
            &[9, 26],
            &[10, 27],
            &[],
            &[30, 27],
            &[9, 11, 27],
            &[2, 27],
        ];
        for ends in [&[9_u32, 27][..], &[27]].into_iter().chain(wrong) {
            let mut given = Stamper::new(&key);
            let (bytes, spans) = given.stamp(frame, Some(ends));
            if ends == [9, 27] {
                assert_eq!((&bytes, spans), (&expected, &expected_spans[..]));
            } else if ends == [27] {
                // Vouched for: one event as the engine saw it (the engine never joins
                // two, and a search would have found the blank line).
                assert_eq!(spans.len(), 1, "{ends:?}");
            } else {
                assert_eq!(
                    (&bytes, spans),
                    (&expected, &expected_spans[..]),
                    "{ends:?}"
                );
            }
        }
    }

    #[test]
    fn ends_at_a_stray_blank_line_are_not_trusted() {
        let key = StreamKey::generate().unwrap();
        let frame = b"data: a\n\n\n\n";
        let (expected, _) = Stamper::new(&key).stamp(frame, None);
        let mut given = Stamper::new(&key);
        let (bytes, spans) = given.stamp(frame, Some(&[9, 11]));
        assert_eq!(bytes, expected);
        assert_eq!(spans.len(), 1);
    }

    #[test]
    fn the_number_counts_up_through_every_carry() {
        let key = StreamKey::generate().unwrap();
        let k = key_text(&key);
        let mut line = IdLine::new(&key);
        for seq in 1..=100_123_u64 {
            assert_eq!(
                line.as_bytes(),
                format!("id: {k}-{seq}\n\n").as_bytes(),
                "event {seq}"
            );
            line.advance();
        }
    }
}
