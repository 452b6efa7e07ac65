//! Terminator: recognises the event that ends a stream (such as `data: [DONE]`) and encodes it
//! when the upstream ended without one.

use bytes::Bytes;

use crate::sse::{writer, Event};

/// What makes an event the terminator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TerminatorMatch {
    /// The event's data payload (data lines joined by LF) equals these bytes.
    Data(Bytes),
    /// The event's type (last `event` field) equals these bytes.
    Event(Bytes),
}

/// The terminator of a route's streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminator {
    /// How to recognise it.
    pub matcher: TerminatorMatch,
    /// Send the terminator downstream before ending the response; when false it is swallowed and
    /// never sent, not even synthesized.
    pub forward: bool,
    /// At an upstream EOF without a terminator, send one (`on_upstream_eof: synthesize`).
    pub synthesize_on_eof: bool,
}

impl Terminator {
    /// True when `event` (after the rules ran) is this terminator.
    pub fn matches(&self, event: &Event<'_>) -> bool {
        match &self.matcher {
            TerminatorMatch::Data(want) => event.data_is(want),
            TerminatorMatch::Event(want) => event.event_type() == Some(&want[..]),
        }
    }

    /// Bytes that every event this terminator matches contains in its text (its data or
    /// type, when that fits on one line); `None` when there is no such literal.
    pub fn required_literal(&self) -> Option<&[u8]> {
        let (TerminatorMatch::Data(value) | TerminatorMatch::Event(value)) = &self.matcher;
        let one_line = !value.is_empty() && !value.iter().any(|&b| b == b'\n' || b == b'\r');
        one_line.then_some(&value[..])
    }

    /// The terminator as the gateway writes it: `data: X` for a data matcher, `event: X` with an
    /// empty `data` line for an event matcher (without data a client would not dispatch it).
    pub fn encode(&self) -> Bytes {
        match &self.matcher {
            TerminatorMatch::Data(data) => writer::event(None, data),
            TerminatorMatch::Event(event_type) => writer::event(Some(event_type), b""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(forward: bool) -> Terminator {
        Terminator {
            matcher: TerminatorMatch::Data(Bytes::from_static(b"[DONE]")),
            forward,
            synthesize_on_eof: true,
        }
    }

    #[test]
    fn data_matcher_compares_the_whole_payload() {
        let t = done(true);
        assert!(t.matches(&Event::new(b"data: [DONE]\n\n")));
        assert!(t.matches(&Event::new(b"data:[DONE]\r\n\r\n")));
        assert!(!t.matches(&Event::new(b"data: [DONE] \n\n")));
        assert!(!t.matches(&Event::new(b"data: [DONE]\ndata: x\n\n")));
        assert!(!t.matches(&Event::new(b": [DONE]\n\n")));
        assert!(!t.matches(&Event::new(b"data:\n[DONE]\n\n")));
    }

    #[test]
    fn event_matcher_compares_the_type() {
        let t = Terminator {
            matcher: TerminatorMatch::Event(Bytes::from_static(b"done")),
            forward: true,
            synthesize_on_eof: false,
        };
        assert!(t.matches(&Event::new(b"event: done\ndata\n\n")));
        assert!(!t.matches(&Event::new(b"event: done-ish\n\n")));
        assert_eq!(t.encode(), Bytes::from_static(b"event: done\ndata:\n\n"));
    }

    #[test]
    fn encode_data_terminator() {
        assert_eq!(done(true).encode(), Bytes::from_static(b"data: [DONE]\n\n"));
    }
}
