//! One framed event: [`RawEvent`] owns its exact bytes, [`Event`] is a borrowed view of its fields.
//!
//! Nothing is copied to read an event: lines, fields and (single-line) data are slices of the
//! received bytes. Field parsing follows WHATWG "Interpreting an event stream", quoted below.

use std::borrow::Cow;

use bytes::Bytes;
use memchr::{memchr, memchr2};

/// Field name of a data line.
pub(crate) const DATA: &[u8] = b"data";
/// Field name that sets the event type.
pub(crate) const EVENT: &[u8] = b"event";
/// Field name that sets the last event ID.
pub(crate) const ID: &[u8] = b"id";
/// Field name that sets the reconnection time.
pub(crate) const RETRY: &[u8] = b"retry";

/// The exact bytes of one event as the [`Framer`](crate::sse::Framer) cut them from the stream,
/// including the blank line that ends it.
///
/// Line ends inside are whatever the upstream sent (LF, CR or CRLF). When the blank line's line
/// end is a CRLF, the bytes end at its CR: the framer emits an event as soon as it is provably
/// complete, so the LF is consumed but never part of an event (that keeps the bytes independent of
/// how the stream was chunked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    bytes: Bytes,
    /// No line end is or contains a CR.
    lf_only: bool,
}

impl RawEvent {
    /// Wraps bytes the framer proved to be one complete event, with what it saw of their
    /// line ends.
    pub(crate) fn framed(bytes: Bytes, lf_only: bool) -> RawEvent {
        debug_assert_eq!(lf_only, memchr(b'\r', &bytes).is_none());
        RawEvent { bytes, lf_only }
    }

    /// The event's bytes, blank line included.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The event's bytes, blank line included, without a copy.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// True when every line end is LF, so the event can be forwarded byte for byte.
    pub fn is_lf_only(&self) -> bool {
        self.lf_only
    }

    /// True when the event has at least one `data` field (comments and unknown fields don't count):
    /// only such events are dispatched by a client, and only they count as upstream progress.
    pub fn has_data(&self) -> bool {
        self.view().has_data()
    }

    /// A borrowed view of the event's lines and fields.
    pub fn view(&self) -> Event<'_> {
        Event::new(&self.bytes)
    }
}

/// A borrowed view over the text of one event, parsed per WHATWG.
///
/// The text may use any line ends (LF, CR, CRLF); the view ends at the first blank line or at the
/// end of the text, whichever comes first, so it works on a [`RawEvent`] and on an event's text
/// without its final blank line alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    text: &'a [u8],
}

impl<'a> Event<'a> {
    /// A view over `text`; nothing is parsed until asked.
    pub fn new(text: &'a [u8]) -> Event<'a> {
        Event { text }
    }

    /// The event's lines without their line ends, up to (not including) the blank line.
    pub fn lines(&self) -> Lines<'a> {
        Lines { rest: self.text }
    }

