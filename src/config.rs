//! The validated configuration: what `gateway.yaml` means once every check has passed.
//!
//! Loading is two stages, as in Vector: `raw` mirrors the file for serde, and
//! `validate` turns it into the runtime types below while collecting *every* problem
//! (`gateway.yaml:LINE:COL: message`), so an operator fixes a file in one pass. Nothing
//! here binds a socket or starts a task: `sse-gateway check` runs exactly this code.

mod ca_file;
mod env;
mod locate;
pub(crate) mod raw;
mod show;
mod traffic;
mod units;
mod validate;

use validate::MissingEnv;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};

use crate::rewrite::Pipeline;
use crate::trusted_proxies::TrustedProxies;

pub(crate) use crate::router::PathMatch;

pub(crate) use ca_file::add_ca_file;
pub(crate) use locate::Position;
pub(crate) use raw::{BodyMode, LogFormat, OnUnknown, OnUpstreamEof, ResumeStore, StreamUsage};
pub(crate) use units::HumanDuration;
pub(crate) use validate::check_filter as check_log_filter;

pub use traffic::{
    Balance, EndpointConfig, HealthConfig, LimitsConfig, PerClientLimit, RetryConfig, RetryOn,
};

/// Defaults for keys an operator may leave out, in one place so the README can cite them.
pub mod defaults {
    use std::time::Duration;

    /// Public listener.
    pub const LISTEN: &str = "0.0.0.0:8080";
    /// Metrics and health: loopback only unless the operator says otherwise.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:8079";
    /// Time to establish a TCP (and TLS) connection to an upstream.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Time from sending a request until the upstream's response headers arrive.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    /// The demo upstream's pause between tokens.
    pub const DEMO_TOKEN_INTERVAL: Duration = Duration::from_millis(80);
    /// `log.level` when neither the file nor `RUST_LOG` sets one.
    pub const LOG_LEVEL: &str = "info";
    /// Largest event the framer holds before ending the stream with `oversize`.
    pub const MAX_EVENT_SIZE: u64 = 1 << 20;
    /// No data from the upstream for this long: the stream counts as stuck.
    pub const STUCK_AFTER: Duration = Duration::from_secs(30);
    /// No data from the upstream for this long: the stream is ended.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Nothing sent downstream for this long: a `: keep-alive` comment is sent.
    pub const HEARTBEAT: Duration = Duration::from_secs(15);
    /// Largest request body a route forwards; larger ones get 413.
    pub const MAX_BODY_SIZE: u64 = 10 << 20;
    /// Longest pause in a client's request body before it gets 408: as long as a
    /// client has for its request headers.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
    /// Hard cap on a stream's life.
    pub const MAX_DURATION: Duration = Duration::from_secs(30 * 60);
    /// After SIGTERM, how long open streams may run before they are ended.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// After the drain, the longest wait for Prometheus's next scrape (which carries
    /// the drain's outcomes): one usual scrape interval (10s to 15s) at most.
    pub const FINAL_SCRAPE_WAIT: Duration = Duration::from_secs(10);
    /// `retry.attempts`: the first request and one more, on another endpoint.
    pub const RETRY_ATTEMPTS: u32 = 2;
    /// `retry.max_body`: request bodies kept for another attempt.
    pub const RETRY_MAX_BODY: u64 = 1 << 20;
    /// `health.failures`: failures in a row that take an endpoint out.
    pub const HEALTH_FAILURES: u32 = 3;
    /// `health.cooldown`: how long an endpoint that is out is skipped.
    pub const HEALTH_COOLDOWN: Duration = Duration::from_secs(30);
    /// How long a dropped stream waits for its client, and a finished one stays
    /// resumable: longer than `EventSource`'s reconnect delay (3 s) plus a slow network.
    pub const RESUME_WINDOW: Duration = Duration::from_secs(30);
    /// A resumable stream's replay buffer: a long answer's events, with room to spare.
    pub const RESUME_MAX_BYTES: u64 = 1 << 20;
    /// Detached streams a route keeps at most; beyond, a disconnect cancels.
    pub const RESUME_MAX_DETACHED: usize = 1000;
    /// The request header whose keyed hash a resume must match.
    pub const RESUME_CREDENTIAL_HEADER: &str = "authorization";
}

