//! The `routes` list: each route on its own (its match, upstream, request plan and
//! headers), then what routes may not share: a name, or a path with overlapping
//! methods.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use http::{HeaderName, HeaderValue, Method};
use serde_yaml::Value;

use super::{join, Validator};
use crate::config::{defaults, raw, PathMatch, RequestPlan, RouteConfig, UpstreamConfig};
use crate::proxy::request::is_hop_by_hop;

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        value: Option<Value>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        declared: &BTreeSet<String>,
    ) -> Vec<RouteConfig> {
        let mut routes: Vec<RouteConfig> = Vec::new();
        let Some(items) = self.section::<Vec<Value>>(value, "routes") else {
            self.error_at_value("", "missing `routes`: define at least one route");
            return routes;
        };
        if items.is_empty() {
            self.error_at_value("routes", "no routes: define at least one");
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        // By path, so each route is compared with the few on its own path, not with
        // every other (a generated file with 20,000 routes took seconds).
        let mut by_path: BTreeMap<(bool, String), Vec<usize>> = BTreeMap::new();
        for (index, value) in items.into_iter().enumerate() {
            let path = format!("routes[{index}]");
            let Some(raw) = self.section::<raw::Route>(Some(value), &path) else {
                continue;
            };
            let Some(route) = self.route(&path, raw, upstreams, declared) else {
                continue;
            };
            if let Some(first) = names.insert(route.name.clone(), index) {
                self.error_at_value(
                    &join(&path, "name"),
                    format!(
                        "duplicate route name \"{}\" (also routes[{first}].name)",
                        route.name
                    ),
                );
            }
            let exact = matches!(route.path, PathMatch::Exact(_));
            let same_path = by_path
                .entry((exact, route.path.as_str().to_owned()))
                .or_default();
            let overlapping = same_path
                .iter()
                .find(|&&other| methods_overlap(&routes[other].methods, &route.methods))
                .copied();
            same_path.push(routes.len());
            if let Some(other) = overlapping {
                self.error_at_value(
                    &join(&path, "match"),
                    format!(
                        "route \"{}\" matches the same path {} as routes[{other}] with overlapping methods: give one of them another path or disjoint methods",
                        route.name,
                        route.path.as_str()
                    ),
                );
            }
            routes.push(route);
        }
        routes
    }

    fn route(
        &mut self,
        path: &str,
        raw: raw::Route,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        declared: &BTreeSet<String>,
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

        if !declared.contains(&raw.upstream) {
            let known: Vec<&str> = declared.iter().map(String::as_str).collect();
            self.error_at_value(
                &join(path, "upstream"),
                format!(
                    "unknown upstream \"{}\" (defined: {})",
                    raw.upstream,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            ok = false;
        } else if !upstreams.contains_key(&raw.upstream) {
            ok = false;
        }

        let request = self.request_plan(&join(path, "request"), raw.request);
        let stream = match raw.stream {
            None => Some(None),
            Some(stream) => self.stream(&join(path, "stream"), stream).map(Some),
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
        match Method::from_str(&upper) {
            Ok(method) if !upper.is_empty() => Some(method),
            _ => {
                self.error_at_value(
                    path,
                    format!("invalid HTTP method \"{name}\" (such as GET or POST)"),
                );
                None
            }
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

        let headers_path = join(path, "headers");
        let mut set_headers = Vec::with_capacity(raw.headers.set.len());
        for (name, value) in raw.headers.set {
            let value_path = format!("{headers_path}.set.{name}");
            match self.header_name(&value_path, &name) {
                Some(header) => match HeaderValue::from_str(&value) {
                    Ok(mut header_value) => {
                        if self.from_environment.contains(&value_path) {
                            header_value.set_sensitive(true);
                        }
                        set_headers.push((header, header_value));
                    }
                    Err(_) => {
                        self.error_at_value(
                            &value_path,
                            format!("invalid value for header {name}: visible ASCII only, no line breaks"),
                        );
                        ok = false;
                    }
                },
                None => ok = false,
            }
        }
        let mut remove_headers = Vec::with_capacity(raw.headers.remove.len());
        for (i, name) in raw.headers.remove.iter().enumerate() {
            match self.header_name(&format!("{headers_path}.remove[{i}]"), name) {
                Some(header) => remove_headers.push(header),
                None => ok = false,
            }
        }
        ok.then(|| RequestPlan {
            path_prefix,
            method,
            body: raw.body.unwrap_or_default(),
            max_body_size: raw.max_body_size.map_or(defaults::MAX_BODY_SIZE, |s| s.0),
            set_headers,
            remove_headers,
        })
    }

    fn header_name(&mut self, path: &str, name: &str) -> Option<HeaderName> {
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

fn trim_trailing_slash(path: String) -> String {
    match path.trim_end_matches('/') {
        "" => "/".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

fn methods_overlap(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}
