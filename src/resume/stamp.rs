//! Ids on events: every event of a frame gets `id: KEY-SEQ` as its last line.
//!
//! The engine's frames hold whole events with LF line ends, each ending in a blank
//! line, so an event ends at the first `\n\n`. The id goes after the event's own lines,
//! so it is the last `id` field of the event and wins over any `id:` line the upstream
//! sent (those are left in place, unread: a client's `Last-Event-ID` is always the
//! gateway's). One buffer per frame, never one per event; the spans say where each
//! numbered event sits in it, for the replay buffer to keep as slices.

use bytes::{BufMut, Bytes, BytesMut};

use super::id::StreamKey;

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
    /// `id: ` and the key's hex digits and `-`.
    prefix: [u8; 4 + 32 + 1],
    next_seq: u64,
    /// Reused per frame: where its events end, and where they sit once stamped.
    ends: Vec<usize>,
    spans: Vec<Span>,
}

impl Stamper {
    /// Numbers from 1.
    pub fn new(key: &StreamKey) -> Stamper {
        let mut prefix = [0; 37];
        prefix[..4].copy_from_slice(b"id: ");
        prefix[4..36].copy_from_slice(&key.hex());
        prefix[36] = b'-';
        Stamper {
            prefix,
            next_seq: 1,
            ends: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// The number the next event gets.
    #[cfg(test)]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The spans of the frame stamped last.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// `frame` with an id on each event, and the spans of the numbered events. A stray
    /// blank line, or a tail that is not a whole event (which the engine never sends),
    /// is passed on unnumbered.
    pub fn stamp(&mut self, frame: &[u8]) -> (Bytes, &[Span]) {
        // First where the events end, so the buffer is allocated once at its size (a
        // growing buffer would copy the frame again).
        self.ends.clear();
        let mut start = 0;
        while start < frame.len() {
            if frame[start] == b'\n' {
                start += 1;
                continue;
            }
            let Some(end) = event_end(frame, start) else {
                break;
            };
            self.ends.push(end);
            start = end;
        }
        let id_line = self.prefix.len() + 20 + 1;
        let mut out = BytesMut::with_capacity(frame.len() + self.ends.len() * id_line);
        self.spans.clear();
        let mut start = 0;
        for &end in &self.ends {
            // Stray blank lines before the event pass as they are.
            while frame[start] == b'\n' {
                out.put_u8(b'\n');
                start += 1;
            }
            let at = out.len();
            // The event's lines, then the id line, then the blank line.
            out.extend_from_slice(&frame[start..end - 1]);
            out.extend_from_slice(&self.prefix);
            put_decimal(&mut out, self.next_seq);
            out.extend_from_slice(b"\n\n");
            self.spans.push(Span {
                seq: self.next_seq,
                start: at,
                end: out.len(),
            });
            self.next_seq += 1;
            start = end;
        }
        // What follows the last event: blank lines, or a tail the engine never sends.
        out.extend_from_slice(&frame[start..]);
        (out.freeze(), &self.spans)
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

fn put_decimal(out: &mut BytesMut, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(value % 10).unwrap_or(0);
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_hex(key: &StreamKey) -> String {
        String::from_utf8(key.hex().to_vec()).unwrap()
    }

    #[test]
    fn every_event_gets_the_next_id_as_its_last_line() {
        let key = StreamKey::generate().unwrap();
        let k = key_hex(&key);
        let mut stamper = Stamper::new(&key);
        let (bytes, spans) = stamper.stamp(b"data: a\n\nevent: x\ndata: b\n\n");
        let expected = format!("data: a\nid: {k}-1\n\nevent: x\ndata: b\nid: {k}-2\n\n");
        assert_eq!(bytes, expected.as_bytes());
        assert_eq!(spans.len(), 2);
        assert_eq!(
            &bytes[spans[0].start..spans[0].end],
            format!("data: a\nid: {k}-1\n\n").as_bytes()
        );
        assert_eq!(spans[1].seq, 2);
        assert_eq!(spans[1].end, bytes.len());
        let (bytes, spans) = stamper.stamp(b"data: [DONE]\n\n");
        assert_eq!(bytes, format!("data: [DONE]\nid: {k}-3\n\n").as_bytes());
        assert_eq!(spans[0].seq, 3);
        assert_eq!(stamper.next_seq(), 4);
    }

    #[test]
    fn an_upstream_id_is_overridden_by_the_last_line() {
        let key = StreamKey::generate().unwrap();
        let k = key_hex(&key);
        let mut stamper = Stamper::new(&key);
        let (bytes, _) = stamper.stamp(b"id: up-7\ndata: a\n\n");
        assert_eq!(
            bytes,
            format!("id: up-7\ndata: a\nid: {k}-1\n\n").as_bytes()
        );
    }

    #[test]
    fn stray_blank_lines_and_tails_pass_unnumbered() {
        let key = StreamKey::generate().unwrap();
        let k = key_hex(&key);
        let mut stamper = Stamper::new(&key);
        let (bytes, spans) = stamper.stamp(b"\ndata: a\n\ndata: part");
        assert_eq!(
            bytes,
            format!("\ndata: a\nid: {k}-1\n\ndata: part").as_bytes()
        );
        assert_eq!(spans.len(), 1);
        let (bytes, spans) = stamper.stamp(b"");
        assert!(bytes.is_empty() && spans.is_empty());
    }

    #[test]
    fn decimals() {
        for value in [0, 1, 9, 10, 12_345, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }
}
