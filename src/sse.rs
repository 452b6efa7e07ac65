//! Server-Sent Events vocabulary shared by the framer, the rewrite rules and the writer.
//!
//! Everything here is pure code over [`bytes::Bytes`]: no sockets, clocks or locks, so it can be
//! property-tested and fuzzed. The parsing rules follow the WHATWG HTML standard, section
//! "Server-sent events", subsection "Interpreting an event stream"; the steps are quoted beside the
//! code they govern:
//!
//! - [`Framer`] cuts the byte stream into events (line ends, blank lines, BOM, size limit).
//! - [`RawEvent`] holds one event's exact bytes; [`Event`] is a borrowed view of its fields.
//! - `writer` encodes events canonically (LF line ends), for rewritten and gateway-made events.

pub(crate) mod event;
mod framer;
pub(crate) mod writer;

pub use event::{Event, RawEvent};
pub(crate) use event::{Field, Line};
pub use framer::{FrameError, Framer};
