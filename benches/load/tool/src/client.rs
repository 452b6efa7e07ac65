//! The client: C concurrent HTTP/1.1 streams (one connection each), opened at most
//! `--connect-concurrency` at a time; events framed incrementally (an event ends at a
//! blank line, LF line ends, as the upstream and every proxy measured here send them);
//! the latency of each event is its receive time minus the send time it carries.
//!
//! Phases: connect (every stream has its response headers, or failed; bounded by
//! `--connect-timeout`), warm-up (events not recorded), the measured window. With
//! `--watch-pid`, the proxy's CPU time and RSS are read from `/proc` before the first
//! connection and at both edges of the window. One JSON line goes to stdout.

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
use tokio::task::LocalSet;
use tokio::time::{sleep, timeout, Instant};

use crate::clock::{clock_ticks_per_sec, monotonic_ns};
use crate::event;
use crate::json::Line;
use crate::procfs::{self, Sample};

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
}

struct Shared {
    phase: Cell<Phase>,
    stats: RefCell<Stats>,
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
        && args.duration <= 3600.0
        && args.warmup >= 0.0
        && args.warmup <= 600.0)
    {
        return Err("--duration must be in (0, 3600] and --warmup in [0, 600]".into());
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
        }),
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

/// One stream, from connect to the end of the run.
async fn stream(target: Rc<Target>, shared: Rc<Shared>, gate: Rc<Semaphore>) {
    let settle = |ok: bool, status_failure: bool| {
        let mut stats = shared.stats.borrow_mut();
        stats.settled += 1;
        match (ok, status_failure) {
            (true, _) => stats.connected += 1,
            (false, true) => stats.status_failures += 1,
            (false, false) => stats.connect_failures += 1,
        }
    };
    let Ok(permit) = gate.acquire().await else {
        return;
    };
    let opened = timeout(Duration::from_secs(10), open(&target)).await;
    drop(permit);
    let mut body = match opened {
        Ok(Ok(body)) => body,
        Ok(Err(Open::Status)) => return settle(false, true),
        Ok(Err(Open::Io)) | Err(_) => return settle(false, false),
    };
    settle(true, false);

    let mut pending: Vec<u8> = Vec::new();
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(_)) | None => break,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = monotonic_ns();
        let phase = shared.phase.get();
        let measuring = phase == Phase::Measuring;
        let mut stats = shared.stats.borrow_mut();
        let mut on_event = |event: &[u8]| {
            if !measuring {
                return;
            }
            match event::stamp(event) {
                Some(sent) if sent <= now => {
                    stats.events += 1;
                    stats.bytes += event.len() as u64;
                    stats
                        .latency_us
                        .saturating_record(((now - sent) / 1000).max(1));
                }
                Some(_) => stats.bad_stamps += 1,
                None => stats.other_events += 1,
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
    if shared.phase.get() != Phase::Done {
        shared.stats.borrow_mut().stream_errors += 1;
    }
}

enum Open {
    Io,
    Status,
}

async fn open(target: &Target) -> Result<hyper::body::Incoming, Open> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|_| Open::Io)?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|_| Open::Io)?;
    tokio::task::spawn_local(connection);
    let request = Request::builder()
        .method(target.method.clone())
        .uri(target.path.as_str())
        .header(HOST, target.host.clone())
        .header(ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|_| Open::Io)?;
    let response = sender.send_request(request).await.map_err(|_| Open::Io)?;
    if response.status() != hyper::StatusCode::OK {
        return Err(Open::Status);
    }
    Ok(response.into_body())
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
