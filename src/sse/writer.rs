//! Canonical encoding of events the gateway writes: rewritten events, comments, errors and
//! terminators.
//!
//! Canonical means LF line ends only and `field: value` lines (one space after the colon, none
//! when the value is empty), ending with a blank line. Real clients mishandle CR-only streams and
//! CRLF split across reads; LF-only output spares them that.

use bytes::Bytes;
use memchr::memchr2;

use crate::sse::event::{DATA, EVENT};

/// Encodes an event with an optional type and a data payload.
///
/// The payload is split at its line ends into `data` lines, so a client dispatches exactly
/// `data` (SSE cannot carry a CR in data: a CR or CRLF in `data` arrives as LF). An empty payload
/// is one empty `data` line, which a client still dispatches. Only the first line of
/// `event_type` is used, so a line end in it cannot forge fields.
pub(crate) fn event(event_type: Option<&[u8]>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 16);
    if let Some(event_type) = event_type {
        let first_line = LineEnds::new(event_type).next().unwrap_or_default();
        push_field(&mut out, EVENT, first_line);
    }
    push_data_lines(&mut out, data);
    out.push(b'\n');
    Bytes::from(out)
}

/// Appends one `name: value` line with its LF.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.push(b':');
    // The parser removes exactly one leading space, so this keeps a value's own leading space.
    if !value.is_empty() {
        out.push(b' ');
        out.extend_from_slice(value);
    }
    out.push(b'\n');
}

/// Appends `data` as `data` lines, one per line of the payload, each with its LF.
pub(crate) fn push_data_lines(out: &mut Vec<u8>, data: &[u8]) {
    for line in LineEnds::new(data) {
        push_field(out, DATA, line);
    }
}

/// Splits at every LF, CR or CRLF, keeping empty pieces: `n` line ends give `n + 1` pieces.
struct LineEnds<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> LineEnds<'a> {
    fn new(text: &'a [u8]) -> LineEnds<'a> {
        LineEnds { rest: Some(text) }
    }
}

impl<'a> Iterator for LineEnds<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        if let Some(at) = memchr2(b'\n', b'\r', rest) {
            let (piece, ending) = rest.split_at(at);
            let ending_len = if ending.starts_with(b"\r\n") { 2 } else { 1 };
            self.rest = Some(ending.get(ending_len..).unwrap_or_default());
            Some(piece)
        } else {
            self.rest = None;
            Some(rest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_splits_data_into_lines() {
        assert_eq!(
            event(Some(b"error"), b"a\nb\r\nc\n"),
            Bytes::from_static(b"event: error\ndata: a\ndata: b\ndata: c\ndata:\n\n")
        );
    }

    #[test]
    fn empty_data_is_still_dispatched() {
        assert_eq!(event(None, b""), Bytes::from_static(b"data:\n\n"));
    }

    #[test]
    fn leading_space_of_a_value_survives() {
        assert_eq!(event(None, b" x"), Bytes::from_static(b"data:  x\n\n"));
    }

    #[test]
    fn event_type_cannot_inject_lines() {
        assert_eq!(
            event(Some(b"a\ndata: evil"), b"1"),
            Bytes::from_static(b"event: a\ndata: 1\n\n")
        );
    }
}
