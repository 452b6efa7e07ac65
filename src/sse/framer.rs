//! Framer: cuts an upstream byte stream, pushed in chunks of any size, into complete events.
//!
//! It lives apart from the event view because it is the only stateful part of SSE parsing: it
//! knows where the stream is between pushes (inside a line, after a CR, before an event), so
//! everything downstream can work on whole events.
//!
//! Zero copy: an event that lies wholly inside one pushed chunk is returned as a slice of that
//! chunk. Only an event that straddles pushes is copied, into a buffer bounded by
//! `max_event_size`. Scanning is one `memchr2` per line, with no per-byte work or allocation.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr2;

use crate::sse::RawEvent;

/// The UTF-8 byte order mark that may open a stream.
pub(crate) const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Why the framer stopped; the stream must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// An event grew beyond `max_event_size` bytes (counting its line ends and blank line).
    Oversize {
        /// The configured `max_event_size`.
        limit: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversize { limit } => {
                write!(f, "event larger than max_event_size of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Where the scanner is inside the current event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// No byte of the next event seen yet. Line ends here are skipped: a blank line with nothing
    /// before it dispatches nothing, and an LF here may be the second half of the CRLF whose CR
    /// ended the previous event.
    EventStart,
    /// Inside a non-empty line.
    InLine,
    /// Right after a line end. `after_cr`: that line end was a CR, so an LF next is its second
    /// half, not a blank line.
    LineStart { after_cr: bool },
}

/// Progress of removing the stream's leading byte order mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bom {
    /// `matched` bytes of the BOM seen so far (the BOM may be split across pushes).
    Pending { matched: usize },
    /// Decided: removed, or the stream did not start with one.
    Done,
}

/// Incremental SSE framer; one per stream.
///
/// Feed it with [`push`](Framer::push), then call [`next_event`](Framer::next_event) until it
/// returns `Ok(None)`; at a clean upstream EOF call [`finish`](Framer::finish). Memory held for
/// an incomplete event never exceeds `max_event_size`; chunks pushed but not yet drained are held
/// as they are (zero copy), so drain after every push.
///
/// ```
/// use bytes::Bytes;
/// use sse_gateway::sse::Framer;
///
/// let mut framer = Framer::new(1 << 20);
/// framer.push(Bytes::from_static(b"data: a\r"));
/// assert_eq!(framer.next_event(), Ok(None));
/// framer.push(Bytes::from_static(b"\n\r\ndata: b"));
/// let event = framer.next_event().unwrap().unwrap();
/// assert_eq!(event.view().data().as_deref(), Some(&b"a"[..]));
/// assert_eq!(framer.next_event(), Ok(None));
/// // Clean EOF: the unterminated tail is completed and delivered.
/// let tail = framer.finish().unwrap();
/// assert_eq!(tail.as_bytes(), &b"data: b\n\n"[..]);
/// ```
#[derive(Debug)]
pub struct Framer {
    max_event_size: usize,
    /// Pushed chunks not yet scanned; the front one is where the scan resumes.
    input: VecDeque<Bytes>,
    /// Bytes of the current event taken from chunks that ended before the event did.
    carry: BytesMut,
    scan: Scan,
    /// The current event has a CR line end so far (the framer sees every line end anyway,
    /// so the pipeline need not search the event for one).
    saw_cr: bool,
    bom: Bom,
    /// Sticky: once an event was oversize the stream is unusable.
    failed: Option<FrameError>,
    /// An event found by `finish` before the caller drained `next_event`.
    ready: Option<RawEvent>,
}

impl Framer {
    /// A framer that fails with [`FrameError::Oversize`] for any event longer than
    /// `max_event_size` bytes, blank line included.
    pub fn new(max_event_size: usize) -> Framer {
        Framer {
            max_event_size,
            input: VecDeque::new(),
            carry: BytesMut::new(),
            scan: Scan::EventStart,
            saw_cr: false,
            bom: Bom::Pending { matched: 0 },
            failed: None,
            ready: None,
        }
    }

    /// Hands the framer the next chunk received from the upstream (any size, any split).
    /// After an oversize error the chunk is discarded.
    pub fn push(&mut self, mut chunk: Bytes) {
        if self.failed.is_some() {
            return;
        }
        // "One leading U+FEFF BYTE ORDER MARK character must be ignored if any are present."
        // Only the very first bytes of the stream can be one.
        if let Bom::Pending { matched } = self.bom {
            let wanted = UTF8_BOM.get(matched..).unwrap_or_default();
            let n = wanted.len().min(chunk.len());
            if chunk.get(..n) == wanted.get(..n) {
                if n < wanted.len() {
                    // The chunk ended inside a possible BOM (or was empty): decide later.
                    self.bom = Bom::Pending {
                        matched: matched + n,
                    };
                    return;
                }
                chunk.advance(n);
                self.bom = Bom::Done;
            } else {
                self.bom = Bom::Done;
                self.release_partial_bom(matched);
            }
        }
        if !chunk.is_empty() {
            self.input.push_back(chunk);
        }
    }

    /// Whether [`Framer::next_event`] has nothing to give until the next push: no
    /// unread input, no event set aside, no error to report. A partial event waits in
    /// the carry, which only more input can complete.
    pub fn is_drained(&self) -> bool {
        self.input.is_empty() && self.ready.is_none() && self.failed.is_none()
    }

    /// The next complete event; `Ok(None)` when more bytes are needed.
    ///
    /// Returns `Err(FrameError::Oversize)` once the current event exceeds `max_event_size`, and
    /// from then on for every call: the stream must end.
    pub fn next_event(&mut self) -> Result<Option<RawEvent>, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if let Some(event) = self.ready.take() {
            return Ok(Some(event));
        }
        let limit = self.max_event_size;
        while let Some(front) = self.input.front_mut() {
            if self.scan == Scan::EventStart {
                let skip = front
                    .iter()
                    .position(|&b| b != b'\n' && b != b'\r')
                    .unwrap_or(front.len());
                front.advance(skip);
                if front.is_empty() {
                    self.input.pop_front();
                    continue;
                }
                self.scan = Scan::InLine;
            }
            if let Some(last) = find_event_end(front, &mut self.scan, &mut self.saw_cr) {
                let end = last + 1;
                if self.carry.len() + end > limit {
                    return Err(self.fail());
                }
                let bytes = if self.carry.is_empty() {
                    front.split_to(end)
                } else {
                    self.carry
                        .extend_from_slice(front.get(..end).unwrap_or_default());
                    front.advance(end);
                    self.carry.split().freeze()
                };
                if front.is_empty() {
                    self.input.pop_front();
                }
                self.scan = Scan::EventStart;
                let lf_only = !std::mem::take(&mut self.saw_cr);
                return Ok(Some(RawEvent::framed(bytes, lf_only)));
            }
            // Checked before copying, so the carry never holds more than the limit.
            if self.carry.len() + front.len() > limit {
                return Err(self.fail());
            }
            self.carry.extend_from_slice(front);
            self.input.pop_front();
        }
        Ok(None)
    }

    /// The upstream ended cleanly: returns the tail as one last event, completed with a blank line.
    ///
    /// The tail is everything after the last complete event; blank lines alone are no tail.
    /// "If the file ends in the middle of an event, before the final empty line, the incomplete
    /// event is not dispatched": clients drop it, so the gateway completes it instead (a
    /// `data: [DONE]` tail still ends the stream). Call it after `next_event` returned `Ok(None)`;
    /// if complete events are still queued it returns `None` and leaves them to `next_event`, so
    /// drain and call it again. Returns `None` after an oversize error. After an upstream error
    /// do not call it: the partial tail is dropped then (docs/architecture.md, "The stream engine").
    pub fn finish(&mut self) -> Option<RawEvent> {
        if let Bom::Pending { matched } = self.bom {
            // A stream that ended inside what looked like a BOM: those bytes were content.
            self.bom = Bom::Done;
            self.release_partial_bom(matched);
        }
        match self.next_event() {
            Ok(None) => {}
            Ok(Some(event)) => {
                self.ready = Some(event);
                return None;
            }
            Err(_) => return None,
        }
        if self.carry.is_empty() {
            return None;
        }
        let completion: &[u8] = match self.scan {
            // An LF right after a CR would only finish that CRLF, so a blank line needs two.
            Scan::EventStart | Scan::InLine | Scan::LineStart { after_cr: true } => b"\n\n",
            Scan::LineStart { after_cr: false } => b"\n",
        };
        self.carry.extend_from_slice(completion);
        self.scan = Scan::EventStart;
        let lf_only = !std::mem::take(&mut self.saw_cr);
        Some(RawEvent::framed(self.carry.split().freeze(), lf_only))
    }

    /// Queues the bytes of a BOM prefix that turned out not to be a BOM, ahead of later chunks.
    fn release_partial_bom(&mut self, matched: usize) {
        if let Some(prefix) = UTF8_BOM.get(..matched).filter(|p| !p.is_empty()) {
            self.input.push_front(Bytes::copy_from_slice(prefix));
        }
    }

    fn fail(&mut self) -> FrameError {
        let error = FrameError::Oversize {
            limit: self.max_event_size,
        };
        self.failed = Some(error);
        self.input.clear();
        self.carry = BytesMut::new();
        error
    }
}