    /// The event's fields in order as `(name, value)`; comment lines are skipped.
    pub fn fields(&self) -> Fields<'a> {
        Fields {
            lines: self.lines(),
        }
    }

    /// True when the event has at least one `data` field.
    pub fn has_data(&self) -> bool {
        // Nearly every event starts with its data line: answer that without parsing.
        let first_is_data = self
            .text
            .strip_prefix(DATA)
            .is_some_and(|rest| matches!(rest.first(), None | Some(b':' | b'\n' | b'\r')));
        first_is_data || self.fields().any(|field| field.name == DATA)
    }

    /// The data payload: the values of all `data` fields joined with LF, as a client dispatches
    /// it; `None` when there is no `data` field. Borrowed when there is exactly one data line.
    pub fn data(&self) -> Option<Cow<'a, [u8]>> {
        // "data: Append the field value to the data buffer, then append a single U+000A LINE FEED
        // (LF) character." At dispatch: "If the data buffer's last character is a U+000A LINE FEED
        // (LF) character, then remove the last character from the data buffer."
        let mut values = self
            .fields()
            .filter(|field| field.name == DATA)
            .map(|field| field.value);
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(Cow::Borrowed(first));
        };
        let mut joined = Vec::with_capacity(first.len() + second.len() + 1);
        joined.extend_from_slice(first);
        for value in std::iter::once(second).chain(values) {
            joined.push(b'\n');
            joined.extend_from_slice(value);
        }
        Some(Cow::Owned(joined))
    }

    /// True when the event has data and its payload (as [`Event::data`] joins it) equals `want`;
    /// compared line by line, without joining.
    pub fn data_is(&self, want: &[u8]) -> bool {
        let mut rest = want;
        let mut values = self
            .fields()
            .filter(|field| field.name == DATA)
            .map(|field| field.value);
        let Some(first) = values.next() else {
            return false;
        };
        let Some(after_first) = rest.strip_prefix(first) else {
            return false;
        };
        rest = after_first;
        for value in values {
            match rest.strip_prefix(b"\n").and_then(|r| r.strip_prefix(value)) {
                Some(after) => rest = after,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// The value of the last `event` field; `None` when there is none or it is empty (a client
    /// then dispatches the event as `message`).
    pub fn event_type(&self) -> Option<&'a [u8]> {
        // "event: Set the event type buffer to the field value."
        self.fields()
            .filter(|field| field.name == EVENT)
            .last()
            .map(|field| field.value)
            .filter(|value| !value.is_empty())
    }

    /// The value of the last `id` field that a client accepts; `None` when there is none.
    pub fn id(&self) -> Option<&'a [u8]> {
        // "id: If the field value does not contain U+0000 NULL, then set the last event ID buffer
        // to the field value. Otherwise, ignore the field."
        self.fields()
            .filter(|field| field.name == ID && memchr(0, field.value).is_none())
            .last()
            .map(|field| field.value)
    }

    /// The reconnection time in milliseconds from the last valid `retry` field; `None` when there
    /// is none. A value that is empty, not all ASCII digits, or beyond `u64` is ignored.
    pub fn retry(&self) -> Option<u64> {
        // "retry: If the field value consists of only ASCII digits, then interpret the field value
        // as an integer in base ten, and set the event stream's reconnection time to that integer.
        // Otherwise, ignore the field."
        self.fields()
            .filter(|field| field.name == RETRY)
            .filter_map(|field| parse_decimal(field.value))
            .last()
    }
}

/// Parses a non-empty run of ASCII digits; `None` for anything else or on overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Iterator over an event's lines without line ends; stops at the blank line or the end.
#[derive(Clone, Debug)]
pub struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF)
        // character pair, a single U+000A LINE FEED (LF) character, or a single U+000D CARRIAGE
        // RETURN (CR) character."
        let (line, rest) = match memchr2(b'\n', b'\r', self.rest) {
            Some(at) => {
                let (line, ending) = self.rest.split_at(at);
                let ending_len = if ending.starts_with(b"\r\n") { 2 } else { 1 };
                (line, ending.get(ending_len..).unwrap_or_default())
            }
            None => (self.rest, &[][..]),
        };
        if line.is_empty() {
            // "If the line is empty (a blank line): Dispatch the event". Nothing after it belongs
            // to this event.
            self.rest = &[];
            return None;
        }
        self.rest = rest;
        Some(line)
    }
}

