//! The serde mirror of `gateway.yaml`: every key an operator may write, nothing more.
//!
//! `deny_unknown_fields` everywhere, so a misspelt key is an error and not a silently
//! ignored setting; no `flatten`, which breaks serde_yaml's error locations. Leaf values
//! that have a syntax of their own (durations, sizes) check it in their `Deserialize`.
//! Cross-field checks and conversion to runtime types live in `config::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::HumanDuration;

/// The sections of the top-level mapping; each is deserialized on its own so that one
/// bad section does not hide the errors of the others.
pub const TOP_LEVEL_KEYS: &[&str] = &["listen", "admin", "log", "upstreams", "routes"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub url: Option<String>,
    pub demo: Option<Demo>,
    pub connect_timeout: Option<HumanDuration>,
    pub header_timeout: Option<HumanDuration>,
}

/// The built-in demo upstream's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    /// Pause between tokens; the default imitates a model streaming at ~12 tokens/s.
    pub token_interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Match,
    pub upstream: String,
    #[serde(default)]
    pub request: Request,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub path_prefix: Option<String>,
    pub method: Option<String>,
    pub body: Option<BodyMode>,
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
pub struct Headers {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}
