//! The benchmark's event: an OpenAI-style chat completion chunk whose `"t"` field is the
//! send time in nanoseconds of CLOCK_MONOTONIC (20 digits, zero-padded, so every event of
//! a run has the same size), padded with text in `content` to the requested size.
//!
//! ```text
//! data: {"t":00000012345678901234,"id":"chatcmpl-load","object":"chat.completion.chunk",...
//!        "choices":[{"index":0,"delta":{"content":"lorem ipsum ..."},"finish_reason":null}]}
//! ```
//!
//! The deltas use `"content"`, as OpenAI's do, so the example rules of docs/architecture.md (which
//! rewrite `"text":`) leave every event untouched: the gateway's zero-copy path is measured.

use bytes::BytesMut;

const HEAD: &[u8] = b"data: {\"t\":";
const STAMP_DIGITS: usize = 20;
const MIDDLE: &[u8] = b",\"id\":\"chatcmpl-load\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
const TAIL: &[u8] = b"\"},\"finish_reason\":null}]}\n\n";
const FILLER: &[u8] = b"lorem ipsum dolor sit amet consectetur adipiscing elit ";

/// The key whose value is the send time.
pub const STAMP_KEY: &[u8] = b"\"t\":";

/// One event's bytes, with the place of its stamp.
#[derive(Debug)]
pub struct Template {
    bytes: Vec<u8>,
}

impl Template {
    /// The smallest event the format allows.
    pub fn min_size() -> usize {
        HEAD.len() + STAMP_DIGITS + MIDDLE.len() + TAIL.len()
    }

    /// An event of exactly `size` bytes (blank line included).
    pub fn new(size: usize) -> Result<Template, String> {
        let min = Self::min_size();
        if size < min {
            return Err(format!("--event-size must be at least {min} bytes"));
        }
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(HEAD);
        bytes.resize(HEAD.len() + STAMP_DIGITS, b'0');
        bytes.extend_from_slice(MIDDLE);
        bytes.extend(FILLER.iter().cycle().take(size - min));
        bytes.extend_from_slice(TAIL);
        debug_assert_eq!(bytes.len(), size);
        Ok(Template { bytes })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one event stamped `stamp_ns` to `out`.
    pub fn write(&self, out: &mut BytesMut, stamp_ns: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let at = start + HEAD.len();
        put_digits(&mut out[at..at + STAMP_DIGITS], stamp_ns);
    }
}

fn put_digits(dst: &mut [u8], mut value: u64) {
    for digit in dst.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The send time of an event, if it carries one (comments such as `: keep-alive` do
/// not). The stamp is looked for near the start, where the upstream writes it.
pub fn stamp(event: &[u8]) -> Option<u64> {
    let head = &event[..event.len().min(64)];
    let at = head.windows(STAMP_KEY.len()).position(|w| w == STAMP_KEY)? + STAMP_KEY.len();
    let digits = event.get(at..)?;
    let mut value: u64 = 0;
    let mut n = 0;
    for &b in digits.iter().take(STAMP_DIGITS) {
        if !b.is_ascii_digit() {
            break;
        }
        value = value * 10 + u64::from(b - b'0');
        n += 1;
    }
    (n > 0).then_some(value)
}

/// What an event is to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A benchmark event, with its send time.
    Stamped(u64),
    /// Data `[DONE]`: the end of the answer.
    Terminator,
    /// `event: error`: the proxy ended the stream with an error.
    Error,
    /// Anything else (comments such as `: keep-alive`).
    Other,
}

/// Classifies an event (up to and including its blank line) as a browser's
/// `EventSource` would read it: a `[DONE]` split over two lines (`data:` then `[DONE]`)
/// is not the terminator, since the second line is no field a browser knows.
pub fn kind(event: &[u8]) -> Kind {
    if let Some(sent) = stamp(event) {
        return Kind::Stamped(sent);
    }
    let mut data: Vec<&[u8]> = Vec::new();
    let mut error = false;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"data" => data.push(value),
            b"event" => error = value == b"error",
            _ => {}
        }
    }
    if error {
        Kind::Error
    } else if data == [b"[DONE]"] {
        Kind::Terminator
    } else {
        Kind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_and_stamp_round_trip() {
        let t = Template::new(200).unwrap();
        let mut out = BytesMut::new();
        t.write(&mut out, 123_456_789_012);
        assert_eq!(out.len(), 200);
        assert!(out.ends_with(b"}]}\n\n"));
        assert_eq!(stamp(&out), Some(123_456_789_012));
        assert_eq!(stamp(b": keep-alive\n\n"), None);
        assert!(Template::new(Template::min_size() - 1).is_err());
    }

    #[test]
    fn kinds() {
        let t = Template::new(200).unwrap();
        let mut out = BytesMut::new();
        t.write(&mut out, 42);
        assert_eq!(kind(&out), Kind::Stamped(42));
        assert_eq!(kind(b"data: [DONE]\n\n"), Kind::Terminator);
        assert_eq!(kind(b"data:[DONE]\n\n"), Kind::Terminator);
        assert_eq!(kind(b"data:[DONE]\r\n\r\n"), Kind::Terminator);
        // The flaw the gateway repairs: a browser sees empty data and no terminator.
        assert_eq!(kind(b"data:\n[DONE]\n\n"), Kind::Other);
        assert_eq!(kind(b"data: [DONE]x\n\n"), Kind::Other);
        assert_eq!(
            kind(b"event: error\ndata: {\"error\":{\"type\":\"shutdown\"}}\n\n"),
            Kind::Error
        );
        assert_eq!(kind(b": keep-alive\n\n"), Kind::Other);
    }
}