/// One line of an event, classified per WHATWG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// A line starting with `:`; holds the text after the colon. Clients ignore it.
    Comment(&'a [u8]),
    /// Any other line.
    Field(Field<'a>),
}

impl<'a> Line<'a> {
    /// Classifies one line (without its line end).
    pub(crate) fn parse(line: &'a [u8]) -> Line<'a> {
        // "If the line starts with a U+003A COLON character (:): Ignore the line."
        if let Some(comment) = line.strip_prefix(b":") {
            return Line::Comment(comment);
        }
        match memchr(b':', line) {
            // "If the line contains a U+003A COLON character (:): Collect the characters on the
            // line before the first U+003A COLON character (:), and let field be that string.
            // Collect the characters on the line after the first U+003A COLON character (:), and
            // let value be that string. If value starts with a U+0020 SPACE character, remove it
            // from value."
            Some(colon) => {
                let (name, rest) = line.split_at(colon);
                let value = rest.get(1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                Line::Field(Field { name, value })
            }
            // "Otherwise, the string is not empty but does not contain a U+003A COLON character
            // (:): Process the field using ... the whole line as the field name, and the empty
            // string as the field value."
            None => Line::Field(Field {
                name: line,
                value: &[],
            }),
        }
    }
}

/// A field of an event: the name (case-sensitive) and the value with one leading space removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    /// Everything before the first colon, or the whole line when it has none.
    pub name: &'a [u8],
    /// Everything after the first colon, less one leading space; empty when there is no colon.
    pub value: &'a [u8],
}

impl Field<'_> {
    /// True for the four names a client acts on: `data`, `event`, `id`, `retry`.
    ///
    /// "Otherwise: The field is ignored." applies to every other name.
    pub fn is_known(&self) -> bool {
        [DATA, EVENT, ID, RETRY].contains(&self.name)
    }
}

/// Iterator over an event's fields; see [`Event::fields`].
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    lines: Lines<'a>,
}

impl<'a> Iterator for Fields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        self.lines.find_map(|line| match Line::parse(line) {
            Line::Field(field) => Some(field),
            Line::Comment(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(text: &str) -> Event<'_> {
        Event::new(text.as_bytes())
    }

    #[test]
    fn fields_strip_one_space_and_split_at_first_colon() {
        let fields: Vec<_> = view("data:  two\nevent:a:b\ndata\n: c\n\n")
            .fields()
            .map(|f| (f.name, f.value))
            .collect();
        assert_eq!(
            fields,
            vec![
                (&b"data"[..], &b" two"[..]),
                (b"event", b"a:b"),
                (b"data", b""),
            ]
        );
    }

    #[test]
    fn lines_accept_every_line_end_and_stop_at_blank_line() {
        let lines: Vec<_> = view("a\rb\r\nc\nd\r\n\r\nnot-this").lines().collect();
        assert_eq!(lines, vec![&b"a"[..], b"b", b"c", b"d"]);
    }

    #[test]
    fn data_is_borrowed_for_one_line_and_joined_for_many() {
        assert!(matches!(
            view("data: x\n\n").data(),
            Some(Cow::Borrowed(b"x"))
        ));
        assert_eq!(
            view("data: a\nid: 1\ndata:b\ndata\n\n").data().as_deref(),
            Some(&b"a\nb\n"[..])
        );
        assert_eq!(view(": only a comment\n\n").data(), None);
    }

    #[test]
    fn data_is_compares_the_joined_payload() {
        assert!(view("data: [DONE]\n\n").data_is(b"[DONE]"));
        assert!(view("data: a\nid: 1\ndata: b\n\n").data_is(b"a\nb"));
        assert!(view("data\n\n").data_is(b""));
        assert!(!view("data: a\ndata: b\n\n").data_is(b"a"));
        assert!(!view("data: a\n\n").data_is(b"a\n"));
        assert!(!view(": x\n\n").data_is(b""));
    }

    #[test]
    fn retry_parses_digits_only_and_ignores_overflow() {
        assert_eq!(view("retry: 1500\n\n").retry(), Some(1500));
        assert_eq!(view("retry: 10\nretry: x1\n\n").retry(), Some(10));
        assert_eq!(view("retry:\n\n").retry(), None);
        assert_eq!(view("retry: 99999999999999999999999\n\n").retry(), None);
        assert_eq!(view("retry: +5\n\n").retry(), None);
    }

    #[test]
    fn event_type_empty_means_default() {
        assert_eq!(view("event:\ndata\n\n").event_type(), None);
        assert_eq!(view("event: a\nevent: b\n\n").event_type(), Some(&b"b"[..]));
    }
}
