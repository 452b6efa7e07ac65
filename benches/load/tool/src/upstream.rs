//! The SSE upstream: every request (any path, GET or POST) gets a `text/event-stream`
//! response of stamped events, paced at `--events-per-sec` per stream (first event at a
//! random phase, so streams do not all fire in the same millisecond), or with `--fast`
//! as fast as the reader takes them, `--batch` events per write, each stamped when the
//! write is made. With `--write-each` every event is its own write and its own HTTP chunk,
//! as a model server streams tokens: the body yields after each event, so hyper flushes
//! it before asking for the next (without it, events that are ready together, late
//! paced ticks or a fast stream's, share one write). One thread (the benchmark pins it to a core); exits after
//! `--max-seconds`.
//!
//! Streams are endless unless `--end-after` is given: then each one sends a terminator
//! after its events and ends its response, as an assistant API does at the end of an
//! answer (the soak uses it, so upstream-ended streams churn too).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::clock::monotonic_ns;
use crate::event::Template;
use crate::random;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (loopback only), such as 127.0.0.1:8000.
    #[arg(long)]
    listen: SocketAddr,
    /// Events per second per stream (ignored with --fast).
    #[arg(long, default_value_t = 20.0)]
    events_per_sec: f64,
    /// Size of each event in bytes, blank line included.
    #[arg(long, default_value_t = 200)]
    event_size: usize,
    /// Send events as fast as the reader takes them.
    #[arg(long)]
    fast: bool,
    /// With --fast: events per write.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Each event in its own write and its own chunk (implies one event per write with
    /// --fast).
    #[arg(long)]
    write_each: bool,
    /// Exit after this many seconds, whatever is open.
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
    /// End each stream after a random number of events between N/2 and 3N/2 (mean N)
    /// with `data: [DONE]`; 0: streams are endless.
    #[arg(long, default_value_t = 0)]
    end_after: u64,
    /// With --end-after: every Kth stream ends with `data:\n[DONE]` instead, the flaw
    /// of real upstreams that the gateway's `orphan_lines` repair fixes (so the rewrite
    /// path runs too); 0: never.
    #[arg(long, default_value_t = 0)]
    flawed_end_every: u64,
}

/// The terminator, as a well-behaved upstream sends it.
const DONE: &[u8] = b"data: [DONE]\n\n";
/// The terminator split over two lines: a browser ignores the second line and never
/// sees `[DONE]`; the gateway's repair rule makes it `data:[DONE]`.
const FLAWED_DONE: &[u8] = b"data:\n[DONE]\n\n";

#[derive(Debug)]
struct Config {
    template: Template,
    pace: Option<Duration>,
    batch: usize,
    write_each: bool,
    end_after: u64,
    flawed_end_every: u64,
    /// Streams answered so far (which of them ends flawed).
    streams: AtomicU64,
}

pub fn run(args: Args) -> Result<(), String> {
    crate::require_loopback(&args.listen)?;
    let template = Template::new(args.event_size)?;
    let pace = match args.fast {
        true => None,
        false if args.events_per_sec > 0.0 && args.events_per_sec <= 100_000.0 => {
            Some(Duration::from_secs_f64(1.0 / args.events_per_sec))
        }
        false => return Err("--events-per-sec must be in (0, 100000]".into()),
    };
    let config = Arc::new(Config {
        template,
        pace,
        batch: if args.write_each {
            1
        } else {
            args.batch.clamp(1, 4096)
        },
        write_each: args.write_each,
        end_after: args.end_after,
        flawed_end_every: args.flawed_end_every,
        streams: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        eprintln!("sse-load upstream listening on {}", args.listen);
        let stop = tokio::time::sleep(Duration::from_secs(args.max_seconds));
        tokio::pin!(stop);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, most likely: back off, bounded.
                        eprintln!("sse-load upstream: accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut stop => {
                    eprintln!("sse-load upstream: --max-seconds reached, exiting");
                    return Ok(());
                }
            };
            let _ = stream.set_nodelay(true);
            let config = config.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let config = config.clone();
                    async move { Ok::<_, Infallible>(respond(request, config)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn respond(_request: Request<Incoming>, config: Arc<Config>) -> Response<EventBody> {
    let pace = config.pace.map(|period| {
        let phase = period.mul_f64(random::unit());
        let mut interval = tokio::time::interval_at(Instant::now() + phase, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        interval
    });
    let number = config.streams.fetch_add(1, Ordering::Relaxed) + 1;
    let (remaining, end) = match config.end_after {
        0 => (None, None),
        n => {
            let flawed = config.flawed_end_every > 0 && number % config.flawed_end_every == 0;
            let events = (random::around(n as f64).round() as u64).max(1);
            (Some(events), Some(if flawed { FLAWED_DONE } else { DONE }))
        }
    };
    let mut response = Response::new(EventBody {
        config,
        pace,
        remaining,
        end,
        flushed: true,
    });
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A stream of stamped events; it ends when the client goes away, or after its
/// `remaining` events and the terminator.
struct EventBody {
    config: Arc<Config>,
    /// `None` with --fast.
    pace: Option<Interval>,
    /// Events still to send; `None`: endless.
    remaining: Option<u64>,
    /// The terminator still to send after the last event; taken when sent.
    end: Option<&'static [u8]>,
    /// With --write-each: false right after an event, until hyper has flushed it.
    flushed: bool,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if !self.flushed {
            // Pending makes hyper's dispatcher flush what it holds (this event alone)
            // before it polls the body again, right away: one write per event.
            self.flushed = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.remaining == Some(0) {
            // The terminator goes in its own write, right after the last event.
            return Poll::Ready(
                self.end
                    .take()
                    .map(|end| Ok(Frame::data(Bytes::from_static(end)))),
            );
        }
        let count = match self.pace.as_mut() {
            Some(interval) => {
                ready!(interval.poll_tick(cx));
                1
            }
            None => self.config.batch,
        };
        let count = match self.remaining.as_mut() {
            Some(remaining) => {
                let count = count.min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= count as u64;
                count
            }
            None => count,
        };
        let template = &self.config.template;
        let mut out = BytesMut::with_capacity(count * template.len());
        let now = monotonic_ns();
        for _ in 0..count {
            template.write(&mut out, now);
        }
        self.flushed = !self.config.write_each;
        Poll::Ready(Some(Ok(Frame::data(out.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0) && self.end.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(batch: usize, remaining: u64, end: &'static [u8]) -> EventBody {
        let config = Arc::new(Config {
            template: Template::new(200).unwrap(),
            pace: None,
            batch,
            write_each: false,
            end_after: remaining,
            flawed_end_every: 0,
            streams: AtomicU64::new(0),
        });
        EventBody {
            config,
            pace: None,
            remaining: Some(remaining),
            end: Some(end),
            flushed: true,
        }
    }

    /// The frames of a fast body until it ends (at most 100).
    fn frames(mut body: EventBody) -> Vec<Bytes> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while out.len() < 100 {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => out.push(frame.into_data().unwrap()),
                Poll::Ready(None) => break,
                Poll::Pending => panic!("a fast body is always ready"),
            }
        }
        assert!(body.is_end_stream());
        out
    }

    #[test]
    fn ends_after_its_events_with_the_terminator() {
        let got = frames(body(32, 40, DONE));
        let sizes: Vec<usize> = got.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [32 * 200, 8 * 200, DONE.len()]);
        assert_eq!(&got[2][..], DONE);
        let got = frames(body(32, 1, FLAWED_DONE));
        assert_eq!(got.len(), 2);
        assert_eq!(&got[1][..], b"data:\n[DONE]\n\n");
    }
}
