//! sse-gateway: a reverse-proxy sidecar for assistant / LLM services that stream
//! Server-Sent Events.
//!
//! # Layout
//! - `admission`: how many requests a route takes at once; the 429 when full.
//! - `admin`: the admin listener: /metrics, /healthz, /readyz, /config.
//! - [`cli`]: the `sse-gateway` command line: run, check, rewrite, completions, man;
//!   exit codes; the stop signals.
//! - [`config`]: `gateway.yaml` -> a validated [`config::GatewayConfig`], every problem
//!   reported with its file position.
//! - [`engine`]: one event stream's life as pure code (sans-I/O): frames, outcome,
//!   closing frames; driven alike by the live body, `rewrite`, fuzz, bench and tests.
//! - [`gateway`]: the composition root; binds the listeners and serves.
//! - `hop_by_hop`: the headers that never cross a proxy.
//! - [`listener`]: accepting and serving connections (HTTP/1 and h2c) for both
//!   listeners: accept backoff, header and idle deadlines, the admin cap, the drain.
//! - `router`: which route owns a request path and method.
//! - `proxy`: the service: route, translate the request, forward, stream back.
//! - [`reload`]: SIGHUP and file changes -> validate -> swap; a bad file keeps the old.
//! - [`upstream`]: pooled clients with timeouts; the built-in demo upstream.
//! - `body`: the streaming response body handed to hyper.
//! - `reply`: the one JSON error shape of everything the gateway says itself.
//! - `access_log`: one log line per finished request.
//! - [`metrics`]: Prometheus families, and per-route handles resolved once.
//! - [`shutdown`]: the drain sequence, and the drain-is-over signal every open
//!   response watches.
//! - `supervise`: the event-stream body: pipeline, clocks, one outcome per stream.
//! - [`rewrite`]: a route's compiled rules and terminator, applied one event at a time.
//! - [`terminator`]: recognising the event that ends a stream, and writing one.
//! - [`sse`]: Server-Sent Events framing and the canonical event writer.
//!
//! How they fit together, from accept to the last byte: `docs/architecture.md`.
pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod admission;
pub(crate) mod body;
pub(crate) mod changes;
pub mod cli;
pub mod config;
pub mod engine;
pub mod gateway;
pub(crate) mod header_list;
pub(crate) mod hop_by_hop;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub(crate) mod proxy;
pub mod reload;
pub(crate) mod reply;
pub(crate) mod request_id;
pub mod resume;
pub mod rewrite;
pub(crate) mod router;
pub mod shutdown;
pub mod sse;
pub(crate) mod supervise;
pub(crate) mod telemetry;
pub mod terminator;
pub mod trusted_proxies;
pub mod upstream;
