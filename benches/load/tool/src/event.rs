//! The benchmark's event: an OpenAI-style chat completion chunk whose `"t"` field is the
//! send time in nanoseconds of CLOCK_MONOTONIC (20 digits, zero-padded, so every event of
//! a run has the same size), padded with text in `content` to the requested size.
//!
//! ```text
//! data: {"t":00000012345678901234,"id":"chatcmpl-load","object":"chat.completion.chunk",...
//!        "choices":[{"index":0,"delta":{"content":"lorem ipsum ..."},"finish_reason":null}]}
//! ```
//!
//! The deltas use `"content"`, as OpenAI's do, so the DESIGN.md example rules (which
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
}
