//! The `sse-gateway` command line: `run` (the default), `check` and `rewrite`, and
//! their exit codes.
//!
//! Exit codes: 0 success; 1 the config is invalid (every problem printed as
//! `FILE:LINE:COL: message`), or `rewrite` got an unknown route or unreadable input;
//! 2 the command line is wrong; 3 the gateway could not start or failed while running
//! (a listen address in use, say), or a command's output could not be written.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod generate;
mod replay;
mod signals;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigErrors, GatewayConfig, LogConfig, LogFormat};
use crate::gateway;
use crate::reload;
use crate::shutdown::{DrainPlan, StopNow};

/// A reverse-proxy sidecar for assistant / LLM services that stream Server-Sent Events.
///
/// Routes paths to upstreams as gateway.yaml says, streams every response through
/// without buffering, and turns GET requests from browsers' `EventSource` into the
/// POST requests assistant APIs expect.
#[derive(Debug, Parser)]
#[command(name = "sse-gateway", version = VERSION, about, long_about)]
#[command(
    after_help = "Exit codes: 0 ok, 1 invalid config, 2 bad command line, 3 runtime failure."
)]
pub(crate) struct Cli {
    // An attribute, not a doc comment: clap prints a doc comment's backticks as they
    // are, and the man page does not show the `env` line.
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        help = "The config file; without the flag, the file the environment variable SSE_GATEWAY_CONFIG names, when it is set and not empty",
        env = "SSE_GATEWAY_CONFIG",
        default_value = "gateway.yaml"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway (the default when no command is given).
    Run,
    /// Validate the config file and exit: 0 when valid, 1 with every problem listed.
    Check {
        /// A `${VAR}` that is not set is a warning, not an error (for checking a
        /// config away from its secrets, as in CI); one whose value must be checked,
        /// such as a url, is still an error.
        #[arg(long)]
        env_optional: bool,
    },
    /// Run one route's stream pipeline over a captured stream (a file, or stdin):
    /// the repaired stream goes to stdout, rule hits and the outcome to stderr.
    Rewrite {
        /// The route whose `stream` section to apply.
        #[arg(long, value_name = "NAME")]
        route: String,
        /// The captured upstream stream; `-` or nothing reads stdin.
        #[arg(value_name = "CAPTURE")]
        capture: Option<PathBuf>,
    },
    /// Print the completion script for a shell to stdout.
    ///
    /// Such as `sse-gateway completions bash > /etc/bash_completion.d/sse-gateway`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    ///
    /// Such as `sse-gateway man > /usr/local/share/man/man1/sse-gateway.1`.
    Man,
}

/// `--version`: the crate's version and the git commit it was built from ("unknown"
/// outside a git checkout), so a bug report names the exact build.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SSE_GATEWAY_COMMIT"),
    ")"
);

/// Exit code for an invalid config.
pub(crate) const EXIT_INVALID_CONFIG: u8 = 1;
/// Exit code when the gateway cannot start or fails while running.
pub(crate) const EXIT_RUNTIME: u8 = 3;

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    // Set but empty (a template that rendered nothing) names no file: unset, so the
    // default applies, rather than clap's "a value is required for --config" about a
    // flag nobody gave. Done before any thread starts.
    if std::env::var_os("SSE_GATEWAY_CONFIG").is_some_and(|value| value.is_empty()) {
        std::env::remove_var("SSE_GATEWAY_CONFIG");
    }
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { env_optional } => check(&cli.config, env_optional),
        Command::Run => run(&cli.config),
        Command::Rewrite { route, capture } => rewrite(&cli.config, &route, capture.as_deref()),
        Command::Completions { shell } => {
            // Generated whole first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            generate::completions(shell, &mut script);
            written("completions", std::io::stdout().lock().write_all(&script))
        }
        Command::Man => {
            let mut page = Vec::new();
            let made = generate::man(&mut page);
            written(
                "man",
                made.and_then(|()| std::io::stdout().lock().write_all(&page)),
            )
        }
    }
}

