//! The validated traffic settings: how many streams a route admits, which endpoints an
//! upstream has and how they are chosen, when an endpoint counts as down, and when a
//! request is tried again on another endpoint.
//!
//! `limits` and `retry` belong to a route (what a route promises its clients: how much
//! it takes, and how hard it tries before an answer starts); `endpoints`, `balance` and
//! `health` belong to an upstream (facts about the servers, shared by every route that
//! uses them).

use std::time::Duration;

use http::{HeaderName, Uri};

/// A route's `limits` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Requests in flight on the route at once; `None`: no route-wide limit.
    pub max_streams: Option<u32>,
    pub per_client: Option<PerClientLimit>,
}

/// `limits.per_client`: requests in flight at once per value of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerClientLimit {
    /// The header that names the client (`authorization`, `x-api-key`).
    pub header: HeaderName,
    pub max_streams: u32,
}

/// One endpoint of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The `endpoint` metric label.
    pub name: String,
    pub uri: Uri,
    /// `""` or `/base` without a trailing slash.
    pub base_path: String,
}

/// How an upstream's endpoints share its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The first available endpoint in the listed order.
    #[default]
    Priority,
    /// Each request starts at the next endpoint in turn.
    RoundRobin,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Priority => "priority",
            Balance::RoundRobin => "round_robin",
        }
    }
}

/// Passive health: an endpoint that failed `failures` times in a row is skipped for
/// `cooldown`, then tried again with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HealthConfig {
    pub failures: u32,
    pub cooldown: Duration,
}

/// A route's `retry` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// The most upstream requests one client request makes, the first included.
    pub attempts: u32,
    pub on: RetryOn,
    /// Request bodies up to this size are kept for another attempt; larger ones (and
    /// bodies of unknown length) are sent once.
    pub max_body: u64,
}

/// What is retried; each flag is one value of `retry.on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(clippy::struct_excessive_bools)]
pub struct RetryOn {
    /// `connect`: the connection was refused or failed.
    pub connect: bool,
    /// `timeout`: no connection within `connect_timeout`, no headers within
    /// `header_timeout`.
    pub timeout: bool,
    /// `429`, `502`, `503`, `504`.
    pub status_429: bool,
    pub status_502: bool,
    pub status_503: bool,
    pub status_504: bool,
    /// `before_content`: the event stream failed, or ended without its answer, before
    /// its first content event reached the client.
    pub before_content: bool,
}

impl RetryOn {
    /// Every value: the default of `retry.on`.
    pub const ALL: RetryOn = RetryOn {
        connect: true,
        timeout: true,
        status_429: true,
        status_502: true,
        status_503: true,
        status_504: true,
        before_content: true,
    };

    /// The values of `retry.on`, as written.
    pub const NAMES: [&'static str; 7] = [
        "connect",
        "timeout",
        "429",
        "502",
        "503",
        "504",
        "before_content",
    ];

    /// Sets the flag `name` stands for; false for an unknown name.
    pub fn set(&mut self, name: &str) -> bool {
        let flag = match name {
            "connect" => &mut self.connect,
            "timeout" => &mut self.timeout,
            "429" => &mut self.status_429,
            "502" => &mut self.status_502,
            "503" => &mut self.status_503,
            "504" => &mut self.status_504,
            "before_content" => &mut self.before_content,
            _ => return false,
        };
        *flag = true;
        true
    }

    /// Whether `name` is set.
    pub fn has(&self, name: &str) -> bool {
        match name {
            "connect" => self.connect,
            "timeout" => self.timeout,
            "429" => self.status_429,
            "502" => self.status_502,
            "503" => self.status_503,
            "504" => self.status_504,
            "before_content" => self.before_content,
            _ => false,
        }
    }

    /// Whether an answer with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        match status {
            429 => self.status_429,
            502 => self.status_502,
            503 => self.status_503,
            504 => self.status_504,
            _ => false,
        }
    }
}

/// The `/config` forms, as an operator would write them.
pub(super) mod shown {
    use serde_json::{json, Value};

    use super::{EndpointConfig, HealthConfig, LimitsConfig, RetryConfig, RetryOn};
    use crate::config::HumanDuration;

    pub(in crate::config) fn limits(limits: &LimitsConfig) -> Value {
        let mut shown = json!({});
        if let Some(max) = limits.max_streams {
            shown["max_streams"] = max.into();
        }
        if let Some(per_client) = &limits.per_client {
            shown["per_client"] = json!({
                "header": per_client.header.as_str(),
                "max_streams": per_client.max_streams,
            });
        }
        shown
    }

    pub(in crate::config) fn retry(retry: &RetryConfig) -> Value {
        let on: Vec<&str> = RetryOn::NAMES
            .into_iter()
            .filter(|name| retry.on.has(name))
            .collect();
        json!({ "attempts": retry.attempts, "on": on, "max_body": retry.max_body })
    }

    pub(in crate::config) fn endpoints(endpoints: &[EndpointConfig]) -> Value {
        endpoints
            .iter()
            .map(|e| json!({ "name": e.name, "url": e.uri.to_string() }))
            .collect()
    }

    pub(in crate::config) fn health(health: HealthConfig) -> Value {
        json!({ "failures": health.failures, "cooldown": HumanDuration(health.cooldown).to_string() })
    }
}
