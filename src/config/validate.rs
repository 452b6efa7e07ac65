//! `gateway.yaml` text -> [`GatewayConfig`], collecting every problem on the way.
//!
//! The document is parsed once into a YAML value, `${VAR}` is substituted in its string
//! scalars, and then each section (each upstream, each route) is deserialized on its
//! own (and within a route, each of its `request`, `stream`, `cors` and `response`
//! sections), so one bad part does not hide the errors of the next; within a section,
//! the key serde stopped at is taken out and the section read again, so one bad key
//! does not hide the next either. Cross-field checks (unknown upstream, duplicate
//! names, overlapping matches) read what they need straight from the YAML, so they run
//! even on routes with shape problems.
//! Every error carries the key path, and the position that path has in the file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml::Value;

mod cors;
mod log;
mod resume;
mod route;
mod shutdown;
mod stream;
mod telemetry;
mod traffic;
mod upstream;

pub(crate) use log::check_filter;

use super::env::{substitute, EnvError};
use super::locate::{join, Locations};
use super::raw::{self, TOP_LEVEL_KEYS};
use super::{defaults, ConfigError, ConfigErrors, GatewayConfig};
use crate::trusted_proxies::{parse_range, TrustedProxies};

/// Names become metric label values and log fields: keep them short and plain.
const MAX_NAME_LEN: usize = 64;

struct Validator<'a> {
    locations: Locations,
    errors: Vec<ConfigError>,
    env: &'a dyn Fn(&str) -> Option<String>,
    from_environment: BTreeSet<String>,
    /// Key paths whose `${VAR}` could not be substituted: that is their one problem,
    /// so the later check of the unsubstituted text does not report it twice.
    env_failed: BTreeSet<String>,
    /// Mappings that had a key taken out as a problem ([`Validator::section`]): a
    /// problem of such a mapping as a whole (a key it misses, two that exclude each
    /// other) may be that key's, already reported, so none is.
    cut: BTreeSet<String>,
    missing_env: MissingEnv,
    /// Under [`MissingEnv::Warning`], the variables left unset, by key path; one that a
    /// later check then fails on becomes that path's error instead.
    unset: BTreeMap<String, ConfigError>,
    /// Whether `state.redis` is set: `resume.store: redis` needs it.
    redis_configured: bool,
}

/// What a `${VAR}` that is not set is: an error when the gateway is to run with the
/// config, a warning for offline tools, which need no secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissingEnv {
    Error,
    /// The text is left as written (`${VAR}`); it is an error only where the value
    /// itself is checked (a url, a size), since nothing can be said of it unset.
    Warning,
}

/// The config, and the warnings of [`MissingEnv::Warning`] (sorted by position).
pub(super) fn validate(
    text: &str,
    locations: Locations,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    missing_env: MissingEnv,
) -> Result<(GatewayConfig, Vec<ConfigError>), ConfigErrors> {
    let mut validator = Validator {
        locations,
        errors: Vec::new(),
        env,
        from_environment: BTreeSet::new(),
        env_failed: BTreeSet::new(),
        cut: BTreeSet::new(),
        missing_env,
        unset: BTreeMap::new(),
        redis_configured: false,
    };
    let config = validator.document(text, source);
    match config {
        Some(config) if validator.errors.is_empty() => {
            let mut warnings: Vec<ConfigError> = validator
                .unset
                .into_values()
                .map(|mut unset| {
                    unset.message = format!("warning: {}", unset.message);
                    unset
                })
                .collect();
            warnings.sort_by_key(|e| e.position.map(|p| (p.line, p.column)));
            Ok((config, warnings))
        }
        _ => {
            let mut errors = validator.errors;
            errors.sort_by_key(|e| e.position.map(|p| (p.line, p.column)));
            Err(ConfigErrors {
                source: source.to_owned(),
                errors,
            })
        }
    }
}

