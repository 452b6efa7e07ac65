//! The effective config as JSON for the admin `/config` endpoint, with secrets
//! redacted: every value of `request.headers.set`, and any value that came from a
//! `${VAR}`.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::protocol::CompleteWhen;
use crate::rewrite::{Rule, TerminatorMatch};

use super::locate::join;
use super::{
    AllowOrigins, CorsConfig, GatewayConfig, HumanDuration, OnUpstreamEof, PathMatch, StreamConfig,
    UpstreamTarget,
};

/// What a redacted value reads as.
pub(crate) const REDACTED: &str = "<redacted>";

fn duration(d: std::time::Duration) -> String {
    HumanDuration(d).to_string()
}

impl GatewayConfig {
    /// The config as an operator would write it, defaults filled in, secrets redacted.
    pub fn redacted_json(&self) -> Value {
        let upstreams: Map<String, Value> = self
            .upstreams
            .iter()
            .map(|(name, upstream)| {
                let mut entry = match &upstream.target {
                    UpstreamTarget::Url { uri, ca_file, .. } => {
                        let mut entry = json!({ "url": uri.to_string() });
                        if let Some(file) = ca_file {
                            entry["tls"] = json!({ "ca_file": file.display().to_string() });
                        }
                        entry
                    }
                    UpstreamTarget::Demo { token_interval } => {
                        json!({ "demo": { "token_interval": duration(*token_interval) } })
                    }
                };
                if upstream.endpoints.len() > 1
                    || upstream.endpoints.iter().any(|e| e.name != "default")
                {
                    entry.as_object_mut().map(|e| e.remove("url"));
                    entry["endpoints"] = super::traffic::shown::endpoints(&upstream.endpoints);
                }
                entry["balance"] = upstream.balance.as_str().into();
                entry["health"] = super::traffic::shown::health(upstream.health);
                entry["connect_timeout"] = duration(upstream.connect_timeout).into();
                entry["header_timeout"] = duration(upstream.header_timeout).into();
                (name.clone(), entry)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|route| {
                let matcher = match &route.path {
                    PathMatch::Prefix(prefix) => json!({ "path_prefix": prefix }),
                    PathMatch::Exact(path) => json!({ "path": path }),
                };
                let mut matcher = matcher;
                if let Some(methods) = &route.methods {
                    matcher["methods"] = methods
                        .iter()
                        .map(http::Method::as_str)
                        .collect::<Vec<_>>()
                        .into();
                }
                let set: Map<String, Value> = route
                    .request
                    .set_headers
                    .iter()
                    .map(|(name, _)| (name.to_string(), Value::from(REDACTED)))
                    .collect();
                let remove: Vec<&str> = route
                    .request
                    .remove_headers
                    .iter()
                    .map(http::HeaderName::as_str)
                    .collect();
                let mut entry = json!({
                    "name": route.name,
                    "match": matcher,
                    "upstream": route.upstream,
                    "request": {
                        "path_prefix": route.request.path_prefix,
                        "method": route.request.method.as_ref().map(http::Method::as_str),
                        "body": route.request.body,
                        "max_body_size": route.request.max_body_size,
                        "body_timeout": duration(route.request.body_timeout),
                        "headers": { "set": set, "remove": remove },
                    },
                });
                if let Some(stream) = &route.stream {
                    entry["stream"] = stream_json(stream);
                }
                if let Some(cors) = &route.cors {
                    entry["cors"] = cors_json(cors);
                }
                if let Some(limits) = &route.limits {
                    entry["limits"] = super::traffic::shown::limits(limits);
                }
                if let Some(retry) = &route.retry {
                    entry["retry"] = super::traffic::shown::retry(retry);
                }
                // Response headers go to every client anyway: shown, not redacted
                // (unless they came from `${VAR}`).
                let response = &route.response;
                entry["response"] = json!({ "headers": {
                    "set": response.set_headers.iter()
                        .map(|(name, value)| (name.to_string(), Value::from(String::from_utf8_lossy(value.as_bytes()))))
                        .collect::<Map<String, Value>>(),
                    "remove": response.remove_headers.iter().map(http::HeaderName::as_str).collect::<Vec<_>>(),
                }});
                entry
            })
            .collect();
        let mut shown = json!({
            "listen": self.listen.to_string(),
            "admin": { "listen": self.admin_listen.to_string() },
            "drain_timeout": duration(self.drain_timeout),
            "shutdown": { "final_scrape_wait": duration(self.shutdown.final_scrape_wait) },
            "log": { "format": self.log.format, "level": self.log.level },
            "upstreams": upstreams,
            "routes": routes,
            // The URL may carry a password: shown only as whether it is set.
            "state": { "redis": self.state.redis.as_ref().map(|redis| {
                let mut shown = json!({ "url": REDACTED });
                if let Some(file) = &redis.ca_file {
                    shown["tls"] = json!({ "ca_file": file.display().to_string() });
                }
                shown
            }) },
            "trusted_proxies": self.trusted_proxies.ranges().iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        if let Some(otlp) = &self.otlp {
            // Export headers carry API keys: never shown.
            let headers: Map<String, Value> = otlp
                .headers
                .keys()
                .map(|name| (name.clone(), Value::from("<redacted>")))
                .collect();
            // Credentials in the URL (`https://user:key@host`) are a secret too.
            let traces_url = match otlp.traces_url.split_once("://") {
                Some((_, rest)) if rest.split('/').next().is_some_and(|a| a.contains('@')) => {
                    REDACTED
                }
                _ => otlp.traces_url.as_str(),
            };
            shown["telemetry"] = json!({ "otlp": {
                "traces_url": traces_url,
                "headers": headers,
                "sample_ratio": otlp.sample_ratio,
                "service_name": otlp.service_name,
            }});
        }
        redact_environment(&mut shown, "", &self.environment_paths());
        shown
    }

    /// The key paths of values from `${VAR}`, as the shown config spells them: a rule's
    /// `name` written inside `replace` or `drop` is shown beside the kind; the OTLP
    /// `endpoint` as `traces_url`; an upstream's one `default` endpoint as its `url`;
    /// header names in lower case, as `HeaderName` keeps them.
    fn environment_paths(&self) -> BTreeSet<String> {
        let mut paths = self.from_environment.clone();
        for path in &self.from_environment {
            for inner in [".replace.name", ".drop.name"] {
                if let Some(rule) = path.strip_suffix(inner) {
                    paths.insert(format!("{rule}.name"));
                }
            }
            if path == "telemetry.otlp.endpoint" {
                paths.insert("telemetry.otlp.traces_url".to_owned());
            }
            if let Some((upstream, _)) = path.split_once(".endpoints[") {
                if path.ends_with("].url") {
                    paths.insert(format!("{upstream}.url"));
                }
            }
            paths.insert(path.to_ascii_lowercase());
        }
        paths
    }
}

fn cors_json(cors: &CorsConfig) -> Value {
    let origins: Vec<&str> = match &cors.allow_origins {
        AllowOrigins::Any => vec!["*"],
        AllowOrigins::List(list) => list.iter().map(String::as_str).collect(),
    };
    json!({
        "allow_origins": origins,
        "allow_credentials": cors.allow_credentials,
        "allow_headers": cors.allow_headers.iter().map(http::HeaderName::as_str).collect::<Vec<_>>(),
        "max_age": cors.max_age.map(duration),
    })
}

/// Replaces every scalar below `value` whose key path came from the environment, so
/// no value from `${VAR}` is shown, wherever it sits (a secret may be in a rule's
/// pattern or a terminator as much as in a header).
fn redact_environment(value: &mut Value, path: &str, from_environment: &BTreeSet<String>) {
    match value {
        Value::Object(entries) => {
            for (key, entry) in entries.iter_mut() {
                redact_environment(entry, &join(path, key), from_environment);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                redact_environment(item, &format!("{path}[{i}]"), from_environment);
            }
        }
        Value::Null => {}
        scalar => {
            if from_environment.contains(path) {
                *scalar = Value::from(REDACTED);
            }
        }
    }
}

fn stream_json(stream: &StreamConfig) -> Value {
    let pipeline = &stream.pipeline;
    let rules: Vec<Value> = pipeline.rules().iter().map(rule_json).collect();
    let terminator = pipeline.terminator().map(|t| {
        let mut value = match &t.matcher {
            TerminatorMatch::Data(data) => json!({ "data": String::from_utf8_lossy(data) }),
            TerminatorMatch::Event(event) => json!({ "event": String::from_utf8_lossy(event) }),
        };
        value["forward"] = t.forward.into();
        let on_eof = if t.synthesize_on_eof {
            OnUpstreamEof::Synthesize
        } else {
            OnUpstreamEof::None
        };
        value["on_upstream_eof"] = serde_json::to_value(on_eof).unwrap_or_default();
        value
    });
    let contract = pipeline.contract();
    let complete_when = contract.complete_when.as_ref().map(|when| match when {
        CompleteWhen::DataMatches(regex) => json!({ "data_matches": regex.as_str() }),
        CompleteWhen::Event(event) => json!({ "event": String::from_utf8_lossy(event) }),
    });
    json!({
        "protocol": contract.protocol.as_str(),
        "complete_when": complete_when,
        "rules": rules,
        "terminator": terminator,
        "max_event_size": stream.max_event_size,
        "stuck_after": duration(stream.stuck_after),
        "idle_timeout": duration(stream.idle_timeout),
        "heartbeat": duration(stream.heartbeat),
        "max_duration": duration(stream.max_duration),
        "usage": stream.usage,
        "resume": stream.resume.as_ref().map(|resume| json!({
            "window": duration(resume.window),
            "max_bytes": resume.max_bytes,
            "store": resume.store,
            "on_unknown": resume.on_unknown,
            "max_detached": resume.max_detached,
            "credential_header": resume.credential_header.as_str(),
        })),
    })
}

/// A rule as the config wrote it.
fn rule_json(rule: &Rule) -> Value {
    let kind = rule.kind_label();
    let mut value = json!({ "name": rule.name() });
    value[kind] = match rule.pattern() {
        None => json!("orphan_lines"),
        Some(pattern) => {
            let mut action = json!({ "pattern": pattern.as_str(), "scope": rule.scope() });
            if let Some(with) = rule.replacement() {
                action["with"] = String::from_utf8_lossy(with).into();
            }
            action
        }
    };
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shown config of `yaml`, whose `${SECRET}` and `${URL}` hold secrets.
    fn shown(yaml: &str) -> String {
        let env = |name: &str| match name {
            "SECRET" => Some("s3cr3t-value".to_owned()),
            "URL" => Some("http://internal-secret-host:8090".to_owned()),
            _ => None,
        };
        let config = GatewayConfig::parse(yaml, "g.yaml", &env).expect("a valid config");
        config.redacted_json().to_string()
    }

    #[test]
    fn values_from_the_environment_are_redacted_where_the_shown_config_moves_them() {
        let text = shown(
            "upstreams:
  one: { endpoints: [ { name: default, url: \"${URL}\" } ] }
routes:
  - name: chat
    match: { path_prefix: /api }
    upstream: one
    response: { headers: { set: { X-Build-Token: \"${SECRET}\" } } }
telemetry: { otlp: { endpoint: \"${URL}\" } }
",
        );
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(!text.contains("internal-secret-host"), "{text}");
    }

    #[test]
    fn credentials_in_the_otlp_endpoint_are_redacted() {
        let text = shown(
            "upstreams: { demo: { demo: {} } }
routes: [ { name: chat, match: { path_prefix: /api }, upstream: demo } ]
telemetry: { otlp: { endpoint: \"https://apikey:k3y@otel.example:4318\" } }
",
        );
        assert!(!text.contains("k3y"), "{text}");
        assert!(text.contains(r#""traces_url":"<redacted>""#), "{text}");
    }
}
