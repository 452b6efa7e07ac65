//! The serde mirror of `gateway.yaml`: every key an operator may write, nothing more.
//!
//! `deny_unknown_fields` everywhere, so a misspelt key is an error and not a silently
//! ignored setting; no `flatten`, which breaks `serde_yaml`'s error locations. Leaf values
//! that have a syntax of their own (durations, sizes) check it in their `Deserialize`.
//! Cross-field checks and conversion to runtime types live in `config::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

pub(crate) use crate::protocol::Protocol;
pub(crate) use crate::rewrite::Scope;

use super::units::{ByteSize, HumanDuration};

/// The sections of the top-level mapping; each is deserialized on its own so that one
/// bad section does not hide the errors of the others.
pub(crate) const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin",
    "drain_timeout",
    "shutdown",
    "log",
    "upstreams",
    "routes",
    "telemetry",
    "state",
    "trusted_proxies",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    pub listen: Option<String>,
}

/// How a stop ends after the drain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Shutdown {
    pub final_scrape_wait: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Log {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The `telemetry` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Telemetry {
    pub otlp: Option<Otlp>,
}

/// `telemetry.otlp`: traces over OTLP/HTTP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Otlp {
    /// The OTLP/HTTP base URL, as in `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub url: Option<String>,
    pub demo: Option<Demo>,
    pub connect_timeout: Option<HumanDuration>,
    pub header_timeout: Option<HumanDuration>,
    pub tls: Option<Tls>,
    /// Instead of `url`: several servers, named.
    pub endpoints: Option<Vec<Endpoint>>,
    pub balance: Option<crate::config::Balance>,
    pub health: Option<Health>,
}

/// TLS settings of an `https://` upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tls {
    /// PEM file of extra CA certificates to trust (a private CA), on top of the
    /// built-in public roots.
    pub ca_file: Option<String>,
}

/// The built-in demo upstream's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Demo {
    /// Pause between tokens; the default imitates a model streaming at ~12 tokens/s.
    pub token_interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Match,
    pub upstream: String,
    #[serde(default)]
    pub request: Request,
    pub stream: Option<Stream>,
    /// Browsers on other origins that may read this route's responses.
    pub cors: Option<Cors>,
    /// Changes to the headers of every response on the route.
    #[serde(default)]
    pub response: RouteResponse,
    /// How many requests the route takes at once.
    pub limits: Option<Limits>,
    /// When a request is tried again on another endpoint.
    pub retry: Option<Retry>,
}

/// A route's `cors` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cors {
    /// Origins such as `https://app.example.com`, or `*` (any, without credentials).
    pub allow_origins: Vec<String>,
    /// Cookies and HTTP auth (`withCredentials`): the exact origin is echoed, never `*`.
    pub allow_credentials: Option<bool>,
    /// Request headers a preflight may ask for, beyond the CORS-safelisted ones.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<HumanDuration>,
}

/// A route's `response` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteResponse {
    #[serde(default)]
    pub headers: Headers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Match {
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    pub path_prefix: Option<String>,
    pub method: Option<String>,
    pub body: Option<BodyMode>,
    pub max_body_size: Option<ByteSize>,
    pub body_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub headers: Headers,
}

/// What the upstream request body is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyMode {
    /// The client's body, streamed through.
    #[default]
    Passthrough,
    /// The query string as a JSON object of strings, for `EventSource` clients that can
    /// only send a GET.
    QueryAsJson,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Headers {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// How `text/event-stream` responses on a route are handled.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stream {
    /// Each rule is deserialized on its own (into [`Rule`]), so every bad rule is
    /// reported, not only the first.
    #[serde(default)]
    pub rules: Vec<serde_yaml::Value>,
    pub terminator: Option<Terminator>,
    /// The assistant protocol of the upstream; `sse` (the generic behaviour) when absent.
    pub protocol: Option<Protocol>,
    pub complete_when: Option<CompleteWhen>,
    pub max_event_size: Option<ByteSize>,
    pub stuck_after: Option<HumanDuration>,
    pub idle_timeout: Option<HumanDuration>,
    pub heartbeat: Option<HumanDuration>,
    pub max_duration: Option<HumanDuration>,
    /// `openai-chat` only: whether the gateway asks the upstream for token usage.
    pub usage: Option<StreamUsage>,
    /// Resumable streams (`Last-Event-ID`); absent: a reconnect is a new request.
    pub resume: Option<Resume>,
}

/// `stream.usage`: where an `openai-chat` route's token usage comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamUsage {
    /// Whatever the client asked for: usage is counted when the client set
    /// `stream_options.include_usage` itself.
    #[default]
    Passthrough,
    /// The gateway adds `stream_options.include_usage: true` to a streaming request
    /// that lacks it, reads the usage chunk, and keeps it from that client.
    Request,
}

/// A stream section's `resume`: a dropped client reconnects into the same answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resume {
    pub window: Option<HumanDuration>,
    pub max_bytes: Option<ByteSize>,
    pub store: Option<ResumeStore>,
    pub on_unknown: Option<OnUnknown>,
    pub max_detached: Option<u64>,
    pub credential_header: Option<String>,
}

/// Where a resumable stream's replay buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeStore {
    /// In this process: a reconnect must reach the same replica.
    #[default]
    Memory,
    /// A Redis Stream per stream key (`state.redis`): any replica can resume.
    Redis,
}

/// What a request with an unknown, expired or foreign id gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknown {
    /// A new upstream request, as without resume.
    #[default]
    Restart,
    /// `204 No Content`, which tells `EventSource` to stop reconnecting.
    Reject,
}

/// The top-level `state` section: shared state between replicas.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct State {
    pub redis: Option<Redis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Redis {
    pub url: String,
    /// For `rediss://`: the CA certificates that verify the server.
    pub tls: Option<Tls>,
}

/// One rule: exactly one of `repair`, `replace`, `drop`. `name` may sit beside the
/// kind or (for `replace` and `drop`) inside it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rule {
    pub repair: Option<Repair>,
    pub replace: Option<Replace>,
    pub drop: Option<Drop>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Repair {
    OrphanLines,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Replace {
    pub pattern: String,
    pub with: String,
    pub scope: Option<Scope>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Drop {
    pub pattern: String,
    pub scope: Option<Scope>,
    pub name: Option<String>,
}

/// What completes an answer on an `sse` route: exactly one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteWhen {
    pub data_matches: Option<String>,
    pub event: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Terminator {
    pub data: Option<String>,
    pub event: Option<String>,
    pub forward: Option<bool>,
    pub on_upstream_eof: Option<OnUpstreamEof>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnUpstreamEof {
    /// Send the terminator when the upstream ends without one.
    Synthesize,
    /// End the response as the upstream did.
    None,
}

/// A route's `limits` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    pub max_streams: Option<u32>,
    pub per_client: Option<PerClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PerClient {
    pub header: String,
    pub max_streams: u32,
}

/// One of an upstream's `endpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Endpoint {
    pub name: String,
    pub url: String,
}

/// An upstream's `health` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Health {
    pub failures: Option<u32>,
    pub cooldown: Option<HumanDuration>,
}

/// A route's `retry` section. `on` takes names and status codes alike
/// (`[connect, 503]`), so its items are read as plain YAML values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Retry {
    pub attempts: Option<u32>,
    pub on: Option<Vec<serde_yaml::Value>>,
    pub max_body: Option<ByteSize>,
}
