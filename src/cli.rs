//! The `sse-gateway` command line: `run` (the default) and `check`, and their exit
//! codes.
//!
//! Exit codes: 0 success; 1 the config is invalid (every problem printed as
//! `FILE:LINE:COL: message`); 2 the command line is wrong; 3 the gateway could not
//! start or failed while running (a listen address in use, say).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{GatewayConfig, LogConfig, LogFormat};
use crate::gateway;

/// How long open connections get to finish after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A reverse-proxy sidecar for assistant / LLM services that stream Server-Sent Events.
///
/// Routes paths to upstreams as gateway.yaml says, streams every response through
/// without buffering, and turns GET requests from browsers' EventSource into the
/// POST requests assistant APIs expect.
#[derive(Debug, Parser)]
#[command(name = "sse-gateway", version, about, long_about)]
#[command(
    after_help = "Exit codes: 0 ok, 1 invalid config, 2 bad command line, 3 runtime failure."
)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        default_value = "gateway.yaml"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default when no command is given).
    Run,
    /// Validate the config file and exit: 0 when valid, 1 with every problem listed.
    Check,
}

/// Exit code for an invalid config.
pub const EXIT_INVALID_CONFIG: u8 = 1;
/// Exit code when the gateway cannot start or fails while running.
pub const EXIT_RUNTIME: u8 = 3;

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Run => run(&cli.config),
    }
}

fn load(path: &std::path::Path) -> Result<GatewayConfig, ExitCode> {
    GatewayConfig::load(path).map_err(|errors| {
        eprintln!("{errors}");
        let n = errors.errors.len();
        eprintln!(
            "{n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            errors.source
        );
        ExitCode::from(EXIT_INVALID_CONFIG)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} routes, {} upstreams)",
                config.source,
                config.routes.len(),
                config.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(async move {
        let running = match gateway::start(config).await {
            Ok(running) => running,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                eprintln!("sse-gateway: {error}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        shutdown_signal().await;
        tracing::info!(grace = ?SHUTDOWN_GRACE, "shutting down");
        running.shutdown(SHUTDOWN_GRACE).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on Ctrl-C (an operator at a terminal) or SIGTERM (Kubernetes stopping
/// the pod).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `RUST_LOG`, when set, wins over `log.level`.
fn init_logging(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if let Err(error) = result {
        eprintln!("cannot set up logging: {error}");
    }
}
