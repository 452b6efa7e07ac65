//! The route table: which route owns a request path, and whether it takes the method.
//!
//! Built once per config and shared read-only, so matching a request takes no lock.
//! Matching is on the path exactly as received: a path that would only reach a route
//! after normalisation (`..`, `%2e%2e`, `%2f`) is refused before matching, because the
//! upstream might normalise it into something the route was never meant to expose.

use http::Method;

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Segment-aware: `/api/stream` matches `/api/stream` and `/api/stream/x`, never
    /// `/api/streaming`. Stored without a trailing slash (except `/` itself).
    Prefix(String),
    /// The whole path, exactly.
    Exact(String),
}

impl PathMatch {
    /// The literal path text of the match.
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Prefix(path) | PathMatch::Exact(path) => path,
        }
    }
}

/// One entry of the table.
#[derive(Debug)]
struct Entry<R> {
    path: PathMatch,
    methods: Option<Vec<Method>>,
    route: R,
}

/// Routes ordered by specificity: exact paths first, then longer prefixes first.
#[derive(Debug)]
pub(crate) struct RouteTable<R> {
    entries: Vec<Entry<R>>,
}

/// What the table says about a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RouteMatch<'a, R> {
    /// The route, and the length of the path it matched (the part a rewrite replaces).
    Found {
        route: &'a R,
        matched_len: usize,
    },
    /// The path is owned by one or more routes, none of which takes this method.
    MethodNotAllowed {
        allow: Vec<Method>,
        /// The first route on the owning path (config order): the route a 405 is
        /// logged and counted under, so it is not lost among unmatched requests.
        owner: &'a R,
    },
    NotFound,
    /// The path has dot segments or encoded separators; see the module docs.
    UnsafePath,
}

impl<R> RouteTable<R> {
    /// Builds the table; `routes` are `(path, methods, route)` in config order, which
    /// breaks ties between routes of equal specificity.
    pub(crate) fn new(
        routes: impl IntoIterator<Item = (PathMatch, Option<Vec<Method>>, R)>,
    ) -> Self {
        let mut entries: Vec<Entry<R>> = routes
            .into_iter()
            .map(|(path, methods, route)| Entry {
                path,
                methods,
                route,
            })
            .collect();
        // Stable sort: equal keys keep config order.
        entries.sort_by_key(|entry| match &entry.path {
            PathMatch::Exact(path) => (0, usize::MAX - path.len()),
            PathMatch::Prefix(path) => (1, usize::MAX - path.len()),
        });
        RouteTable { entries }
    }

    /// Finds the route for `path` (without the query) and `method`.
    ///
    /// The most specific matching path owns the request: when none of the routes on
    /// that path takes the method the answer is 405, not a fall-through to a shorter
    /// prefix, so adding a method-limited route never silently reroutes requests.
    pub(crate) fn find(&self, method: &Method, path: &str) -> RouteMatch<'_, R> {
        if !is_safe_path(path) {
            return RouteMatch::UnsafePath;
        }
        let Some(owner) = self.entries.iter().find(|e| matches(&e.path, path)) else {
            return RouteMatch::NotFound;
        };
        let mut allow: Vec<Method> = Vec::new();
        for entry in self.entries.iter().filter(|e| e.path == owner.path) {
            match &entry.methods {
                None => {
                    return RouteMatch::Found {
                        route: &entry.route,
                        matched_len: entry.path.as_str().len(),
                    }
                }
                Some(methods) if methods.contains(method) => {
                    return RouteMatch::Found {
                        route: &entry.route,
                        matched_len: entry.path.as_str().len(),
                    }
                }
                Some(methods) => {
                    for m in methods {
                        if !allow.contains(m) {
                            allow.push(m.clone());
                        }
                    }
                }
            }
        }
        RouteMatch::MethodNotAllowed {
            allow,
            owner: &owner.route,
        }
    }
}

