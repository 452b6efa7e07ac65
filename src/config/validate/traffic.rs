//! The traffic sections: a route's `limits` and `retry`, an upstream's `endpoints` and
//! `health`. Each number is checked against what it can mean (a limit of 0 admits
//! nothing, a retry needs a second attempt to be one), each `retry.on` value against
//! the list of what can be retried, and endpoint names for uniqueness, since a name is
//! a metric label.

use std::collections::BTreeMap;
use std::str::FromStr;

use http::HeaderName;

use super::{join, raw, Validator};
use crate::config::{
    defaults, EndpointConfig, HealthConfig, HumanDuration, LimitsConfig, PerClientLimit,
    RetryConfig, RetryOn, UpstreamTarget,
};

/// The most attempts a request may make: more only multiplies load on a failing
/// upstream.
const MAX_ATTEMPTS: u32 = 10;

/// The most endpoints of one upstream: a request tracks the ones it tried in a `u64`.
const MAX_ENDPOINTS: usize = 64;

impl Validator<'_> {
    pub(super) fn limits(&mut self, path: &str, raw: raw::Limits) -> Option<LimitsConfig> {
        let mut ok = true;
        if raw.max_streams == Some(0) {
            self.error_at_value(
                &join(path, "max_streams"),
                "max_streams must be at least 1 (leave it out for no limit)",
            );
            ok = false;
        }
        let per_client = match raw.per_client {
            None => None,
            Some(per_client) => {
                let client_path = join(path, "per_client");
                let header = HeaderName::from_str(&per_client.header).ok();
                if header.is_none() {
                    self.error_at_value(
                        &join(&client_path, "header"),
                        format!("invalid header name \"{}\"", per_client.header),
                    );
                    ok = false;
                }
                if per_client.max_streams == 0 {
                    self.error_at_value(
                        &join(&client_path, "max_streams"),
                        "per_client.max_streams must be at least 1",
                    );
                    ok = false;
                }
                header.map(|header| PerClientLimit {
                    header,
                    max_streams: per_client.max_streams,
                })
            }
        };
        if raw.max_streams.is_none() && per_client.is_none() && ok {
            self.error_at_value(path, "give `max_streams`, `per_client`, or both");
            ok = false;
        }
        ok.then_some(LimitsConfig {
            max_streams: raw.max_streams,
            per_client,
        })
    }

    pub(super) fn retry(&mut self, path: &str, raw: raw::Retry) -> Option<RetryConfig> {
        let mut ok = true;
        let attempts = raw.attempts.unwrap_or(defaults::RETRY_ATTEMPTS);
        if !(2..=MAX_ATTEMPTS).contains(&attempts) {
            self.error_at_value(
                &join(path, "attempts"),
                format!("attempts counts the first request too: between 2 and {MAX_ATTEMPTS}"),
            );
            ok = false;
        }
        let on = match raw.on {
            None => RetryOn::ALL,
            Some(values) if values.is_empty() => {
                self.error_at_value(
                    &join(path, "on"),
                    format!(
                        "an empty list retries nothing: list the failures to retry (from {}), leave `on` out for all, or `retry` out for none",
                        RetryOn::NAMES.join(", ")
                    ),
                );
                ok = false;
                RetryOn::default()
            }
            Some(values) => {
                let mut on = RetryOn::default();
                for (index, value) in values.iter().enumerate() {
                    let name = match value {
                        serde_yaml::Value::String(text) => text.clone(),
                        serde_yaml::Value::Number(number) => number.to_string(),
                        _ => String::new(),
                    };
                    if !on.set(&name) {
                        self.error_at_value(
                            &format!("{}[{index}]", join(path, "on")),
                            format!(
                                "cannot retry on {}: use one of {}",
                                serde_yaml::to_string(value).unwrap_or_default().trim(),
                                RetryOn::NAMES.join(", ")
                            ),
                        );
                        ok = false;
                    }
                }
                on
            }
        };
        ok.then(|| RetryConfig {
            attempts,
            on,
            max_body: raw.max_body.map_or(defaults::RETRY_MAX_BODY, |s| s.0),
        })
    }

    /// An upstream's `endpoints`: each url checked like `url`, names unique; returns
    /// the target (the first endpoint's url) and the list.
    pub(super) fn endpoints(
        &mut self,
        upstream_path: &str,
        raw: Vec<raw::Endpoint>,
        ca_file: Option<&String>,
    ) -> Option<(UpstreamTarget, Vec<EndpointConfig>)> {
        let path = join(upstream_path, "endpoints");
        if raw.is_empty() || raw.len() > MAX_ENDPOINTS {
            self.error_at_value(&path, format!("list 1 to {MAX_ENDPOINTS} endpoints"));
            return None;
        }
        let mut ok = true;
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut first = None;
        let mut endpoints = Vec::with_capacity(raw.len());
        for (index, endpoint) in raw.into_iter().enumerate() {
            let endpoint_path = format!("{path}[{index}]");
            let name_path = join(&endpoint_path, "name");
            if !self.name(&name_path, "endpoint", &endpoint.name) {
                ok = false;
            } else if let Some(other) = names.insert(endpoint.name.clone(), index) {
                self.error_at_value(
                    &name_path,
                    format!(
                        "duplicate endpoint name \"{}\" (also endpoints[{other}])",
                        endpoint.name
                    ),
                );
                ok = false;
            }
            let target = self.upstream_url(&endpoint_path, &endpoint.url, ca_file.cloned());
            let Some(UpstreamTarget::Url { uri, base_path, .. }) = &target else {
                ok = false;
                continue;
            };
            endpoints.push(EndpointConfig {
                name: endpoint.name,
                uri: uri.clone(),
                base_path: base_path.clone(),
            });
            if first.is_none() {
                first = target;
            }
        }
        if ok {
            first.map(|target| (target, endpoints))
        } else {
            None
        }
    }

    pub(super) fn health(&mut self, path: &str, raw: Option<raw::Health>) -> HealthConfig {
        let raw = raw.unwrap_or(raw::Health {
            failures: None,
            cooldown: None,
        });
        let failures = raw.failures.unwrap_or(defaults::HEALTH_FAILURES);
        if failures == 0 {
            self.error_at_value(
                &join(path, "failures"),
                "failures must be at least 1: the failures in a row that take an endpoint out",
            );
        }
        let cooldown = raw.cooldown.map_or(defaults::HEALTH_COOLDOWN, |d| d.0);
        if cooldown.is_zero() {
            self.error_at_value(
                &join(path, "cooldown"),
                format!(
                    "cooldown must be longer than 0 (such as {})",
                    HumanDuration(defaults::HEALTH_COOLDOWN)
                ),
            );
        }
        HealthConfig { failures, cooldown }
    }
}

/// The one endpoint of an upstream given by `url`.
pub(super) fn default_endpoint(target: &UpstreamTarget) -> Vec<EndpointConfig> {
    match target {
        UpstreamTarget::Url { uri, base_path, .. } => vec![EndpointConfig {
            name: "default".to_owned(),
            uri: uri.clone(),
            base_path: base_path.clone(),
        }],
        UpstreamTarget::Demo { .. } => Vec::new(),
    }
}
