//! The client: C concurrent HTTP/1.1 streams (one connection each), opened at most
//! `--connect-concurrency` at a time; events framed incrementally (an event ends at a
//! blank line, LF line ends, as the upstream and every proxy measured here send them);
//! the latency of each event is its receive time minus the send time it carries.
//!
//! Phases: connect (every stream has its response headers, or failed; bounded by
//! `--connect-timeout`), warm-up (events not recorded), the measured window. With
//! `--watch-pid`, the proxy's CPU time and RSS are read from `/proc` before the first
//! connection and at both edges of the window. One JSON line goes to stdout.
//!
//! Churn (the soak): with `--close-after` each stream is closed by the client after a
//! random time, and with `--reopen` every stream that ends (the upstream's terminator,
//! the client's close) or fails is replaced by a new connection, so `--streams` stay
//! open while connections come and go for the whole run. A stream that ends without
//! the terminator, or carries an `event: error`, is a failure.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, ACCEPT, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, LocalSet};
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::clock::{clock_ticks_per_sec, monotonic_ns};
use crate::event;
use crate::json::Line;
use crate::procfs::{self, Sample};
use crate::random;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stream URL, such as http://127.0.0.1:8080/v1/stream (loopback only).
    #[arg(long)]
    url: String,
    /// Concurrent streams.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds after every stream is open before the window starts (events not recorded).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Longest time to open every stream, seconds; streams not open by then count as
    /// failures and the run goes on.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// HTTP method of each stream request.
    #[arg(long, default_value = "GET")]
    method: String,
    /// A process to watch (the proxy): CPU time and RSS from /proc at the window's edges.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Other processes of the benchmark (the upstream): their CPU time is not counted as
    /// other load on the machine.
    #[arg(long = "own-pid")]
    own_pids: Vec<u32>,
    /// KEY=VALUE copied into the JSON line (scenario, target, round...).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Keep --streams open until the run is over: a stream that ends or fails is
    /// replaced by a new connection.
    #[arg(long)]
    reopen: bool,
    /// Close each stream after a random time between S/2 and 3S/2 seconds (mean S),
    /// then open a new one; 0: streams stay open.
    #[arg(long, default_value_t = 0.0, requires = "reopen")]
    close_after: f64,
    /// Print the counters as a JSON line to stderr every S seconds; 0: never.
    #[arg(long, default_value_t = 0.0)]
    progress: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Warmup,
    Measuring,
    Done,
}

struct Stats {
    latency_us: Histogram<u64>,
    /// Stamped events received in the window.
    events: u64,
    /// Bytes of events received in the window.
    bytes: u64,
    /// Events without a stamp (comments, heartbeats) in the window.
    other_events: u64,
    connected: u64,
    settled: u64,
    connect_failures: u64,
    status_failures: u64,
    /// Streams that ended or failed before the run was over.
    stream_errors: u64,
    /// A stamp from the future: the clocks disagree (never on one machine).
    bad_stamps: u64,
    /// Every stream opened (status 200), first connections and reopens.
    opens: u64,
    /// Streams open now.
    open_now: u64,
    /// Streams that ended with the terminator.
    completed: u64,
    /// Streams the client closed (--close-after).
    closed: u64,
    /// `event: error` events received (each one also makes its stream a failure).
    error_events: u64,
}

struct Shared {
    phase: Cell<Phase>,
    stats: RefCell<Stats>,
    reopen: bool,
    /// Mean lifetime of a stream before the client closes it.
    close_after: Option<Duration>,
}