fn matches(pattern: &PathMatch, path: &str) -> bool {
    match pattern {
        PathMatch::Exact(exact) => path == exact,
        PathMatch::Prefix(prefix) if prefix == "/" => path.starts_with('/'),
        PathMatch::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        },
    }
}

/// False for paths whose meaning changes under normalisation: dot segments (plain,
/// percent-encoded, or followed by `;` path parameters, which Tomcat and Spring drop
/// before resolving dots), encoded `/` or `\`, backslashes, and encodings some
/// servers decode into those: overlong UTF-8 (`%c0%ae` is a dot to a lenient decoder),
/// `%u` escapes (`%u002e`), any other malformed percent-encoding, and any of these
/// encoded twice (`%252e`, for an upstream that decodes twice). False too for bytes no
/// URI holds: raw non-ASCII (`．．／` is `../` to a server that normalises Unicode)
/// and control characters, raw or encoded (`..%00` is `..` to one that stops at NUL).
pub(crate) fn is_safe_path(path: &str) -> bool {
    // A URI holds printable ASCII as it is, and nothing else.
    if !path.starts_with('/') || path.contains('\\') || !path.bytes().all(|b| b.is_ascii_graphic())
    {
        return false;
    }
    path.split('/').all(is_safe_segment)
}

fn is_safe_segment(segment: &str) -> bool {
    if !segment.contains(['%', ';']) {
        return segment != "." && segment != "..";
    }
    let Some(decoded) = percent_decode(segment.as_bytes(), Malformed::Refused) else {
        return false;
    };
    // Encoded twice: judged as an upstream that decodes twice reads it, leniently, as
    // most decoders do: a `%` that starts no escape stays, and the rest is decoded.
    is_safe_decoded(&decoded)
        && (!decoded.contains(&b'%')
            || percent_decode(&decoded, Malformed::Kept)
                .is_some_and(|twice| is_safe_decoded(&twice)))
}

/// Whether a decoded segment is a name and nothing a server would read as more.
fn is_safe_decoded(decoded: &[u8]) -> bool {
    if decoded.contains(&b'/')
        || decoded.contains(&b'\\')
        || decoded.iter().any(u8::is_ascii_control)
        || is_overlong_utf8(decoded)
    {
        return false;
    }
    let name = decoded.split(|&b| b == b';').next().unwrap_or_default();
    name != b"." && name != b".."
}

/// What [`percent_decode`] does with a `%` that two hex digits do not follow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Malformed {
    /// No decoding: `None`.
    Refused,
    /// Kept as it is, as lenient decoders keep it.
    Kept,
}