/// The exit code after `command` wrote its output. A reader that stopped early
/// (`| head`) did not want the rest: no failure, and nothing to say.
fn written(command: &str, result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sse-gateway {command}: cannot write the output: {error}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn load(path: &std::path::Path) -> Result<GatewayConfig, ExitCode> {
    load_bytes(path).map(|(config, _)| config)
}

/// The config, and the bytes it was read from (the reload watcher's reference).
fn load_bytes(path: &std::path::Path) -> Result<(GatewayConfig, Vec<u8>), ExitCode> {
    GatewayConfig::load_with_content(path).map_err(|errors| invalid(&errors))
}

/// [`GatewayConfig::load_offline`]: a config for tools that need none of its secrets.
fn load_offline(path: &std::path::Path) -> Result<(GatewayConfig, ConfigErrors), ExitCode> {
    GatewayConfig::load_offline(path)
        .map(|(config, warnings)| {
            let source = config.source.clone();
            (
                config,
                ConfigErrors {
                    source,
                    errors: warnings,
                },
            )
        })
        .map_err(|errors| invalid(&errors))
}

/// Prints every problem, and their count; the exit code for an invalid config.
fn invalid(errors: &ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    let n = errors.errors.len();
    eprintln!("{} in {}", plural(n, "problem"), errors.source);
    ExitCode::from(EXIT_INVALID_CONFIG)
}

fn plural(n: usize, word: &str) -> String {
    match n {
        1 => format!("1 {word}"),
        n => format!("{n} {word}s"),
    }
}

fn check(path: &std::path::Path, env_optional: bool) -> ExitCode {
    let loaded = if env_optional {
        load_offline(path)
    } else {
        load(path).map(|config| {
            let source = config.source.clone();
            (
                config,
                ConfigErrors {
                    source,
                    errors: Vec::new(),
                },
            )
        })
    };
    match loaded {
        Ok((config, warnings)) => {
            if !warnings.errors.is_empty() {
                eprintln!("{warnings}");
            }
            let warned = match warnings.errors.len() {
                0 => String::new(),
                n => format!(", {}", plural(n, "warning")),
            };
            let line = format!(
                "{}: ok ({}, {}{warned})\n",
                config.source,
                plural(config.routes.len(), "route"),
                plural(config.upstreams.len(), "upstream")
            );
            written("check", std::io::stdout().write_all(line.as_bytes()))
        }
        Err(code) => code,
    }
}

fn rewrite(config: &Path, route: &str, capture: Option<&Path>) -> ExitCode {
    // The stream section is all it runs: the secrets in headers need not be set.
    let config = match load_offline(config) {
        Ok((config, _)) => config,
        Err(code) => return code,
    };
    let fail = |message: String| {
        eprintln!("sse-gateway rewrite: {message}");
        ExitCode::from(EXIT_INVALID_CONFIG)
    };
    let Some(route_config) = config.route(route) else {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        return fail(format!(
            "unknown route \"{route}\" (routes: {})",
            names.join(", ")
        ));
    };
    let Some(stream) = &route_config.stream else {
        return fail(format!(
            "route \"{route}\" has no `stream` section: its streams pass through untouched"
        ));
    };
    let input = match capture {
        None => read_stdin(),
        Some(path) if path == Path::new("-") => read_stdin(),
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
    };
    let input = match input {
        Ok(input) => input,
        Err(message) => return fail(message),
    };
    let report = replay::rewrite(route, stream, input.into(), &mut std::io::stdout().lock());
    match report {
        Ok(report) => {
            eprint!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => written("rewrite", Err(error)),
    }
}

fn read_stdin() -> Result<Vec<u8>, String> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    Ok(input)
}

fn run(path: &std::path::Path) -> ExitCode {
    let (config, loaded) = match load_bytes(path) {
        Ok(loaded) => loaded,
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
    let code = runtime.block_on(async move {
        let hangup = reload::hangup_signal();
        let mut stop_signals = match signals::StopSignals::install() {
            Ok(stop_signals) => stop_signals,
            Err(error) => {
                eprintln!("sse-gateway: cannot install the signal handlers: {error}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let running = match gateway::start(config).await {
            Ok(running) => running,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                eprintln!("sse-gateway: {error}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let watcher = tokio::spawn(reload::watch(
            path.to_owned(),
            running.gateway().clone(),
            hangup,
            loaded,
        ));
        let first = stop_signals.next().await;
        watcher.abort();
        // The settings of the config in force, reloads included.
        let config = running.gateway().config();
        let plan = DrainPlan {
            drain: config.drain_timeout,
            final_scrape_wait: config.shutdown.final_scrape_wait,
            stop_now: StopNow::new(),
        };
        tracing::info!(signal = first.name(), drain = ?plan.drain, "shutting down");
        // A second signal of either kind cuts the drain short.
        let stop_now = plan.stop_now.clone();
        let second = tokio::spawn(async move {
            let signal = stop_signals.next().await;
            tracing::warn!(signal = signal.name(), "second stop signal: stopping now");
            stop_now.request();
        });
        running.stop(plan).await;
        second.abort();
        tracing::info!("stopped");
        ExitCode::SUCCESS
    });
    // Dropping the runtime would wait for every blocking task, such as a reload still
    // parsing a pathological file: the stop time must not depend on one.
    runtime.shutdown_timeout(RUNTIME_STOP);
    code
}

/// How long the runtime's blocking tasks get at exit (see [`run`]).
const RUNTIME_STOP: std::time::Duration = std::time::Duration::from_millis(200);

/// `RUST_LOG`, when set, wins over `log.level`.
fn init_logging(log: &LogConfig) {
    // `RUST_LOG` wins, but is held to `log.level`'s rules: `RUST_LOG=inof` is a valid
    // filter that would silence every line, errors included, without a word.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let level = match from_env.map(|v| (crate::config::check_log_filter(&v), v)) {
        Some((Ok(()), from_env)) => from_env,
        Some((Err(problem), from_env)) => {
            let fallback = &log.level;
            eprintln!("sse-gateway: RUST_LOG is not used: invalid log level \"{from_env}\": {problem}; logging at log.level \"{fallback}\" instead");
            log.level.clone()
        }
        None => log.level.clone(),
    };
    let filter = EnvFilter::new(&level);
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
