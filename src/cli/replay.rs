//! The `rewrite` command's driver: a route's stream engine over a captured stream,
//! with the same framing, rules, terminator and closing frames as a live stream (no
//! clocks: a capture has no time), the usage chunk kept back and the resume ids a new
//! stream gets, and a report of what each rule did.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{StreamConfig, StreamUsage};
use crate::engine::{Engine, Outcome};
use crate::resume::id::StreamKey;
use crate::resume::stamp::Stamper;

/// What a rewrite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Report {
    pub route: String,
    /// Events framed from the capture.
    pub events_in: u64,
    /// Events written, the closing frames the gateway adds included.
    pub events_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Each rule's name and the events it changed or dropped.
    pub rule_hits: Vec<(String, u64)>,
    pub outcome: Outcome,
}

/// Runs `config`'s pipeline over `capture`, as if the upstream sent it in one read and
/// then ended cleanly, writing the stream a client would receive to `out`: a client
/// that did not ask for usage itself, on a new stream.
pub(super) fn rewrite(
    route: &str,
    config: &StreamConfig,
    capture: Bytes,
    out: &mut impl Write,
) -> io::Result<Report> {
    let mut engine = Engine::new(
        config.pipeline.clone(),
        config.max_event_size,
        Arc::from(route),
    );
    // `usage: request`: the gateway asked the upstream for the usage chunk on the
    // client's behalf, so the client does not get it.
    if config.usage == StreamUsage::Request {
        engine.remove_usage_chunk();
    }
    // `resume`: every event ends in its id under a key of its own, as a new stream's;
    // without a key, as live, the stream goes without ids.
    let mut stamper = config
        .resume
        .as_ref()
        .and_then(|_| StreamKey::generate().ok())
        .map(|key| Stamper::new(&key));
    if stamper.is_some() {
        engine.track_event_ends();
    }
    let mut report = Report {
        route: route.to_owned(),
        events_in: 0,
        events_out: 0,
        bytes_in: capture.len() as u64,
        bytes_out: 0,
        rule_hits: engine
            .rule_names()
            .map(|name| (name.to_owned(), 0))
            .collect(),
        outcome: Outcome::UpstreamEof,
    };
    engine.push(capture);
    let mut ended = false;
    loop {
        while let Some(mut frame) = engine.next_frame() {
            if let Some(stamper) = &mut stamper {
                frame = stamper.stamp(&frame, engine.event_ends()).0;
            }
            report.bytes_out += frame.len() as u64;
            // What leaves is LF-only and each event ends at its one blank line.
            report.events_out += memchr::memmem::find_iter(&frame, b"\n\n").count() as u64;
            out.write_all(&frame)?;
        }
        report.events_in += engine.take_progress().events_in;
        engine.take_rule_hits(|rule, hits| report.rule_hits[rule].1 += hits);
        if ended || engine.outcome().is_some() {
            break;
        }
        engine.upstream_end();
        ended = true;
    }
    out.flush()?;
    let outcome = engine.outcome().unwrap_or(Outcome::UpstreamEof);
    report.outcome = outcome;
    Ok(report)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "route {}: {} events in ({} bytes), {} out ({} bytes); outcome: {}",
            self.route,
            self.events_in,
            self.bytes_in,
            self.events_out,
            self.bytes_out,
            self.outcome.as_str()
        )?;
        let width = self
            .rule_hits
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        for (name, hits) in &self.rule_hits {
            writeln!(f, "  rule {name:<width$}  {hits} hits")?;
        }
        Ok(())
    }
}
