//! The `rewrite` command's engine: a route's pipeline over a captured stream, with
//! the same framing, rules, terminator and closing frames as a live stream (no
//! clocks: a capture has no time), and a report of what each rule did.

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;

use super::{closing_frames, oversize_message, pipeline, Outcome};
use crate::config::StreamConfig;
use crate::rewrite::{Session, Step};

/// What a rewrite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub route: String,
    /// Events framed from the capture.
    pub events_in: u64,
    /// Frames written (events, plus closing frames the gateway adds).
    pub events_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Each rule's name and the events it changed or dropped.
    pub rule_hits: Vec<(String, u64)>,
    pub outcome: Outcome,
}

/// Runs `config`'s pipeline over `capture`, writing the stream a client would receive
/// to `out`.
pub fn rewrite(
    route: &str,
    config: &StreamConfig,
    capture: Bytes,
    out: &mut impl Write,
) -> io::Result<Report> {
    let pipeline = Arc::new(pipeline(config));
    let mut hits = vec![0u64; pipeline.rules().len()];
    let mut report = Report {
        route: route.to_owned(),
        events_in: 0,
        events_out: 0,
        bytes_in: capture.len() as u64,
        bytes_out: 0,
        rule_hits: Vec::new(),
        outcome: Outcome::UpstreamEof,
    };
    let mut session = Session::new(pipeline.clone(), config.max_event_size);
    session.push(capture);
    let mut write = |bytes: Bytes, report: &mut Report| -> io::Result<()> {
        report.events_out += 1;
        report.bytes_out += bytes.len() as u64;
        out.write_all(&bytes)
    };
    let mut error = None;
    loop {
        let step = session.next(&mut |rule| hits[rule] += 1);
        let step = match step {
            Step::NeedMore => match session.finish(&mut |rule| hits[rule] += 1) {
                Some(tail) => tail,
                None => break,
            },
            Step::Oversize { limit } => {
                report.outcome = Outcome::Oversize;
                error = Some(("oversize", oversize_message(limit)));
                break;
            }
            step => step,
        };
        let Step::Event {
            output, terminator, ..
        } = step
        else {
            break;
        };
        report.events_in += 1;
        if let Some(output) = output {
            write(output, &mut report)?;
        }
        if terminator {
            report.outcome = Outcome::Terminator;
            break;
        }
    }
    for frame in closing_frames(&session, route, report.outcome, error)
        .into_iter()
        .flatten()
    {
        write(frame, &mut report)?;
    }
    out.flush()?;
    report.rule_hits = pipeline
        .rules()
        .iter()
        .zip(hits)
        .map(|(rule, hits)| (rule.name().to_owned(), hits))
        .collect();
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