/// A complete, valid configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it came from, for messages.
    pub source: String,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// After SIGTERM or SIGINT, how long open streams may run before they are ended.
    pub drain_timeout: Duration,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// In file order; the router orders them by specificity.
    pub routes: Vec<RouteConfig>,
    /// State shared between replicas (`state.redis`).
    pub state: StateConfig,
    /// Key paths whose values came from `${VAR}` substitution, to redact when shown.
    pub from_environment: BTreeSet<String>,
    /// `telemetry.otlp`: traces, off when absent.
    pub otlp: Option<OtlpConfig>,
    /// Peers whose `X-Forwarded-Proto` and `X-Forwarded-Host` go upstream as sent.
    pub trusted_proxies: TrustedProxies,
}

/// `telemetry.otlp`, resolved: the file's keys, else the standard `OTEL_*` variables,
/// else the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Where spans are sent: `endpoint` with `/v1/traces` appended (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is).
    pub traces_url: String,
    /// Sent with every export (an API key); the exporter adds
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS` over them.
    pub headers: BTreeMap<String, String>,
    /// The share of new traces recorded, 0 to 1; a client's sampled flag wins.
    pub sample_ratio: f64,
    pub service_name: String,
}

/// The top-level `state` section.
#[derive(Debug, Clone, Default)]
pub struct StateConfig {
    /// `state.redis`: where `resume.store: redis` keeps its streams.
    pub redis: Option<RedisTarget>,
}

/// A Redis to keep streams in, and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `redis://`, or `rediss://` for TLS.
    pub url: String,
    /// `tls.ca_file`: a PEM file of the CA certificates that verify a `rediss://`
    /// server, in place of the built-in public roots (checked to hold some).
    pub ca_file: Option<std::path::PathBuf>,
}

/// The `shutdown` section: how a stop ends, after `drain_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// The longest wait for a final metrics scrape after the drain, taken only when
    /// `/metrics` was scraped in the last minute; `0` never waits.
    pub final_scrape_wait: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> ShutdownConfig {
        ShutdownConfig {
            final_scrape_wait: defaults::FINAL_SCRAPE_WAIT,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub target: UpstreamTarget,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    /// The servers behind the upstream, in priority order; one for a `url`
    /// (named `default`), none for the demo.
    pub endpoints: Vec<EndpointConfig>,
    pub balance: Balance,
    pub health: HealthConfig,
}

#[derive(Debug, Clone)]
pub enum UpstreamTarget {
    /// `http://` or `https://` with an authority, and a base path (`""` or `/base`
    /// without a trailing slash) that upstream request paths are appended to;
    /// `ca_file` adds trusted CA certificates (PEM) for `https://`.
    Url {
        uri: Uri,
        base_path: String,
        ca_file: Option<std::path::PathBuf>,
    },
    /// The built-in flawed assistant upstream.
    Demo { token_interval: Duration },
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Also the `route` label of every metric: validated to be short and plain.
    pub name: String,
    pub path: PathMatch,
    /// `None` accepts every method.
    pub methods: Option<Vec<Method>>,
    pub upstream: String,
    pub request: RequestPlan,
    /// How `text/event-stream` responses are handled; `None` passes them through
    /// untouched, like any other response.
    pub stream: Option<StreamConfig>,
    /// Which browser origins may read the route's responses; `None`: no CORS headers.
    pub cors: Option<CorsConfig>,
    /// Header changes on every response of the route (the upstream's and the gateway's).
    pub response: ResponsePlan,
    /// How many requests the route takes at once; `None`: no limit.
    pub limits: Option<LimitsConfig>,
    /// When a request is tried again on another endpoint; `None`: never.
    pub retry: Option<RetryConfig>,
}

/// A route's `cors` section, validated: the gateway answers preflights itself and
/// adds the `Access-Control-*` headers to every response of the route.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub allow_origins: AllowOrigins,
    /// With credentials the exact origin is echoed (never `*`), with
    /// `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
    /// Request headers a preflight may ask for.
    pub allow_headers: Vec<HeaderName>,
    /// `Access-Control-Max-Age`; `None` leaves it to the browser (5 s in Chromium).
    pub max_age: Option<Duration>,
}