pub fn run(args: Args) -> Result<(), String> {
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| format!("bad --url {}: {e}", args.url))?;
    if uri.scheme_str() != Some("http") {
        return Err("--url must be http://".into());
    }
    let authority = uri.authority().ok_or("--url needs host:port")?.clone();
    let addr: SocketAddr = authority
        .as_str()
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or("no address")?;
    crate::require_loopback(&addr)?;
    let method: Method = args.method.parse().map_err(|_| "bad --method")?;
    if args.streams == 0 || args.streams > 50_000 {
        return Err("--streams must be in 1..=50000".into());
    }
    if !(args.duration > 0.0
        && args.duration <= 86_400.0
        && args.warmup >= 0.0
        && args.warmup <= 600.0)
    {
        return Err("--duration must be in (0, 86400] and --warmup in [0, 600]".into());
    }
    let seconds = 0.0..=86_400.0;
    if !seconds.contains(&args.close_after) || !seconds.contains(&args.progress) {
        return Err("--close-after and --progress must be in [0, 86400]".into());
    }
    let base = match args.watch_pid {
        Some(pid) => Some(procfs::sample(pid)?),
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Connecting),
        stats: RefCell::new(Stats {
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?,
            events: 0,
            bytes: 0,
            other_events: 0,
            connected: 0,
            settled: 0,
            connect_failures: 0,
            status_failures: 0,
            stream_errors: 0,
            bad_stamps: 0,
            opens: 0,
            open_now: 0,
            completed: 0,
            closed: 0,
            error_events: 0,
        }),
        reopen: args.reopen,
        close_after: (args.close_after > 0.0).then(|| Duration::from_secs_f64(args.close_after)),
    });
    let local = LocalSet::new();
    let target = Rc::new(Target {
        addr,
        method,
        path: uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        host: HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
    });
    let window = local.block_on(&runtime, async {
        let started = Instant::now();
        let gate = Rc::new(Semaphore::new(args.connect_concurrency.max(1)));
        for _ in 0..args.streams {
            tokio::task::spawn_local(stream(target.clone(), shared.clone(), gate.clone()));
        }
        if args.progress > 0.0 {
            let every = Duration::from_secs_f64(args.progress);
            tokio::task::spawn_local(progress(shared.clone(), every, started));
        }
        let connect_deadline = started + Duration::from_secs_f64(args.connect_timeout);
        while shared.stats.borrow().settled < args.streams as u64
            && Instant::now() < connect_deadline
        {
            sleep(Duration::from_millis(10)).await;
        }
        let connect_secs = started.elapsed().as_secs_f64();
        shared.phase.set(Phase::Warmup);
        sleep(Duration::from_secs_f64(args.warmup)).await;

        let first = args.watch_pid.map(procfs::sample).transpose()?;
        let ours0 = ours(&args)?;
        let machine0 = procfs::machine()?;
        let t0 = Instant::now();
        shared.phase.set(Phase::Measuring);
        sleep(Duration::from_secs_f64(args.duration)).await;
        shared.phase.set(Phase::Done);
        let window_secs = t0.elapsed().as_secs_f64();
        let last = args.watch_pid.map(procfs::sample).transpose()?;
        let machine1 = procfs::machine()?;
        let ours1 = ours(&args)?;
        // Cores used during the window by processes that are not part of this run.
        let busy = (machine1.0 - machine0.0) as f64;
        let total = (machine1.1 - machine0.1).max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let window_ticks = window_secs * clock_ticks_per_sec() as f64;
        let other = ((busy / total) * cores - (ours1 - ours0) as f64 / window_ticks).max(0.0);
        Ok::<_, String>((connect_secs, window_secs, first, last, other))
    });
    let (connect_secs, window_secs, first, last, other_cores) = window?;

    let stats = shared.stats.borrow();
    let mut line = Line::default();
    for tag in &args.tags {
        let (key, value) = tag.split_once('=').unwrap_or((tag.as_str(), ""));
        line.str(key, value);
    }
    let h = &stats.latency_us;
    let quantile = |q: f64| {
        if h.is_empty() {
            f64::NAN
        } else {
            h.value_at_quantile(q) as f64
        }
    };
    // Streams not open when the connect phase ended count as connect failures.
    let never_settled = args.streams as u64 - stats.settled.min(args.streams as u64);
    let failures =
        stats.connect_failures + stats.status_failures + stats.stream_errors + never_settled;
    line.int("streams", args.streams as u64)
        .int("connected", stats.connected)
        .num("connect_s", connect_secs)
        .num("window_s", window_secs)
        .int("events", stats.events)
        .num("events_per_s", stats.events as f64 / window_secs)
        .num(
            "mib_per_s",
            stats.bytes as f64 / window_secs / (1024.0 * 1024.0),
        )
        .int("other_events", stats.other_events)
        .num("p50_us", quantile(0.50))
        .num("p90_us", quantile(0.90))
        .num("p99_us", quantile(0.99))
        .num("p999_us", quantile(0.999))
        .num(
            "max_us",
            if h.is_empty() {
                f64::NAN
            } else {
                h.max() as f64
            },
        )
        .num("mean_us", if h.is_empty() { f64::NAN } else { h.mean() })
        .int("failures", failures)
        .int("connect_failures", stats.connect_failures + never_settled)
        .int("status_failures", stats.status_failures)
        .int("stream_errors", stats.stream_errors)
        .int("bad_stamps", stats.bad_stamps)
        .int("opens", stats.opens)
        .int("open_at_end", stats.open_now)
        .int("completed", stats.completed)
        .int("closed", stats.closed)
        .int("error_events", stats.error_events)
        .num("other_cores", other_cores);
    if let (Some(pid), Some(base), Some(first), Some(last)) = (args.watch_pid, base, first, last) {
        let hz = clock_ticks_per_sec() as f64;
        let cpu_s = (last.cpu_ticks - first.cpu_ticks) as f64 / hz;
        let sys_s = (last.sys_ticks - first.sys_ticks) as f64 / hz;
        let open = stats.connected.max(1) as f64;
        line.int("proxy_pid", u64::from(pid))
            .int("proxy_threads", last.threads)
            .num("proxy_cpu_s", cpu_s)
            .num("proxy_cpu_share", cpu_s / window_secs)
            .num("proxy_sys_share", sys_s / window_secs)
            .num(
                "proxy_kernel_pct",
                if cpu_s > 0.0 {
                    100.0 * sys_s / cpu_s
                } else {
                    f64::NAN
                },
            )
            .num(
                "proxy_cpu_s_per_m_events",
                if stats.events > 0 {
                    cpu_s / (stats.events as f64 / 1e6)
                } else {
                    f64::NAN
                },
            )
            .int("proxy_rss_base_kib", base.rss_kib)
            .int("proxy_rss_start_kib", first.rss_kib)
            .int("proxy_rss_end_kib", last.rss_kib)
            .num(
                "proxy_rss_per_stream_kib",
                (peak(&first, &last) as f64 - base.rss_kib as f64) / open,
            );
    }
    println!("{}", line.finish());
    // Thousands of open connections need no orderly teardown: the kernel closes them.
    std::process::exit(0);
}

