//! `sse-load`: the load tool of `benches/load/run.sh` and `benches/load/soak.sh`.
//!
//! - `upstream`: an SSE server whose every event carries its send time (CLOCK_MONOTONIC,
//!   nanoseconds) in its data, paced per stream or as fast as the reader takes them;
//!   streams are endless, or end with `[DONE]` after a number of events (`--end-after`).
//! - `client`: opens C concurrent streams, frames events incrementally, records per-event
//!   latency (receive time - send time) in an HDR histogram, counts events/s and failures,
//!   optionally samples a proxy's CPU time and RSS from `/proc` at the window's edges, and
//!   prints one JSON line. With `--reopen` (and `--close-after`) streams churn: each one
//!   that ends is replaced, so C stay open while connections come and go.
//! - `report`: medians of the client's JSON lines over rounds, as markdown tables.
//! - `ports`: free loopback ports for a run.
//!
//! Loopback only: every address is checked to be on 127.0.0.0/8 (or ::1). Every loop is
//! bounded: the upstream exits after `--max-seconds`, the client after warm-up + window
//! (plus a bounded connect phase).

mod client;
mod clock;
mod event;
mod json;
mod procfs;
mod random;
mod report;
mod upstream;

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sse-load",
    about = "SSE load tool for sse-gateway's side-by-side benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve SSE streams of stamped events on every path (GET or POST).
    Upstream(upstream::Args),
    /// Open concurrent streams and measure per-event latency and throughput.
    Client(client::Args),
    /// Turn client JSON lines into the markdown results table (medians over rounds).
    Report(report::Args),
    /// Print N free TCP ports on 127.0.0.1, space-separated.
    Ports {
        #[arg(default_value_t = 1)]
        n: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Upstream(args) => upstream::run(args),
        Command::Client(args) => client::run(args),
        Command::Report(args) => report::run(args),
        Command::Ports { n } => ports(n),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sse-load: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `n` listeners on port 0 at once (so the ports differ), prints their ports and
/// closes them. A port could be taken by someone else before it is used; on a machine
/// running only this benchmark that does not happen.
fn ports(n: usize) -> Result<(), String> {
    let listeners = (0..n.min(64))
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    println!("{}", ports.join(" "));
    Ok(())
}

/// Refuses anything but a loopback address: this tool only ever talks to this machine.
pub fn require_loopback(addr: &SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address; this tool only runs on 127.0.0.1"
        ))
    }
}
