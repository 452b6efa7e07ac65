//! The SSE upstream: every request (any path, GET or POST) gets a `text/event-stream`
//! response of stamped events, paced at `--events-per-sec` per stream (first event at a
//! random phase, so streams do not all fire in the same millisecond), or with `--fast`
//! as fast as the reader takes them, `--batch` events per write, each stamped when the
//! write is made. One thread (the benchmark pins it to a core); exits after
//! `--max-seconds`.

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
    /// Exit after this many seconds, whatever is open.
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
}

#[derive(Debug)]
struct Config {
    template: Template,
    pace: Option<Duration>,
    batch: usize,
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
        batch: args.batch.clamp(1, 4096),
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
        let phase = period.mul_f64(unit_random());
        let mut interval = tokio::time::interval_at(Instant::now() + phase, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        interval
    });
    let mut response = Response::new(EventBody { config, pace });
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A number in [0, 1), different for each stream (splitmix64 over a counter).
fn unit_random() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// An endless stream of stamped events; it ends when the client goes away.
struct EventBody {
    config: Arc<Config>,
    /// `None` with --fast.
    pace: Option<Interval>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let count = match self.pace.as_mut() {
            Some(interval) => {
                ready!(interval.poll_tick(cx));
                1
            }
            None => self.config.batch,
        };
        let template = &self.config.template;
        let mut out = BytesMut::with_capacity(count * template.len());
        let now = monotonic_ns();
        for _ in 0..count {
            template.write(&mut out, now);
        }
        Poll::Ready(Some(Ok(Frame::data(out.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
