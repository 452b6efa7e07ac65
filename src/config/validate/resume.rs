//! A stream section's `resume` and the top-level `state` section it may need.
//!
//! Bounds are checked here so that a typo cannot make a route hold gigabytes per
//! stream or keep streams for days; `store: redis` needs `state.redis`, which is read
//! before the routes so the route's error can name it.

use std::time::Duration;

use http::HeaderName;
use serde_yaml::Value;

use super::{join, Validator};
use crate::config::{
    defaults, raw, HumanDuration, RedisTarget, ResumeConfig, ResumeStore, StateConfig,
};

/// The longest `window`: a stream held for longer is a leak, not a resume.
const MAX_WINDOW: Duration = Duration::from_secs(60 * 60);
/// The largest `max_bytes` per stream.
const MAX_BYTES: u64 = 1 << 30;
/// The most detached streams a route may keep.
const MAX_DETACHED: u64 = 1_000_000;

impl Validator<'_> {
    /// The `state` section; remembers whether Redis is configured for the routes.
    pub(super) fn state(&mut self, value: Option<Value>) -> Option<StateConfig> {
        let state: raw::State = match value {
            None | Some(Value::Null) => raw::State { redis: None },
            Some(value) => self.section(Some(value), "state")?,
        };
        let redis = match state.redis {
            None => None,
            Some(redis) => Some(self.redis(redis)?),
        };
        self.redis_configured = redis.is_some();
        Some(StateConfig { redis })
    }

    fn redis(&mut self, redis: raw::Redis) -> Option<RedisTarget> {
        let path = "state.redis.url";
        let url = redis.url;
        let (tls, rest) = match (url.strip_prefix("rediss://"), url.strip_prefix("redis://")) {
            (Some(rest), _) => (true, Some(rest)),
            (None, rest) => (false, rest),
        };
        let host = rest.map(|rest| rest.rsplit('@').next().unwrap_or(rest));
        let malformed = host.is_none_or(|host| host.is_empty() || host.starts_with('/'))
            || redis::Client::open(url.as_str()).is_err();
        if malformed {
            self.error_at_value(
                path,
                "expected redis://[USER:PASSWORD@]HOST[:PORT][/DB] (or rediss:// for TLS), such as redis://127.0.0.1:6379",
            );
            return None;
        }
        let ca_file = match redis.tls.and_then(|tls| tls.ca_file) {
            None => None,
            Some(_) if !tls => {
                self.error_at_value(
                    "state.redis.tls.ca_file",
                    "tls applies to rediss:// urls only",
                );
                return None;
            }
            Some(file) => Some(self.ca_file("state.redis.tls.ca_file", file)?),
        };
        Some(RedisTarget { url, ca_file })
    }

    pub(super) fn resume(&mut self, path: &str, raw: raw::Resume) -> Option<ResumeConfig> {
        let mut ok = true;
        let window = raw.window.map_or(defaults::RESUME_WINDOW, |d| d.0);
        if window.is_zero() || window > MAX_WINDOW {
            self.error_at_value(
                &join(path, "window"),
                format!(
                    "window must be more than 0 and at most {}",
                    HumanDuration(MAX_WINDOW)
                ),
            );
            ok = false;
        }
        let max_bytes = raw.max_bytes.map_or(defaults::RESUME_MAX_BYTES, |s| s.0);
        if max_bytes == 0 || max_bytes > MAX_BYTES {
            self.error_at_value(
                &join(path, "max_bytes"),
                "max_bytes must be between 1B and 1GiB",
            );
            ok = false;
        }
        let max_detached = raw
            .max_detached
            .map_or(defaults::RESUME_MAX_DETACHED as u64, |n| n);
        if max_detached > MAX_DETACHED {
            self.error_at_value(
                &join(path, "max_detached"),
                format!("max_detached must be at most {MAX_DETACHED}"),
            );
            ok = false;
        }
        let store = raw.store.unwrap_or_default();
        if store == ResumeStore::Redis && !self.redis_configured {
            self.error_at_value(
                &join(path, "store"),
                "store: redis needs the top-level `state: { redis: { url: redis://HOST:PORT } }`",
            );
            ok = false;
        }
        let header = raw
            .credential_header
            .unwrap_or_else(|| defaults::RESUME_CREDENTIAL_HEADER.to_owned());
        let credential_header = if let Ok(name) = HeaderName::from_bytes(header.as_bytes()) {
            Some(name)
        } else {
            self.error_at_value(
                &join(path, "credential_header"),
                format!("invalid header name \"{header}\""),
            );
            None
        };
        if !ok {
            return None;
        }
        Some(ResumeConfig {
            window,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            store,
            on_unknown: raw.on_unknown.unwrap_or_default(),
            max_detached: usize::try_from(max_detached).unwrap_or(usize::MAX),
            credential_header: credential_header?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{GatewayConfig, OnUnknown, ResumeConfig, ResumeStore};

    fn parse(state: &str, resume: &str) -> Result<GatewayConfig, String> {
        let text = format!(
            "upstreams: {{ demo: {{ demo: {{}} }} }}
{state}routes:
  - name: chat
    match: {{ path_prefix: /api }}
    upstream: demo
    stream:
      resume: {resume}
"
        );
        GatewayConfig::parse(&text, "g.yaml", &|_| None).map_err(|errors| errors.to_string())
    }

    fn resume_of(config: &GatewayConfig) -> ResumeConfig {
        config.routes[0]
            .stream
            .as_ref()
            .and_then(|stream| stream.resume.clone())
            .expect("a resume section")
    }

    #[test]
    fn defaults_and_values() {
        let cases = [
            (
                "",
                "{}",
                (30, 1 << 20, ResumeStore::Memory, OnUnknown::Restart, 1000, "authorization"),
            ),
            (
                "state: { redis: { url: \"redis://127.0.0.1:6379\" } }\n",
                "{ window: 5s, max_bytes: 64KiB, store: redis, on_unknown: reject, max_detached: 3, credential_header: X-Api-Key }",
                (5, 64 << 10, ResumeStore::Redis, OnUnknown::Reject, 3, "x-api-key"),
            ),
        ];
        for (state, resume, (window, max_bytes, store, on_unknown, max_detached, header)) in cases {
            let config = parse(state, resume).unwrap();
            let got = resume_of(&config);
            assert_eq!(got.window, Duration::from_secs(window), "{resume}");
            assert_eq!(got.max_bytes, max_bytes, "{resume}");
            assert_eq!(got.store, store, "{resume}");
            assert_eq!(got.on_unknown, on_unknown, "{resume}");
            assert_eq!(got.max_detached, max_detached, "{resume}");
            assert_eq!(got.credential_header.as_str(), header, "{resume}");
            let shown = config.redacted_json();
            let store = if store == ResumeStore::Redis {
                "redis"
            } else {
                "memory"
            };
            assert_eq!(shown["routes"][0]["stream"]["resume"]["store"], store);
            let redis = if state.is_empty() {
                None
            } else {
                Some("redis://127.0.0.1:6379")
            };
            let url = config.state.redis.as_ref().map(|redis| redis.url.as_str());
            assert_eq!(url, redis);
        }
    }

    #[test]
    fn rediss_takes_a_ca_file_redis_does_not() {
        let ca =
            std::env::temp_dir().join(format!("sse-gateway-redis-ca-{}.pem", std::process::id()));
        let cert = rcgen::generate_simple_self_signed(vec!["redis".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let state =
            |url: &str, tls: &str| format!("state: {{ redis: {{ url: \"{url}\"{tls} }} }}\n");
        let with_ca = format!(", tls: {{ ca_file: \"{}\" }}", ca.display());
        let config = parse(
            &state("rediss://:pw@redis:6380", &with_ca),
            "{ store: redis }",
        )
        .unwrap();
        let redis = config.state.redis.clone().unwrap();
        assert_eq!(redis.url, "rediss://:pw@redis:6380");
        assert_eq!(redis.ca_file.as_deref(), Some(ca.as_path()));
        let shown = config.redacted_json();
        assert_eq!(shown["state"]["redis"]["url"], "<redacted>");
        assert_eq!(
            shown["state"]["redis"]["tls"]["ca_file"],
            ca.display().to_string()
        );
        // The public roots without a CA file.
        let public = parse(&state("rediss://redis:6380", ""), "{}").unwrap();
        assert_eq!(public.state.redis.unwrap().ca_file, None);

        let plain = parse(&state("redis://redis:6379", &with_ca), "{}").unwrap_err();
        assert!(
            plain.contains("state.redis.tls.ca_file: tls applies to rediss:// urls only"),
            "{plain}"
        );
        let missing = state(
            "rediss://redis:6380",
            ", tls: { ca_file: /nonexistent/ca.pem }",
        );
        let missing = parse(&missing, "{}").unwrap_err();
        assert!(
            missing.contains("CA file \"/nonexistent/ca.pem\" is not a readable file"),
            "{missing}"
        );
        std::fs::write(&ca, "not a certificate").unwrap();
        let empty = parse(&state("rediss://redis:6380", &with_ca), "{}").unwrap_err();
        assert!(empty.contains("no PEM certificate in it"), "{empty}");
        std::fs::remove_file(&ca).unwrap();
    }

    #[test]
    fn problems_are_located() {
        let cases = [
            ("", "{ store: redis }", "g.yaml:7:24: routes[0].stream.resume.store: store: redis needs the top-level `state: { redis: { url: redis://HOST:PORT } }`"),
            ("", "{ window: 0 }", "g.yaml:7:25: routes[0].stream.resume.window: window must be more than 0 and at most 1h"),
            ("", "{ max_bytes: 0 }", "g.yaml:7:28: routes[0].stream.resume.max_bytes: max_bytes must be between 1B and 1GiB"),
            ("", "{ credential_header: \"a b\" }", "g.yaml:7:36: routes[0].stream.resume.credential_header: invalid header name \"a b\""),
            ("", "{ on_unknown: retry }", "g.yaml:7:29: routes[0].stream.resume.on_unknown: unknown variant `retry`"),
            ("state: { redis: { url: \"http://x\" } }\n", "{}", "g.yaml:2:24: state.redis.url: expected redis://[USER:PASSWORD@]HOST[:PORT][/DB] (or rediss:// for TLS), such as redis://127.0.0.1:6379"),
            ("state: { redis: { url: \"redis://h:port\" } }\n", "{}", "g.yaml:2:24: state.redis.url: expected redis://"),
        ];
        for (state, resume, expected) in cases {
            let error = parse(state, resume).unwrap_err();
            assert!(error.starts_with(expected), "{error}\nwanted: {expected}");
        }
    }
}