/// Scans `bytes` for the end of the current event, continuing from `scan`.
///
/// "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF) character
/// pair, a single U+000A LINE FEED (LF) character, or a single U+000D CARRIAGE RETURN (CR)
/// character."
///
/// Returns the index of the byte that completes the event: the first byte of the blank line's
/// line end. The event is then provably complete, whether that byte is an LF, a lone CR or the CR
/// of a CRLF, so it is never held back waiting for the next read. Returns `None` when `bytes` ends
/// first, with `scan` saying where the event stands. Sets `saw_cr` when a line end of the
/// event (its blank line's included) is or contains a CR.
fn find_event_end(bytes: &[u8], scan: &mut Scan, saw_cr: &mut bool) -> Option<usize> {
    let mut at = 0;
    loop {
        match *scan {
            Scan::EventStart | Scan::InLine => {
                let found = at + memchr2(b'\n', b'\r', bytes.get(at..)?)?;
                let after_cr = bytes.get(found) == Some(&b'\r');
                *saw_cr |= after_cr;
                *scan = Scan::LineStart { after_cr };
                at = found + 1;
            }
            Scan::LineStart { after_cr } => match *bytes.get(at)? {
                // The LF of a CRLF, even when the CR came in the previous read.
                b'\n' if after_cr => {
                    *scan = Scan::LineStart { after_cr: false };
                    at += 1;
                }
                // "If the line is empty (a blank line): Dispatch the event".
                b'\n' => return Some(at),
                b'\r' => {
                    *saw_cr = true;
                    return Some(at);
                }
                _ => *scan = Scan::InLine,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(framer: &mut Framer) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(Some(event)) = framer.next_event() {
            out.push(event.into_bytes());
        }
        out
    }

    #[test]
    fn event_inside_one_chunk_is_a_slice_of_it() {
        let chunk = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        let mut framer = Framer::new(1024);
        framer.push(chunk.clone());
        let got = events(&mut framer);
        assert_eq!(got, vec![&b"data: a\n\n"[..], &b"data: b\n\n"[..]]);
        // Same backing memory: the first event starts where the chunk starts.
        assert_eq!(got[0].as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn trailing_cr_does_not_delay_a_complete_event() {
        let mut framer = Framer::new(1024);
        framer.push(Bytes::from_static(b"data: a\r\n\r"));
        assert_eq!(events(&mut framer), vec![&b"data: a\r\n\r"[..]]);
        framer.push(Bytes::from_static(b"\ndata: b\r\r"));
        assert_eq!(events(&mut framer), vec![&b"data: b\r\r"[..]]);
    }

    #[test]
    fn oversize_is_sticky_and_bounded() {
        let mut framer = Framer::new(12);
        framer.push(Bytes::from_static(b"data: 0123"));
        assert_eq!(framer.next_event(), Ok(None));
        framer.push(Bytes::from_static(b"456789"));
        assert_eq!(framer.next_event(), Err(FrameError::Oversize { limit: 12 }));
        assert_eq!(framer.next_event(), Err(FrameError::Oversize { limit: 12 }));
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn finish_waits_until_drained() {
        let mut framer = Framer::new(1024);
        framer.push(Bytes::from_static(b"data: a\n\ndata: b"));
        assert_eq!(framer.finish(), None);
        assert_eq!(events(&mut framer), vec![&b"data: a\n\n"[..]]);
        let tail = framer.finish().map(RawEvent::into_bytes);
        assert_eq!(tail.as_deref(), Some(&b"data: b\n\n"[..]));
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn partial_bom_that_is_not_a_bom_is_kept() {
        let mut framer = Framer::new(1024);
        framer.push(Bytes::from_static(&[0xEF, 0xBB]));
        framer.push(Bytes::from_static(b"x: 1\n\n"));
        assert_eq!(events(&mut framer), vec![&b"\xEF\xBBx: 1\n\n"[..]]);
    }

    #[test]
    fn display_is_lower_case_without_period() {
        let text = FrameError::Oversize { limit: 10 }.to_string();
        assert_eq!(text, "event larger than max_event_size of 10 bytes");
    }
}
