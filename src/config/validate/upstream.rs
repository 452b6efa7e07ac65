//! The `upstreams` section: each upstream deserialized on its own, its URL checked
//! (scheme, authority, a base path without dot segments), its TLS files and timeouts.

use std::collections::BTreeMap;

use http::Uri;
use serde_yaml::Value;

use super::{join, raw, traffic, Validator};
use crate::config::{defaults, HumanDuration, UpstreamConfig, UpstreamTarget};

impl Validator<'_> {
    pub(super) fn upstreams(&mut self, value: Option<Value>) -> BTreeMap<String, UpstreamConfig> {
        let mut upstreams = BTreeMap::new();
        let Some(entries) = self.section::<BTreeMap<String, Value>>(value, "upstreams") else {
            return upstreams;
        };
        for (name, value) in entries {
            let path = join("upstreams", &name);
            // The name is the key: the error points at it.
            if let Some(message) = super::name_problem("upstream", &name) {
                self.error_at_key(&path, message);
                continue;
            }
            let Some(raw) = self.section::<raw::Upstream>(Some(value), &path) else {
                continue;
            };
            let ca_file = raw.tls.and_then(|tls| tls.ca_file);
            let health = self.health(&join(&path, "health"), raw.health);
            let target = match (raw.url, raw.endpoints, raw.demo) {
                (Some(url), None, None) => self
                    .upstream_url(&path, &url, ca_file)
                    .map(|target| (traffic::default_endpoint(&target), target)),
                (None, Some(endpoints), None) => self
                    .endpoints(&path, endpoints, ca_file.as_ref())
                    .map(|(target, endpoints)| (endpoints, target)),
                (None, None, Some(_)) if ca_file.is_some() => {
                    // The demo is in-process: no connection for a CA to verify.
                    self.error_at_value(
                        &join(&path, "tls.ca_file"),
                        "tls applies to https:// urls only; the demo upstream has no connection",
                    );
                    None
                }
                (None, None, Some(demo)) => Some((
                    Vec::new(),
                    UpstreamTarget::Demo {
                        token_interval: demo
                            .token_interval
                            .map_or(defaults::DEMO_TOKEN_INTERVAL, |d| d.0),
                    },
                )),
                (None, None, None) => {
                    self.error_at_value(
                        &path,
                        "missing `url` (such as http://127.0.0.1:8000), `endpoints`, or `demo: {}` for the built-in demo",
                    );
                    None
                }
                _ => {
                    self.error_at_value(&path, "give one of `url`, `endpoints` or `demo`");
                    None
                }
            };
            // Elsewhere 0 turns a clock off; these two cannot be off, and at 0 every
            // request would fail at once.
            let connect_timeout = raw
                .connect_timeout
                .map_or(defaults::CONNECT_TIMEOUT, |d| d.0);
            let header_timeout = raw.header_timeout.map_or(defaults::HEADER_TIMEOUT, |d| d.0);
            for (key, timeout, default) in [
                (
                    "connect_timeout",
                    connect_timeout,
                    defaults::CONNECT_TIMEOUT,
                ),
                ("header_timeout", header_timeout, defaults::HEADER_TIMEOUT),
            ] {
                if timeout.is_zero() {
                    self.error_at_value(
                        &join(&path, key),
                        format!(
                            "{key} must be longer than 0 (such as {}): at 0 every request would fail",
                            HumanDuration(default)
                        ),
                    );
                }
            }
            if let Some((endpoints, target)) = target {
                upstreams.insert(
                    name.clone(),
                    UpstreamConfig {
                        name,
                        target,
                        connect_timeout,
                        header_timeout,
                        endpoints,
                        balance: raw.balance.unwrap_or_default(),
                        health,
                    },
                );
            }
        }
        if upstreams.is_empty() && self.errors.is_empty() {
            self.error_at_value("upstreams", "no upstreams: define at least one");
        }
        upstreams
    }

    pub(super) fn upstream_url(
        &mut self,
        upstream_path: &str,
        url: &str,
        ca_file: Option<String>,
    ) -> Option<UpstreamTarget> {
        let path = &join(upstream_path, "url");
        let bad = |why: &str| format!("invalid upstream url \"{url}\": {why}");
        let uri: Uri = match url.parse() {
            Ok(uri) => uri,
            Err(error) => {
                self.error_at_value(path, bad(&error.to_string()));
                return None;
            }
        };
        let problem = match (uri.scheme_str(), uri.authority()) {
            (Some("http" | "https"), Some(authority)) if !authority.as_str().contains('@') => {
                if uri.query().is_some() {
                    Some("a query string is not allowed")
                } else if authority.host().is_empty() {
                    Some("the host is missing")
                } else if port_text(authority.as_str()).is_some_and(|port| {
                    // An empty port is the scheme's (RFC 3986 section 3.2.3).
                    !port.is_empty() && !matches!(port.parse::<u16>(), Ok(1..))
                }) {
                    // A port the client cannot read counts as none, the scheme's: a
                    // mistyped port would send the traffic to port 80 or 443.
                    Some("the port must be a number from 1 to 65535")
                } else {
                    None
                }
            }
            (Some("http" | "https"), Some(_)) => {
                Some("credentials in the url are not allowed; set a header instead")
            }
            (Some(_), _) => Some("the scheme must be http or https"),
            (None, _) => Some("expected an absolute url such as http://127.0.0.1:8000"),
        };
        if let Some(problem) = problem {
            self.error_at_value(path, bad(problem));
            return None;
        }
        let ca_path = join(upstream_path, "tls.ca_file");
        let ca_file = match ca_file {
            None => None,
            Some(_) if uri.scheme_str() != Some("https") => {
                self.error_at_value(&ca_path, "tls applies to https:// urls only");
                return None;
            }
            Some(file) => Some(self.ca_file(&ca_path, file)?),
        };
        if let Some(problem) = base_path_problem(uri.path()) {
            self.error_at_value(path, bad(problem));
            return None;
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Some(UpstreamTarget::Url {
            uri,
            base_path,
            ca_file,
        })
    }

    /// A `tls.ca_file` at `path`: a readable PEM file with at least one certificate,
    /// read as a start reads it, so `check` and a reload refuse what a start would.
    pub(super) fn ca_file(&mut self, path: &str, file: String) -> Option<std::path::PathBuf> {
        if !std::path::Path::new(&file).is_file() {
            self.error_at_value(path, format!("CA file \"{file}\" is not a readable file"));
            return None;
        }
        let mut roots = rustls::RootCertStore::empty();
        if let Err(reason) = crate::config::add_ca_file(&mut roots, file.as_ref()) {
            self.error_at_value(
                path,
                format!(
                    "CA file \"{file}\" cannot be used ({reason}); give a PEM file of \
                     one or more -----BEGIN CERTIFICATE----- blocks"
                ),
            );
            return None;
        }
        Some(std::path::PathBuf::from(file))
    }
}

