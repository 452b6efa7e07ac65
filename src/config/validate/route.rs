//! The `routes` section: each route deserialized on its own (match, methods, request
//! plan, stream), then the cross-route checks (unknown upstreams, duplicate names,
//! overlapping matches).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use http::{HeaderName, HeaderValue, Method};
use serde_yaml::Value;

use super::{join, raw, Validator};
use crate::config::{defaults, PathMatch, RequestPlan, RouteConfig, UpstreamConfig};
use crate::hop_by_hop::is_hop_by_hop;

/// Headers to set (name, value) and to remove.
type HeaderEdits = (Vec<(HeaderName, HeaderValue)>, Vec<HeaderName>);

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        value: Option<Value>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        declared: &BTreeSet<String>,
    ) -> Vec<RouteConfig> {
        let mut routes: Vec<RouteConfig> = Vec::new();
        // Present but not a list: `section` says so, and that is its one problem.
        let missing = matches!(value, None | Some(Value::Null));
        let Some(items) = self.section::<Vec<Value>>(value, "routes") else {
            if missing {
                self.error_at_value("", "missing `routes`: define at least one route");
            }
            return routes;
        };
        if items.is_empty() {
            self.error_at_value("routes", "no routes: define at least one");
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        // By path, so each route is compared with the few on its own path, not with
        // every other (a generated file with 20,000 routes took seconds).
        let mut by_path: BTreeMap<(bool, String), Vec<(usize, Methods)>> = BTreeMap::new();
        for (index, value) in items.into_iter().enumerate() {
            let path = format!("routes[{index}]");
            // The cross-route checks read the name and match straight from the YAML, so
            // they run even on a route with shape problems: every problem in one pass.
            let key = RouteKey::of(&value);
            if let Some(route) = self.route_sections(&path, value, upstreams) {
                routes.push(route);
            }
            if let Some(upstream) = key.upstream.filter(|u| !declared.contains(u)) {
                let known: Vec<&str> = declared.iter().map(String::as_str).collect();
                self.error_at_value(
                    &join(&path, "upstream"),
                    format!(
                        "unknown upstream \"{upstream}\" (defined: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            let name = key.name.clone().unwrap_or_default();
            if let Some(name) = key.name {
                if let Some(first) = names.get(&name) {
                    self.error_at_value(
                        &join(&path, "name"),
                        format!("duplicate route name \"{name}\" (also routes[{first}].name)"),
                    );
                } else {
                    names.insert(name.clone(), index);
                }
            }
            let Some((exact, route_path, methods)) = key.matcher else {
                continue;
            };
            let same_path = by_path.entry((exact, route_path.clone())).or_default();
            let overlapping = same_path
                .iter()
                .find(|(_, other)| methods_overlap(other.as_ref(), methods.as_ref()))
                .map(|(other, _)| *other);
            same_path.push((index, methods));
            if let Some(other) = overlapping {
                self.error_at_value(
                    &join(&path, "match"),
                    format!(
                        "route \"{name}\" matches the same path {route_path} as routes[{other}] with overlapping methods: give one of them another path or disjoint methods"
                    ),
                );
            }
        }
        routes
    }

    /// Deserializes a route with its `request`, `stream`, `cors` and `response` sections
    /// each on its own, so a problem in one does not hide those of the others; a
    /// section that failed is validated as absent, and the route is dropped.
    fn route_sections(
        &mut self,
        path: &str,
        mut value: Value,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Option<RouteConfig> {
        let mut take = |key: &str| match &mut value {
            Value::Mapping(mapping) => mapping.remove(key),
            _ => None,
        };
        let (request, stream, cors, response) = (
            take("request"),
            take("stream"),
            take("cors"),
            take("response"),
        );
        let (limits, retry) = (take("limits"), take("retry"));
        let raw = self.section::<raw::Route>(Some(value), path);
        let mut whole = true;
        let request: Option<raw::Request> = self.part(path, "request", request, &mut whole);
        let stream: Option<raw::Stream> = self.part(path, "stream", stream, &mut whole);
        let cors: Option<raw::Cors> = self.part(path, "cors", cors, &mut whole);
        let response: Option<raw::RouteResponse> =
            self.part(path, "response", response, &mut whole);
        let limits: Option<raw::Limits> = self.part(path, "limits", limits, &mut whole);
        let retry: Option<raw::Retry> = self.part(path, "retry", retry, &mut whole);
        let mut raw: raw::Route = raw?;
        raw.limits = limits;
        raw.retry = retry;
        raw.request = request.unwrap_or_default();
        raw.stream = stream;
        raw.cors = cors;
        raw.response = response.unwrap_or_default();
        let route = self.route(path, raw, upstreams);
        route.filter(|_| whole)
    }

    /// One section of a route, if present; clears `whole` when it fails.
    fn part<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        key: &str,
        value: Option<Value>,
        whole: &mut bool,
    ) -> Option<T> {
        let parsed = self.section(Some(value?), &join(path, key));
        *whole &= parsed.is_some();
        parsed
    }

    fn route(
        &mut self,
        path: &str,
        raw: raw::Route,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Option<RouteConfig> {
        let mut ok = self.name(&join(path, "name"), "route", &raw.name);

        let match_path = join(path, "match");
        let path_match = match (raw.matcher.path_prefix, raw.matcher.path) {
            (Some(prefix), None) => self
                .route_path(&join(&match_path, "path_prefix"), &prefix)
                .map(|p| PathMatch::Prefix(trim_trailing_slash(p))),
            (None, Some(exact)) => self
                .route_path(&join(&match_path, "path"), &exact)
                .map(PathMatch::Exact),
            _ => {
                self.error_at_value(&match_path, "give exactly one of `path_prefix` or `path`");
                None
            }
        };

        let methods = match raw.matcher.methods {
            None => None,
            Some(names) if names.is_empty() => {
                self.error_at_value(
                    &format!("{match_path}.methods"),
                    "an empty list matches no request: list the methods (such as [GET, POST]) or leave `methods` out for all",
                );
                ok = false;
                None
            }
            Some(names) => {
                let mut methods = Vec::with_capacity(names.len());
                for (i, name) in names.iter().enumerate() {
                    match self.method(&format!("{match_path}.methods[{i}]"), name) {
                        Some(method) => methods.push(method),
                        None => ok = false,
                    }
                }
                Some(methods)
            }
        };

        // An unknown upstream is reported by `routes` (a cross-field check, made even
        // when the route has shape problems); a declared but broken one has its own.
        if !upstreams.contains_key(&raw.upstream) {
            ok = false;
        }

        let request = self.request_plan(&join(path, "request"), raw.request);
        let stream = match raw.stream {
            None => Some(None),
            Some(stream) => self.stream(&join(path, "stream"), stream).map(Some),
        };
        let cors = match raw.cors {
            None => Some(None),
            Some(cors) => self.cors(&join(path, "cors"), cors).map(Some),
        };
        let response = self.response_plan(&join(path, "response"), raw.response);
        let limits = match raw.limits {
            None => Some(None),
            Some(limits) => self.limits(&join(path, "limits"), limits).map(Some),
        };
        let retry = match raw.retry {
            None => Some(None),
            Some(retry) => self.retry(&join(path, "retry"), retry).map(Some),
        };
        if !ok {
            return None;
        }
        Some(RouteConfig {
            name: raw.name,
            path: path_match?,
            methods,
            upstream: raw.upstream,
            request: request?,
            stream: stream?,
            cors: cors?,
            response: response?,
            limits: limits?,
            retry: retry?,
        })
    }

    /// A route or rewrite path: absolute, and free of anything that normalises to
    /// another path (so what is matched is what is meant).
    fn route_path(&mut self, path: &str, value: &str) -> Option<String> {
        let problem = if !value.starts_with('/') {
            Some("it must start with /")
        } else if value.contains(['?', '#', '%', '\\']) {
            Some("it must be a plain path without ?, #, % or \\")
        } else if value.contains("//")
            || value
                .split('/')
                .any(|segment| segment == "." || segment == "..")
        {
            Some("it must not contain //, /./ or /../")
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.error_at_value(path, format!("invalid path \"{value}\": {problem}"));
                None
            }
            None => Some(value.to_owned()),
        }
    }

    fn method(&mut self, path: &str, name: &str) -> Option<Method> {
        let upper = name.to_ascii_uppercase();
        if let Some(method) = standard_method(&upper) {
            Some(method)
        } else {
            self.error_at_value(
                path,
                format!(
                    "invalid HTTP method \"{name}\": use a standard method ({})",
                    STANDARD_METHODS.join(", ")
                ),
            );
            None
        }
    }

    fn request_plan(&mut self, path: &str, raw: raw::Request) -> Option<RequestPlan> {
        let mut ok = true;
        let path_prefix = match raw.path_prefix {
            None => None,
            Some(prefix) => {
                let checked = self.route_path(&join(path, "path_prefix"), &prefix);
                ok &= checked.is_some();
                checked.map(trim_trailing_slash)
            }
        };
        let method = match raw.method {
            None => None,
            Some(name) => {
                let checked = self.method(&join(path, "method"), &name);
                ok &= checked.is_some();
                checked
            }
        };

        let headers = self.header_edits(&join(path, "headers"), raw.headers, Self::header_name);
        ok &= headers.is_some();
        let (set_headers, remove_headers) = headers.unwrap_or_default();
        ok.then(|| RequestPlan {
            path_prefix,
            method,
            body: raw.body.unwrap_or_default(),
            max_body_size: raw.max_body_size.map_or(defaults::MAX_BODY_SIZE, |s| s.0),
            body_timeout: raw.body_timeout.map_or(defaults::BODY_TIMEOUT, |d| d.0),
            set_headers,
            remove_headers,
        })
    }

    /// A `headers: { set, remove }` section: each name checked by `check_name`, each
    /// value visible ASCII; a value from the environment is marked sensitive (kept out
    /// of debug output). `None` when anything is wrong (every problem is reported).
    pub(super) fn header_edits(
        &mut self,
        path: &str,
        raw: raw::Headers,
        check_name: fn(&mut Self, &str, &str) -> Option<HeaderName>,
    ) -> Option<HeaderEdits> {
        let mut ok = true;
        let mut set = Vec::with_capacity(raw.set.len());
        // The names as written, beside `set`.
        let mut written: Vec<String> = Vec::with_capacity(raw.set.len());
        for (name, value) in raw.set {
            let value_path = format!("{path}.set.{name}");
            let Some(header) = check_name(self, &value_path, &name) else {
                ok = false;
                continue;
            };
            // Names differ only in case: both would be sent as one, and which value
            // won would be an accident of the map's order.
            if let Some(first) = set.iter().position(|(known, _)| *known == header) {
                // Reported at the one written later, whatever the map's order.
                let first = written[first].as_str();
                let at = |name: &str| {
                    self.locations
                        .key(&format!("{path}.set.{name}"))
                        .map(|p| (p.line, p.column))
                };
                let (later, earlier) = if at(first) > at(&name) {
                    (first, name.as_str())
                } else {
                    (name.as_str(), first)
                };
                self.error_at_key(
                    &format!("{path}.set.{later}"),
                    format!("header {later} is set twice (also as {earlier}): header names ignore case, keep one"),
                );
                ok = false;
                continue;
            }
            if let Ok(mut header_value) = HeaderValue::from_str(&value) {
                header_value.set_sensitive(self.from_environment.contains(&value_path));
                set.push((header, header_value));
                written.push(name);
            } else {
                self.error_at_value(
                    &value_path,
                    format!("invalid value for header {name}: visible ASCII only, no line breaks"),
                );
                ok = false;
            }
        }
        let mut remove = Vec::with_capacity(raw.remove.len());
        for (i, name) in raw.remove.iter().enumerate() {
            match check_name(self, &format!("{path}.remove[{i}]"), name) {
                Some(header) => remove.push(header),
                None => ok = false,
            }
        }
        ok.then_some((set, remove))
    }

    pub(super) fn header_name(&mut self, path: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_str(name) {
            Ok(header) if is_hop_by_hop(&header) || header == http::header::HOST => {
                self.error_at_key(
                    path,
                    format!("header {name} is managed by the gateway per connection and cannot be configured"),
                );
                None
            }
            Ok(header) => Some(header),
            Err(_) => {
                self.error_at_key(path, format!("invalid header name \"{name}\""));
                None
            }
        }
    }
}

/// A route's methods; `None` takes every method.
type Methods = Option<Vec<Method>>;

/// What the cross-route checks need, read leniently from a route's YAML: whatever of
/// it is well-formed (the route's own validation reports the rest).
struct RouteKey {
    name: Option<String>,
    upstream: Option<String>,
    /// (exact, path, methods); `None` methods take every method.
    matcher: Option<(bool, String, Methods)>,
}

impl RouteKey {
    fn of(value: &Value) -> RouteKey {
        let name = value.get("name").and_then(Value::as_str).map(str::to_owned);
        let matcher = value.get("match").and_then(|m| {
            let path_of = |key: &str| m.get(key).and_then(Value::as_str).map(str::to_owned);
            let (exact, path) = match (path_of("path_prefix"), path_of("path")) {
                (Some(prefix), None) => (false, trim_trailing_slash(prefix)),
                (None, Some(exact)) => (true, exact),
                _ => return None,
            };
            let methods = match m.get("methods") {
                None => None,
                Some(list) => Some(
                    list.as_sequence()?
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(|name| standard_method(&name.to_ascii_uppercase()))
                        .collect(),
                ),
            };
            Some((exact, path, methods))
        });
        let upstream = value
            .get("upstream")
            .and_then(Value::as_str)
            .map(str::to_owned);
        RouteKey {
            name,
            upstream,
            matcher,
        }
    }
}

/// The methods of RFC 9110 and RFC 5789 (PATCH); any other token is refused, since
/// a misspelt method would be a valid token that no client ever sends.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn standard_method(upper: &str) -> Option<Method> {
    STANDARD_METHODS
        .contains(&upper)
        .then(|| Method::from_str(upper).ok())
        .flatten()
}

fn trim_trailing_slash(path: String) -> String {
    match path.trim_end_matches('/') {
        "" => "/".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

fn methods_overlap(a: Option<&Vec<Method>>, b: Option<&Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}