/// The bytes of a percent-encoded segment; a `%` that two hex digits do not follow is
/// as `malformed` says.
fn percent_decode(bytes: &[u8], malformed: Malformed) -> Option<Vec<u8>> {
    // Two hex digits, no sign: `from_str_radix` would take `%+f`.
    let digit = |byte: u8| char::from(byte).to_digit(16);
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = match bytes.get(i..i + 3) {
            Some(&[b'%', high, low]) => digit(high).zip(digit(low)),
            _ => None,
        };
        match escape {
            Some((high, low)) => {
                decoded.push(u8::try_from(high * 16 + low).ok()?);
                i += 3;
            }
            None if bytes[i] == b'%' && malformed == Malformed::Refused => return None,
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    Some(decoded)
}

/// True when the bytes hold an overlong UTF-8 sequence (a character encoded in more
/// bytes than it needs), the classic way to smuggle `.` and `/` past a filter.
fn is_overlong_utf8(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        let next = bytes.get(i + 1).copied().unwrap_or(0);
        matches!(b, 0xC0 | 0xC1) || (b == 0xE0 && next < 0xA0) || (b == 0xF0 && next < 0x90)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable<&'static str> {
        RouteTable::new([
            (PathMatch::Prefix("/".into()), None, "root"),
            (PathMatch::Prefix("/api".into()), None, "api"),
            (
                PathMatch::Prefix("/api/stream".into()),
                Some(vec![Method::GET, Method::POST]),
                "stream",
            ),
            (
                PathMatch::Prefix("/api/stream".into()),
                Some(vec![Method::DELETE]),
                "cancel",
            ),
            (
                PathMatch::Exact("/api/stream/health".into()),
                None,
                "health",
            ),
        ])
    }

    fn found(m: RouteMatch<'_, &'static str>) -> Option<(&'static str, usize)> {
        match m {
            RouteMatch::Found { route, matched_len } => Some((*route, matched_len)),
            _ => None,
        }
    }

    #[test]
    fn longest_prefix_wins_segment_aware() {
        let t = table();
        assert_eq!(
            found(t.find(&Method::GET, "/api/stream")),
            Some(("stream", 11))
        );
        assert_eq!(
            found(t.find(&Method::GET, "/api/stream/x/y")),
            Some(("stream", 11))
        );
        assert_eq!(
            found(t.find(&Method::GET, "/api/streaming")),
            Some(("api", 4))
        );
        assert_eq!(found(t.find(&Method::GET, "/apis")), Some(("root", 1)));
        assert_eq!(
            found(t.find(&Method::GET, "/api/stream/health")),
            Some(("health", 18))
        );
    }

    #[test]
    fn routes_on_one_path_split_by_method() {
        let t = table();
        assert_eq!(
            found(t.find(&Method::DELETE, "/api/stream/1")),
            Some(("cancel", 11))
        );
        assert_eq!(
            t.find(&Method::PUT, "/api/stream"),
            RouteMatch::MethodNotAllowed {
                allow: vec![Method::GET, Method::POST, Method::DELETE],
                owner: &"stream",
            }
        );
    }

    #[test]
    fn no_route_is_not_found() {
        let t = RouteTable::new([(PathMatch::Prefix("/api".into()), None, "api")]);
        assert_eq!(t.find(&Method::GET, "/other"), RouteMatch::NotFound);
        assert_eq!(t.find(&Method::GET, "//api"), RouteMatch::NotFound);
    }

    #[test]
    fn normalising_tricks_are_refused() {
        let t = table();
        for path in [
            "/api/stream/../../admin",
            "/api/stream/%2e%2e/x",
            "/api/stream/%2E./x",
            "/api/stream/.%2e",
            "/api/stream/./x",
            "/api/stream%2f..%2fadmin",
            "/api/stream/%2F",
            "/api\\stream",
            "/api/stream/%5c..",
            "/api/stream/..;/admin",
            "/api/stream/..;jsessionid=1/admin",
            "/api/stream/.;x/admin",
            "/api/stream/%2e%2e%3b/admin",
            "/api/stream/%c0%ae%c0%ae/admin",
            "/api/stream/%C0%AE./admin",
            "/api/stream/%e0%80%ae/admin",
            "/api/stream%c0%afadmin",
            "/api/stream/%u002e%u002e/admin",
            "/api/stream/%zz",
            "/api/stream/%2",
            "*",
            "/api/stream/%252e%252e/admin",
            "/api/stream/%252e%252e%252fadmin%25",
            "/api/stream/%25zz%252f..%252f..%252fadmin",
            "/api/stream/%252F",
            "/api/stream/..%00/x",
            "/api/stream/%0d%0a",
            "/api/stream/\u{ff0e}\u{ff0e}\u{ff0f}admin",
            "/api/stream/caf\u{e9}",
            "/api/stream/a\tb",
            "/api/stream/a b",
        ] {
            assert_eq!(t.find(&Method::GET, path), RouteMatch::UnsafePath, "{path}");
        }
        assert!(is_safe_path("/api/stream/v1.2/x..y/.hidden"));
        assert!(is_safe_path("/api/stream/a;b=1/%20x/caf%C3%A9/...;x"));
        // A literal `%`, encoded once, stays a name.
        assert!(is_safe_path("/api/stream/100%25/%25zz/%252"));
    }
}