/// The origins a CORS route lets read its responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowOrigins {
    /// `*`: any origin, only without credentials (validation refuses the pair).
    Any,
    /// Serialized origins (`scheme://host[:port]`), lowercase.
    List(Vec<String>),
}

/// Header changes on a route's responses, applied after the gateway's own.
#[derive(Debug, Clone, Default)]
pub struct ResponsePlan {
    /// Set (replacing any value from the upstream), in file order.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
}

/// A route's `stream` section: the rewrite pipeline and the supervision clocks.
/// A clock set to `0` is off.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The route's rules and terminator, compiled once when the file is validated.
    pub pipeline: Arc<Pipeline>,
    pub max_event_size: usize,
    pub stuck_after: Duration,
    pub idle_timeout: Duration,
    pub heartbeat: Duration,
    pub max_duration: Duration,
    /// `openai-chat` only: whether the gateway asks the upstream for token usage.
    pub usage: StreamUsage,
    /// Resumable streams; `None`: a reconnect is a new request, as it always was.
    pub resume: Option<ResumeConfig>,
}

/// A stream section's `resume`, validated.
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    /// How long a detached stream waits for its client, and a finished one stays
    /// resumable.
    pub window: Duration,
    /// The replay buffer's bound; the oldest events go first.
    pub max_bytes: usize,
    pub store: ResumeStore,
    pub on_unknown: OnUnknown,
    /// Detached streams the route keeps at most.
    pub max_detached: usize,
    /// The header whose keyed hash a resume must present again (lowercase).
    pub credential_header: HeaderName,
}

/// How a matched request is turned into the upstream request.
#[derive(Debug, Clone, Default)]
pub struct RequestPlan {
    /// Replaces the matched part of the path; the rest is kept.
    pub path_prefix: Option<String>,
    pub method: Option<Method>,
    pub body: BodyMode,
    /// Request bodies larger than this are refused with 413.
    pub max_body_size: u64,
    /// The longest the client's body may stop arriving before it is refused with 408;
    /// `0` is no limit.
    pub body_timeout: Duration,
    /// Set (replacing any value from the client), in file order.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
}

fn too_large() -> String {
    format!(
        "the file goes past {} MiB here, the most a config may have: split out what is generated, or trim it",
        MAX_FILE_SIZE >> 20
    )
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// The key path (`routes[1].upstream`), empty for the whole file.
    pub path: String,
    pub message: String,
}

