//! A stream's token clock: time to first token, the gaps between tokens, and the
//! upstream's token usage, turned into metrics as the engine reports them.
//!
//! **What a gap is.** The engine hands out one frame per upstream read, and its
//! progress is taken per frame, so the gateway sees when a *read* with content arrived,
//! not when each event in it was written. A read with several content events is one
//! arrival: one gap is observed per read that carries content (the time since the
//! previous such read), none for the other events of the same read. Counting them as
//! zero-length gaps would measure how TCP coalesced the bytes, not the model, and
//! would pull the low quantiles to 0 on a busy link. The first content read ends time
//! to first token and starts the gaps.
//!
//! **Tokens.** Usage figures are totals for the answer (Anthropic repeats a growing
//! `output_tokens`), so the counters grow by the difference to what this stream
//! already counted: a stream adds exactly its final usage, whenever it reports it.

use tokio::time::Instant;

use crate::engine::Progress;
use crate::metrics::RouteMetrics;
use crate::protocol::Usage;

#[derive(Debug, Default)]
pub(super) struct Tokens {
    /// Request start to the first content event sent.
    pub(super) time_to_first_token: Option<std::time::Duration>,
    last_content: Option<Instant>,
    /// What the upstream reported, as counted so far.
    pub(super) usage: Usage,
}

impl Tokens {
    /// Takes one frame's progress; `started` is the request's start, `arrived` when
    /// the upstream read that carried the frame's events came.
    pub(super) fn account(
        &mut self,
        progress: &Progress,
        started: Instant,
        arrived: Instant,
        metrics: &RouteMetrics,
    ) {
        if progress.content_events > 0 {
            if progress.first_content_event {
                let ttft = arrived - started;
                self.time_to_first_token = Some(ttft);
                metrics.time_to_first_token.observe(ttft.as_secs_f64());
            } else if let Some(last) = self.last_content.filter(|&last| last != arrived) {
                // Another frame of the same read is no gap.
                metrics.inter_token.observe((arrived - last).as_secs_f64());
            }
            self.last_content = Some(arrived);
        }
        if let Some(reported) = progress.usage {
            let grow = |counted: Option<u64>, now: Option<u64>| {
                now.map_or(0, |now| now.saturating_sub(counted.unwrap_or(0)))
            };
            metrics
                .input_tokens
                .inc_by(grow(self.usage.input_tokens, reported.input_tokens));
            metrics
                .output_tokens
                .inc_by(grow(self.usage.output_tokens, reported.output_tokens));
            self.usage.update(reported);
        }
    }
}
