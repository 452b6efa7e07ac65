//! Stream keys, event ids and credential fingerprints.
//!
//! A resumable stream is named by a key of 128 random bits from the operating system's
//! generator (`ring::rand::SystemRandom`): knowing a key is what lets a client read the
//! stream, so it must be unguessable. Every event the gateway forwards on such a stream
//! carries the id `KEY-SEQ`, `SEQ` counting from 1, with the key as 22 characters of
//! unpadded base64url: every event carries it, and 32 hex digits would be 10 bytes
//! more per event on the wire and in the replay buffer. Ids with the key as 32 hex
//! digits (what earlier versions sent) are still read, and Redis names streams by the
//! hex form, so streams opened before an upgrade resume after it; a replica of an
//! earlier version cannot read the new form (a reconnect landing there mid-upgrade is
//! an unknown id).
//!
//! The credential a stream was opened with (the `Authorization` header, or the header
//! the route names) is kept only as HMAC-SHA256 keyed by the stream key: never in
//! clear, useless for any other stream, and the same on every replica (which a
//! per-process key would not be, and `store: redis` needs).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a key in bytes (128 bits).
const KEY_LEN: usize = 16;
/// Length of a key in an id: unpadded base64url of 16 bytes.
pub(crate) const KEY_TEXT_LEN: usize = 22;

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

    /// The key as it is written in ids: 22 characters of unpadded base64url.
    pub fn text(&self) -> [u8; KEY_TEXT_LEN] {
        let mut out = [0; KEY_TEXT_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut out)
            .unwrap_or_default();
        debug_assert_eq!(written, KEY_TEXT_LEN);
        out
    }

    /// A key as written in an id: base64url, or 32 hex digits from earlier versions.
    /// The decoder refuses non-zero unused bits, so a key has one text of each form.
    pub(crate) fn parse_text(text: &[u8]) -> Option<StreamKey> {
        if text.len() != KEY_TEXT_LEN {
            return StreamKey::parse_hex(text);
        }
        let mut key = [0; KEY_LEN];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut key) {
            Ok(KEY_LEN) => Some(StreamKey(key)),
            _ => None,
        }
    }

    /// The key as 32 lowercase hex digits: how Redis names the stream.
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
        let text = self.text();
        write!(f, "StreamKey({}…)", String::from_utf8_lossy(&text[..4]))
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
        // The last dash: base64url has dashes of its own.
        let dash = text.iter().rposition(|&b| b == b'-')?;
        let key = StreamKey::parse_text(&text[..dash])?;
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
        let text = self.key.text();
        write!(f, "{}-{}", String::from_utf8_lossy(&text), self.seq)
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
        assert_eq!(text.len(), 22 + 1 + 2);
        assert!(text[..22]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(EventId::parse(text.as_bytes()), Some(id));
        assert_eq!(EventId::parse(format!(" {text}\t").as_bytes()), Some(id));
    }

    #[test]
    fn a_key_with_dashes_and_an_id_of_an_earlier_version_parse() {
        // 0xfb bytes are `-` characters in base64url: `+-+-...`.
        let key = StreamKey([0xfb; KEY_LEN]);
        let text = String::from_utf8(key.text().to_vec()).unwrap();
        assert!(text.contains('-'), "{text}");
        let id = EventId { key, seq: 7 };
        assert_eq!(EventId::parse(format!("{text}-7").as_bytes()), Some(id));
        let hex = String::from_utf8(key.hex().to_vec()).unwrap();
        assert_eq!(EventId::parse(format!("{hex}-7").as_bytes()), Some(id));
    }

    #[test]
    fn foreign_ids_are_not_ours() {
        let key = String::from_utf8(StreamKey::generate().unwrap().text().to_vec()).unwrap();
        let hex = String::from_utf8(StreamKey::generate().unwrap().hex().to_vec()).unwrap();
        // The last character of 16 bytes in base64url carries 2 bits; `B` sets one of
        // the 4 unused ones.
        let unused_bits = format!("{}B", &key[..21]);
        for bad in [
            "",
            "42",
            "chatcmpl-123",
            &format!("{key}-"),
            &format!("{key}-x1"),
            &format!("{key}-99999999999999999999"),
            &format!("{}-1", &key[1..]),
            &format!("{}-1", &key[..21]),
            &format!("{key}=-1"),
            &format!("{unused_bits}-1"),
            &format!("{}-1", &hex[1..]),
            &format!("{}-1", hex.to_uppercase()),
            &format!("{}!-1", &key[..21]),
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
