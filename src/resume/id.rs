//! Stream keys, event ids and credential fingerprints.
//!
//! A resumable stream is named by a key of 128 random bits from the operating system's
//! generator (`ring::rand::SystemRandom`), written as 32 lowercase hex digits: knowing a
//! key is what lets a client read the stream, so it must be unguessable. Every event the
//! gateway forwards on such a stream carries the id `KEY-SEQ`, `SEQ` counting from 1.
//!
//! The credential a stream was opened with (the `Authorization` header, or the header
//! the route names) is kept only as HMAC-SHA256 keyed by the stream key: never in
//! clear, useless for any other stream, and the same on every replica (which a
//! per-process key would not be, and `store: redis` needs).

use std::fmt;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a key in bytes (128 bits).
const KEY_LEN: usize = 16;

/// An unguessable stream key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey([u8; KEY_LEN]);

/// The operating system's generator failed: no key can be made, so the stream is
/// served without resume.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random generator failed")]
pub struct NoRandom;

impl StreamKey {
    /// A fresh key from the operating system's generator.
    pub fn generate() -> Result<StreamKey, NoRandom> {
        let mut key = [0; KEY_LEN];
        SystemRandom::new().fill(&mut key).map_err(|_| NoRandom)?;
        Ok(StreamKey(key))
    }

    /// The key as 32 lowercase hex digits.
    pub fn hex(&self) -> [u8; 2 * KEY_LEN] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0; 2 * KEY_LEN];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(byte >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
        }
        out
    }

    pub(crate) fn parse_hex(text: &[u8]) -> Option<StreamKey> {
        if text.len() != 2 * KEY_LEN {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut key = [0; KEY_LEN];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            key[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(StreamKey(key))
    }

    /// The keyed fingerprint of a credential (`None`: the request had none).
    pub fn fingerprint(&self, credential: Option<&[u8]>) -> Fingerprint {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut context = hmac::Context::with_key(&key);
        // A marker byte keeps "no header" apart from an empty one.
        match credential {
            None => context.update(&[0]),
            Some(value) => {
                context.update(&[1]);
                context.update(value);
            }
        }
        let tag = context.sign();
        let mut out = [0; 32];
        out.copy_from_slice(tag.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: a log line must not hand out a readable key.
        let hex = self.hex();
        write!(f, "StreamKey({}…)", String::from_utf8_lossy(&hex[..6]))
    }
}

/// HMAC-SHA256 of a credential, keyed by the stream key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub(crate) [u8; 32]);

impl Fingerprint {
    /// Whether `other` is the same, compared in constant time.
    pub fn matches(&self, other: &Fingerprint) -> bool {
        // Fold every byte: the time taken does not depend on where they differ.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(..)")
    }
}

/// An event's id: the stream's key and the event's sequence number (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    pub key: StreamKey,
    pub seq: u64,
}

impl EventId {
    /// Parses `KEY-SEQ` as a client sends it back (`Last-Event-ID`, `lastEventId`);
    /// anything else, an upstream's own id included, is `None`.
    pub fn parse(text: &[u8]) -> Option<EventId> {
        let text = text.trim_ascii();
        let dash = text.iter().position(|&b| b == b'-')?;
        let key = StreamKey::parse_hex(&text[..dash])?;
        let seq = &text[dash + 1..];
        if seq.is_empty() || seq.len() > 19 || !seq.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let seq = std::str::from_utf8(seq).ok()?.parse().ok()?;
        Some(EventId { key, seq })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.key.hex();
        write!(f, "{}-{}", String::from_utf8_lossy(&hex), self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_ids_round_trip() {
        let a = StreamKey::generate().unwrap();
        let b = StreamKey::generate().unwrap();
        assert_ne!(a, b, "two keys from the generator differ");
        let id = EventId { key: a, seq: 42 };
        let text = id.to_string();
        assert_eq!(text.len(), 32 + 1 + 2);
        assert!(text[..32].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(EventId::parse(text.as_bytes()), Some(id));
        assert_eq!(EventId::parse(format!(" {text}\t").as_bytes()), Some(id));
    }

    #[test]
    fn foreign_ids_are_not_ours() {
        let key = String::from_utf8(StreamKey::generate().unwrap().hex().to_vec()).unwrap();
        for bad in [
            "",
            "42",
            "chatcmpl-123",
            &format!("{key}-"),
            &format!("{key}-x1"),
            &format!("{key}-99999999999999999999"),
            &format!("{}-1", &key[1..]),
            &format!("{}-1", key.to_uppercase()),
        ] {
            assert_eq!(EventId::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_tell_credentials_apart() {
        let key = StreamKey::generate().unwrap();
        let other = StreamKey::generate().unwrap();
        let bearer = key.fingerprint(Some(b"Bearer a"));
        assert!(bearer.matches(&key.fingerprint(Some(b"Bearer a"))));
        assert!(!bearer.matches(&key.fingerprint(Some(b"Bearer b"))));
        assert!(!bearer.matches(&key.fingerprint(None)));
        assert!(!key.fingerprint(None).matches(&key.fingerprint(Some(b""))));
        assert!(
            !bearer.matches(&other.fingerprint(Some(b"Bearer a"))),
            "keyed by the stream"
        );
    }
}
