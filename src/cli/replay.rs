//! The `rewrite` command's driver: a route's stream engine over a captured stream,
//! with the same framing, rules, terminator and closing frames as a live stream (no
//! clocks: a capture has no time), and a report of what each rule did.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::StreamConfig;
use crate::engine::{Engine, Outcome};

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
/// then ended cleanly, writing the stream a client would receive to `out`.
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
        while let Some(frame) = engine.next_frame() {
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