/// Every problem found in a config file; Display prints one `FILE:LINE:COL: message`
/// line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.source)?;
            if let Some(Position { line, column }) = error.position {
                write!(f, ":{line}:{column}")?;
            }
            if !error.path.is_empty() {
                write!(f, ": {}", error.path)?;
            }
            write!(f, ": {}", error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The largest config file the gateway reads. A real `gateway.yaml` is a few KiB; a
/// thousand routes with rules fit in well under 1 MiB. The bound keeps a runaway
/// generated file from tying up a reload for seconds.
pub(crate) const MAX_FILE_SIZE: usize = 4 << 20;

/// Why the config file could not be read at all: the file system's problem (missing
/// file, no permission, out of file descriptors), not the file's.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the config file: {0}")]
pub struct ReadError(#[from] pub std::io::Error);

impl GatewayConfig {
    /// Reads and validates a config file, with `${VAR}` taken from the process
    /// environment.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigErrors> {
        Self::load_with_content(path).map(|(config, _)| config)
    }

    /// [`GatewayConfig::load`], also returning the bytes read (what a reload compares
    /// the file with).
    pub fn load_with_content(path: &Path) -> Result<(GatewayConfig, Vec<u8>), ConfigErrors> {
        let (source, bytes) = Self::read_for(path)?;
        let config = Self::from_bytes(&bytes, &source, &|name| std::env::var(name).ok())?;
        Ok((config, bytes))
    }

    /// Loads a config for offline work (`check --env-optional`, `rewrite`): a `${VAR}`
    /// that is not set is a warning, returned beside the config, unless the value it
    /// stands in is itself checked (a url, a size). Such a config is never run.
    pub fn load_offline(path: &Path) -> Result<(GatewayConfig, Vec<ConfigError>), ConfigErrors> {
        let (source, bytes) = Self::read_for(path)?;
        let env = |name: &str| std::env::var(name).ok();
        Self::from_bytes_with(&bytes, &source, &env, MissingEnv::Warning)
    }

    /// The file's name as messages give it, and its bytes; a read error is the
    /// file's one problem.
    fn read_for(path: &Path) -> Result<(String, Vec<u8>), ConfigErrors> {
        let source = path.display().to_string();
        match Self::read(path) {
            Ok(bytes) => Ok((source, bytes)),
            Err(error) => Err(ConfigErrors {
                source,
                errors: vec![ConfigError {
                    position: None,
                    path: String::new(),
                    message: error.to_string(),
                }],
            }),
        }
    }

    /// The file's bytes, at most one past `MAX_FILE_SIZE` (enough to tell that it
    /// is too large; [`GatewayConfig::from_bytes`] says so).
    pub fn read(path: &Path) -> Result<Vec<u8>, ReadError> {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_FILE_SIZE as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Validates a config file's bytes: UTF-8, at most `MAX_FILE_SIZE`.
    pub fn from_bytes(
        bytes: &[u8],
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, ConfigErrors> {
        Self::from_bytes_with(bytes, source, env, MissingEnv::Error).map(|(config, _)| config)
    }

    fn from_bytes_with(
        bytes: &[u8],
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
        missing_env: MissingEnv,
    ) -> Result<(GatewayConfig, Vec<ConfigError>), ConfigErrors> {
        let located = |at: usize, message: String| ConfigErrors {
            source: source.to_owned(),
            errors: vec![ConfigError {
                position: Some(Position::of_offset(bytes, at)),
                path: String::new(),
                message,
            }],
        };
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse_with(text, source, env, missing_env),
            Err(_) if bytes.len() > MAX_FILE_SIZE => Err(located(MAX_FILE_SIZE, too_large())),
            Err(error) => Err(located(
                error.valid_up_to(),
                "invalid UTF-8 here: save the file as UTF-8".to_owned(),
            )),
        }
    }

    /// Validates config text; `source` names it in messages and `env` answers `${VAR}`.
    pub fn parse(
        text: &str,
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, ConfigErrors> {
        Self::parse_with(text, source, env, MissingEnv::Error).map(|(config, _)| config)
    }

    fn parse_with(
        text: &str,
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
        missing_env: MissingEnv,
    ) -> Result<(GatewayConfig, Vec<ConfigError>), ConfigErrors> {
        let refuse = |position: Position, message: String| ConfigErrors {
            source: source.to_owned(),
            errors: vec![ConfigError {
                position: Some(position),
                path: String::new(),
                message,
            }],
        };
        if text.len() > MAX_FILE_SIZE {
            let at = Position::of_offset(text.as_bytes(), MAX_FILE_SIZE);
            return Err(refuse(at, too_large()));
        }
        // A byte order mark, as editors on Windows write: YAML allows one at the start,
        // but the loader takes it for a second document.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        match locate::Locations::index(text) {
            Ok(locations) => validate::validate(text, locations, source, env, missing_env),
            Err(at) => Err(refuse(
                at,
                format!(
                    "mappings and lists nest deeper than {} levels here (a gateway.yaml needs 7): check the indentation and brackets",
                    locate::MAX_DEPTH
                ),
            )),
        }
    }

    /// A config with no routes: what serves before the first config is applied.
    pub fn empty() -> GatewayConfig {
        let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
        GatewayConfig {
            source: String::new(),
            listen: unspecified,
            admin_listen: unspecified,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            shutdown: ShutdownConfig::default(),
            log: LogConfig {
                format: LogFormat::Pretty,
                level: defaults::LOG_LEVEL.to_owned(),
            },
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            state: StateConfig::default(),
            from_environment: BTreeSet::new(),
            otlp: None,
            trusted_proxies: TrustedProxies::default(),
        }
    }

    /// The route with this name.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|route| route.name == name)
    }
}