impl Validator<'_> {
    fn error_at_value(&mut self, path: &str, message: impl Into<String>) {
        if self.env_failed.contains(path) || self.cut.contains(path) {
            return;
        }
        if let Some(unset) = self.unset.remove(path) {
            // The value had to be checked, and cannot be without the variable.
            self.env_failed.insert(path.to_owned());
            self.errors.push(unset);
            return;
        }
        self.errors.push(ConfigError {
            position: self.locations.value(path),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn error_at_key(&mut self, path: &str, message: impl Into<String>) {
        if self.cut.contains(path) {
            return;
        }
        let position = self.locations.key(path).or(self.locations.value(path));
        self.errors.push(ConfigError {
            position,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn document(&mut self, text: &str, source: &str) -> Option<GatewayConfig> {
        let mut root: Value = match serde_yaml::from_str(text) {
            Ok(root) => root,
            Err(error) => {
                self.syntax_error(&error);
                return None;
            }
        };
        let Value::Mapping(mapping) = &mut root else {
            let what = if root.is_null() {
                "empty"
            } else {
                "not a mapping"
            };
            self.error_at_value(
                "",
                format!("the file is {what}; it needs at least `upstreams` and `routes`"),
            );
            return None;
        };
        let mut sections: BTreeMap<String, Value> = BTreeMap::new();
        for (key, mut value) in std::mem::take(mapping) {
            let Some(name) = key.as_str().filter(|k| TOP_LEVEL_KEYS.contains(k)) else {
                let shown = serde_yaml::to_string(&key).unwrap_or_default();
                self.error_at_key(
                    shown.trim(),
                    format!(
                        "unknown key `{}` (expected one of: {})",
                        shown.trim(),
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                );
                continue;
            };
            self.substitute_env(name.to_owned(), &mut value);
            sections.insert(name.to_owned(), value);
        }

        let listen = self.listen_address("listen", sections.remove("listen"), defaults::LISTEN);
        let admin: Option<raw::Admin> = self.section(sections.remove("admin"), "admin");
        let admin_listen = self.listen_address(
            "admin.listen",
            admin.and_then(|a| a.listen).map(Value::String),
            defaults::ADMIN_LISTEN,
        );
        if let (Some(public), Some(admin)) = (listen, admin_listen) {
            // One port on addresses that overlap cannot be bound twice: the same address,
            // or all addresses of one family and one of that family (an IPv6 `[::]`
            // takes IPv4 too, as Linux binds it dual-stack).
            let covers = |all: std::net::IpAddr, one: std::net::IpAddr| {
                all.is_unspecified() && (all.is_ipv6() || one.is_ipv4())
            };
            let overlap = public.ip() == admin.ip()
                || covers(public.ip(), admin.ip())
                || covers(admin.ip(), public.ip());
            if public.port() == admin.port() && public.port() != 0 && overlap {
                self.error_at_value(
                    "admin.listen",
                    format!("admin.listen {admin} is the same port as listen {public}: metrics and health must not share the public port"),
                );
            }
        }
        let drain_timeout = match sections.remove("drain_timeout") {
            None => Some(defaults::DRAIN_TIMEOUT),
            Some(value) => self
                .section::<super::HumanDuration>(Some(value), "drain_timeout")
                .map(|d| d.0),
        };
        let shutdown = self.shutdown(sections.remove("shutdown"));
        let log = self.log(sections.remove("log"));
        // Before the routes: a route's `store: redis` needs it.
        let state = self.state(sections.remove("state"));
        let upstreams_value = sections.remove("upstreams");
        // Routes naming an upstream that is declared but broken get no second error.
        let declared: BTreeSet<String> = upstreams_value
            .as_ref()
            .and_then(Value::as_mapping)
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let upstreams = self.upstreams(upstreams_value);
        let routes = self.routes(sections.remove("routes"), &upstreams, &declared);
        let otlp = self.telemetry(sections.remove("telemetry"));
        let trusted_proxies = self.trusted_proxies(sections.remove("trusted_proxies"));

        Some(GatewayConfig {
            source: source.to_owned(),
            listen: listen?,
            admin_listen: admin_listen?,
            drain_timeout: drain_timeout?,
            shutdown: shutdown?,
            log: log?,
            upstreams,
            routes,
            state: state?,
            from_environment: std::mem::take(&mut self.from_environment),
            otlp,
            trusted_proxies: trusted_proxies?,
        })
    }

    fn syntax_error(&mut self, error: &serde_yaml::Error) {
        let mut message = error.to_string();
        let mut position = error.location().map(|location| {
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            message = message.replacen(&suffix, "", 1);
            super::Position {
                line: location.line(),
                column: location.column(),
            }
        });
        // The loader locates a duplicate key at its mapping; the operator needs the
        // line of the second one, which is the one to remove or rename.
        if let Some(repeated) = repeated_key_path(&message) {
            position = self.locations.repeated_key(&repeated).or(position);
        }
        self.errors.push(ConfigError {
            position,
            path: String::new(),
            message: format!("invalid YAML: {message}"),
        });
    }

    /// Replaces `${VAR}` in every string scalar below `value`.
    fn substitute_env(&mut self, path: String, value: &mut Value) {
        match value {
            Value::String(text) => match substitute(text, self.env) {
                Ok(Some(substituted)) => {
                    *text = substituted;
                    self.from_environment.insert(path);
                }
                Ok(None) => {}
                Err(error @ EnvError::Missing(_)) if self.missing_env == MissingEnv::Warning => {
                    let warning = ConfigError {
                        position: self.locations.value(&path),
                        path: path.clone(),
                        message: error.to_string(),
                    };
                    self.unset.insert(path, warning);
                }
                Err(error) => {
                    self.error_at_value(&path, error.to_string());
                    self.env_failed.insert(path);
                }
            },
            Value::Sequence(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.substitute_env(format!("{path}[{i}]"), item);
                }
            }
            Value::Mapping(mapping) => {
                for (key, item) in mapping.iter_mut() {
                    let key = key.as_str().map(str::to_owned).unwrap_or_default();
                    self.substitute_env(join(&path, &key), item);
                }
            }
            _ => {}
        }
    }

    /// Deserializes one section; on failure records the error at its exact path.
    ///
    /// serde stops at a section's first error, so the key it names is taken out and
    /// the section read again, until it reads or an error names no key (a list item,
    /// the section itself): each of a section's misspelt keys and bad values is
    /// reported, not only the first. A mapping that had a key taken out is not said to
    /// miss one: the key taken out (a misspelling of it, say) is that problem. The
    /// section is then returned without the keys taken out, so the checks of its other
    /// values run and report theirs too, except at such a mapping itself.
    fn section<T: DeserializeOwned>(&mut self, value: Option<Value>, path: &str) -> Option<T> {
        let mut value = value?;
        loop {
            let error = match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(typed) => return Some(typed),
                Err(error) => error,
            };
            let segments: Vec<Segment> = error.path().iter().cloned().collect();
            let inner = error.path().to_string();
            let full = match inner.as_str() {
                "." => path.to_owned(),
                inner if inner.starts_with('[') => format!("{path}{inner}"),
                inner => join(path, inner),
            };
            let message = error.into_inner().to_string();
            let named = |prefix: &str| {
                message
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_owned)
            };
            if named("missing field `").is_some() && self.cut.contains(&full) {
                return None;
            }
            // serde names the offending key only inside its message; point at it.
            let offending = if let Some(field) = named("unknown field `") {
                // The path may or may not already end in the unknown key.
                let mut parent = segments;
                if matches!(parent.last(), Some(Segment::Map { key }) if *key == field) {
                    parent.pop();
                }
                let key_path = if full.ends_with(&format!(".{field}")) || full == field {
                    full
                } else {
                    join(&full, &field)
                };
                self.error_at_key(&key_path, message);
                Some((parent, field, key_path))
            } else {
                self.error_at_value(&full, message);
                let mut parent = segments;
                match parent.pop() {
                    Some(Segment::Map { key }) => Some((parent, key, full)),
                    _ => None,
                }
            };
            let (parent, key, key_path) = offending?;
            if !take_out(&mut value, &parent, &key) {
                return None;
            }
            if let Some(mapping) = key_path.strip_suffix(&format!(".{key}")) {
                self.cut.insert(mapping.to_owned());
            }
        }
    }

    fn listen_address(
        &mut self,
        path: &str,
        value: Option<Value>,
        default: &str,
    ) -> Option<SocketAddr> {
        let text: String = match value {
            None => default.to_owned(),
            Some(value) => self.section(Some(value), path)?,
        };
        if let Ok(address) = text.parse() {
            Some(address)
        } else {
            self.error_at_value(
                path,
                format!("invalid address \"{text}\": expected IP:PORT such as 0.0.0.0:8080 or [::]:8080"),
            );
            None
        }
    }

    /// `trusted_proxies`: every entry checked, each bad one reported at its place.
    fn trusted_proxies(&mut self, value: Option<Value>) -> Option<TrustedProxies> {
        let entries: Vec<String> = match value {
            None => return Some(TrustedProxies::default()),
            Some(value) => self.section(Some(value), "trusted_proxies")?,
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            match parse_range(entry) {
                Ok(range) => ranges.push(range),
                Err(error) => {
                    self.error_at_value(&format!("trusted_proxies[{i}]"), error.to_string());
                }
            }
        }
        (ranges.len() == entries.len()).then(|| TrustedProxies::new(ranges))
    }

    /// Checks a name written as a value (`name: chat`).
    fn name(&mut self, path: &str, kind: &str, name: &str) -> bool {
        let Some(message) = name_problem(kind, name) else {
            return true;
        };
        self.error_at_value(path, message);
        false
    }
}

/// Why `name` cannot name a `kind` (it becomes a metric label), if it cannot.
fn name_problem(kind: &str, name: &str) -> Option<String> {
    (!is_plain_name(name, b"_-.")).then(|| format!("invalid {kind} name \"{name}\": use 1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.` (it becomes a metric label)"))
}

/// Short, and only ASCII letters, digits and `extra`: safe as a metric label value.
fn is_plain_name(name: &str, extra: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Removes `key` from the mapping at `parent` below `value`; false when there is none.
fn take_out(value: &mut Value, parent: &[Segment], key: &str) -> bool {
    let mut at = value;
    for segment in parent {
        let next = match (segment, at) {
            (Segment::Map { key }, Value::Mapping(mapping)) => mapping.get_mut(key.as_str()),
            (Segment::Seq { index }, Value::Sequence(items)) => items.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else {
            return false;
        };
        at = next;
    }
    match at {
        Value::Mapping(mapping) => mapping.remove(key).is_some(),
        _ => false,
    }
}

/// The key path of the loader's `PATH: duplicate entry with key "KEY"` (or, at the top
/// level, without `PATH: `).
fn repeated_key_path(message: &str) -> Option<String> {
    const DUPLICATE: &str = "duplicate entry with key \"";
    let at = message.find(DUPLICATE)?;
    let key = message[at + DUPLICATE.len()..].strip_suffix('"')?;
    let mapping = message[..at].strip_suffix(": ").unwrap_or("");
    Some(join(mapping, key))
}