/// An upstream's base path is prepended to request paths the router has checked; a
/// base path with dot segments would undo that check at the upstream.
fn base_path_problem(path: &str) -> Option<&'static str> {
    (!crate::router::is_safe_path(path))
        .then_some("the path must not have `.` or `..` segments, encoded separators, backslashes, non-ASCII bytes or control characters")
}

/// The text after the port's colon in an authority, if it has one (an IPv6 host's
/// colons, inside brackets, are not it).
fn port_text(authority: &str) -> Option<&str> {
    let host_end = authority.rfind(']').map_or(0, |bracket| bracket + 1);
    let after_host = &authority[host_end..];
    after_host.rfind(':').map(|colon| &after_host[colon + 1..])
}

#[cfg(test)]
mod tests {
    use crate::config::GatewayConfig;

    /// `check`'s verdict on a config whose upstream has `url` and whose listeners are
    /// `listen` and `admin`: `Ok` or the problems.
    fn check(url: &str, listen: &str, admin: &str) -> Result<(), String> {
        let yaml = format!(
            "listen: \"{listen}\"\nadmin: {{ listen: \"{admin}\" }}\nupstreams:\n  a: {{ url: \"{url}\" }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: /r }}, upstream: a }}\n"
        );
        GatewayConfig::parse(&yaml, "g.yaml", &|_| None)
            .map(|_| ())
            .map_err(|errors| errors.to_string())
    }

    const LISTEN: &str = "127.0.0.1:8080";
    const ADMIN: &str = "127.0.0.1:8079";

    #[test]
    fn the_demo_upstream_takes_no_ca_file() {
        let yaml = "upstreams:\n  d:\n    demo: {}\n    tls: { ca_file: /x.pem }\nroutes:\n  - { name: r, match: { path_prefix: /r }, upstream: d }\n";
        let problems = GatewayConfig::parse(yaml, "g.yaml", &|_| None)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains(
                "g.yaml:4:21: upstreams.d.tls.ca_file: tls applies to https:// urls only"
            ),
            "{problems}"
        );
    }

    #[test]
    fn ports_must_be_numbers_a_client_reads_as_given() {
        for url in [
            "http://h:83626",
            "http://h:0",
            "http://h:8o80",
            "http://[::1]:99999",
        ] {
            let problem = check(url, LISTEN, ADMIN).unwrap_err();
            assert!(
                problem.contains("the port must be a number"),
                "{url}: {problem}"
            );
        }
        for url in [
            "http://h:65535",
            "http://[::1]:8000",
            "http://h",
            "http://h:/x",
        ] {
            assert_eq!(check(url, LISTEN, ADMIN), Ok(()), "{url}");
        }
        assert!(check("http://:80", LISTEN, ADMIN)
            .unwrap_err()
            .contains("the host is missing"));
    }

    #[test]
    fn the_admin_port_is_refused_only_where_the_listeners_would_clash() {
        let url = "http://h:8000";
        for (listen, admin) in [
            ("0.0.0.0:18080", "127.0.0.1:18080"),
            ("[::]:18080", "127.0.0.1:18080"),
            ("127.0.0.1:18080", "127.0.0.1:18080"),
        ] {
            assert!(check(url, listen, admin).is_err(), "{listen} {admin}");
        }
        for (listen, admin) in [
            ("0.0.0.0:18080", "[::1]:18080"),
            ("10.0.0.1:18080", "127.0.0.1:18080"),
            ("0.0.0.0:18080", "0.0.0.0:18079"),
        ] {
            assert_eq!(check(url, listen, admin), Ok(()), "{listen} {admin}");
        }
    }
}