/// CPU ticks of this process, the watched proxy and the other processes of the run.
fn ours(args: &Args) -> Result<u64, String> {
    let mut ticks = procfs::sample(std::process::id())?.cpu_ticks;
    for pid in args.watch_pid.iter().chain(&args.own_pids) {
        ticks += procfs::sample(*pid)?.cpu_ticks;
    }
    Ok(ticks)
}

fn peak(a: &Sample, b: &Sample) -> u64 {
    a.rss_kib.max(b.rss_kib)
}

struct Target {
    addr: SocketAddr,
    method: Method,
    path: String,
    host: HeaderValue,
}

/// One stream slot, from its first connect to the end of the run: one stream, or with
/// --reopen a new one each time the last ended or failed.
async fn stream(target: Rc<Target>, shared: Rc<Shared>, gate: Rc<Semaphore>) {
    let mut first = true;
    loop {
        let Ok(permit) = gate.acquire().await else {
            return;
        };
        let opened = timeout(Duration::from_secs(10), open(&target)).await;
        drop(permit);
        let opened = match opened {
            Ok(result) => result,
            Err(_) => Err(Open::Io),
        };
        {
            let mut stats = shared.stats.borrow_mut();
            // Only first connections settle the connect phase (and count as `connected`,
            // the streams RSS per stream is divided by); failures count on every attempt.
            if first {
                stats.settled += 1;
            }
            match &opened {
                Ok(_) if first => stats.connected += 1,
                Ok(_) => {}
                Err(Open::Status) => stats.status_failures += 1,
                Err(Open::Io) => stats.connect_failures += 1,
            }
            if opened.is_ok() {
                stats.opens += 1;
                stats.open_now += 1;
            }
        }
        first = false;
        let end = match opened {
            Ok((body, connection)) => {
                let end = read(body, &shared).await;
                // Closes the socket now, whether hyper would keep it or not.
                connection.abort();
                shared.stats.borrow_mut().open_now -= 1;
                end
            }
            Err(_) => End::Failed,
        };
        let done = shared.phase.get() == Phase::Done;
        {
            let mut stats = shared.stats.borrow_mut();
            match end {
                End::Terminator => stats.completed += 1,
                End::Closed => stats.closed += 1,
                End::ErrorEvent => stats.stream_errors += 1,
                // The run's end cuts every stream: not a failure.
                End::Eof if done => {}
                End::Eof => stats.stream_errors += 1,
                // Counted above.
                End::Failed => {}
            }
        }
        if !shared.reopen || done {
            return;
        }
        if end == End::Failed {
            // A proxy that refuses connections is not hammered in a tight loop.
            sleep(Duration::from_millis(100)).await;
        }
    }
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The terminator arrived (and no `event: error` before it).
    Terminator,
    /// The client closed it (--close-after).
    Closed,
    /// An `event: error` arrived: the proxy ended the stream with an error.
    ErrorEvent,
    /// The response ended, or the connection broke, without the terminator (or the run
    /// is over).
    Eof,
    /// It never opened.
    Failed,
}

/// Reads a stream until it ends, the client closes it, or the run is over.
async fn read(mut body: hyper::body::Incoming, shared: &Shared) -> End {
    let close_at = shared
        .close_after
        .map(|mean| Instant::now() + mean.mul_f64(random::around(1.0)));
    let mut pending: Vec<u8> = Vec::new();
    let mut end = End::Eof;
    loop {
        let next = match close_at {
            Some(at) => match timeout_at(at, body.frame()).await {
                Ok(next) => next,
                Err(_) => return End::Closed,
            },
            None => body.frame().await,
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(_)) | None => return end,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if shared.phase.get() == Phase::Done {
            return End::Eof;
        }
        let now = monotonic_ns();
        let measuring = shared.phase.get() == Phase::Measuring;
        let mut stats = shared.stats.borrow_mut();
        let mut on_event = |event: &[u8]| match event::kind(event) {
            event::Kind::Stamped(_) | event::Kind::Other if !measuring => {}
            event::Kind::Stamped(sent) if sent <= now => {
                stats.events += 1;
                stats.bytes += event.len() as u64;
                stats
                    .latency_us
                    .saturating_record(((now - sent) / 1000).max(1));
            }
            event::Kind::Stamped(_) => stats.bad_stamps += 1,
            event::Kind::Other => stats.other_events += 1,
            event::Kind::Terminator => {
                if end == End::Eof {
                    end = End::Terminator;
                }
            }
            event::Kind::Error => {
                stats.error_events += 1;
                end = End::ErrorEvent;
            }
        };
        if pending.is_empty() {
            let used = split_events(&data, &mut on_event);
            pending.extend_from_slice(&data[used..]);
        } else {
            pending.extend_from_slice(&data);
            let used = split_events(&pending, &mut on_event);
            pending.drain(..used);
        }
    }
}

/// Prints the counters to stderr every `every` until the run is over.
async fn progress(shared: Rc<Shared>, every: Duration, started: Instant) {
    while shared.phase.get() != Phase::Done {
        sleep(every).await;
        let stats = shared.stats.borrow();
        let mut line = Line::default();
        line.num("t_s", started.elapsed().as_secs_f64())
            .int("open", stats.open_now)
            .int("opens", stats.opens)
            .int("completed", stats.completed)
            .int("closed", stats.closed)
            .int("connect_failures", stats.connect_failures)
            .int("status_failures", stats.status_failures)
            .int("stream_errors", stats.stream_errors)
            .int("error_events", stats.error_events);
        eprintln!("{}", line.finish());
    }
}

enum Open {
    Io,
    Status,
}

/// Opens a stream: its body and its connection's task (aborting it closes the socket).
async fn open(target: &Target) -> Result<(hyper::body::Incoming, JoinHandle<()>), Open> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|_| Open::Io)?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|_| Open::Io)?;
    let connection = tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(target.method.clone())
        .uri(target.path.as_str())
        .header(HOST, target.host.clone())
        .header(ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|_| Open::Io)?;
    let response = sender.send_request(request).await.map_err(|_| Open::Io)?;
    if response.status() != hyper::StatusCode::OK {
        connection.abort();
        return Err(Open::Status);
    }
    Ok((response.into_body(), connection))
}

/// Calls `on_event` for each complete event in `buf` (up to and including its blank
/// line) and returns how many bytes they took.
fn split_events(buf: &[u8], on_event: &mut impl FnMut(&[u8])) -> usize {
    let mut start = 0;
    let mut at = 0;
    while let Some(offset) = buf[at..].iter().position(|&b| b == b'\n') {
        let lf = at + offset;
        if buf.get(lf + 1) == Some(&b'\n') {
            on_event(&buf[start..lf + 2]);
            start = lf + 2;
            at = start;
        } else {
            at = lf + 1;
        }
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_across_reads() {
        let mut got: Vec<Vec<u8>> = Vec::new();
        let used = split_events(b"data: a\n\ndata: b\n", &mut |e| got.push(e.to_vec()));
        assert_eq!(used, 9);
        assert_eq!(got, vec![b"data: a\n\n".to_vec()]);
        let mut rest = b"data: b\n".to_vec();
        rest.extend_from_slice(b"\n: x\n\n");
        let used = split_events(&rest, &mut |e| got.push(e.to_vec()));
        assert_eq!(used, rest.len());
        assert_eq!(got.len(), 3);
    }
}
