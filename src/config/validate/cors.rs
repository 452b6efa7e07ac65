//! A route's browser-facing edge: the `cors` section (which origins may read its
//! responses) and the `response` section (headers set on or removed from every
//! response).

use std::str::FromStr;

use http::HeaderName;

use super::{join, raw, Validator};
use crate::config::{AllowOrigins, CorsConfig, ResponsePlan};

/// Headers whose value frames the response body: the gateway writes them, so a
/// configured value could only corrupt a stream.
const FRAMING: [HeaderName; 1] = [http::header::CONTENT_LENGTH];

impl Validator<'_> {
    pub(super) fn cors(&mut self, path: &str, raw: raw::Cors) -> Option<CorsConfig> {
        let mut ok = true;
        let credentials = raw.allow_credentials.unwrap_or(false);
        let origins_path = join(path, "allow_origins");
        let mut any = false;
        let mut origins = Vec::with_capacity(raw.allow_origins.len());
        if raw.allow_origins.is_empty() {
            self.error_at_value(
                &origins_path,
                "no origins: list the origins that may read this route, such as https://app.example.com",
            );
            ok = false;
        }
        for (i, origin) in raw.allow_origins.iter().enumerate() {
            let origin_path = format!("{origins_path}[{i}]");
            if origin == "*" {
                any = true;
                if credentials {
                    self.error_at_value(
                        &origin_path,
                        "`*` cannot go with allow_credentials: true (browsers refuse it, and echoing any origin would let every site read with the user's cookies): list the origins",
                    );
                    ok = false;
                }
                continue;
            }
            match origin_problem(origin) {
                None => origins.push(origin.to_ascii_lowercase()),
                Some(problem) => {
                    self.error_at_value(
                        &origin_path,
                        format!("invalid origin \"{origin}\": {problem}"),
                    );
                    ok = false;
                }
            }
        }
        let mut allow_headers = Vec::with_capacity(raw.allow_headers.len());
        for (i, name) in raw.allow_headers.iter().enumerate() {
            if let Ok(header) = HeaderName::from_str(name) {
                allow_headers.push(header);
            } else {
                self.error_at_value(
                    &format!("{path}.allow_headers[{i}]"),
                    format!("invalid header name \"{name}\""),
                );
                ok = false;
            }
        }
        let allow_origins = if any {
            AllowOrigins::Any
        } else {
            AllowOrigins::List(origins)
        };
        ok.then(|| CorsConfig {
            allow_origins,
            allow_credentials: credentials,
            allow_headers,
            max_age: raw.max_age.map(|d| d.0),
        })
    }

    pub(super) fn response_plan(
        &mut self,
        path: &str,
        raw: raw::RouteResponse,
    ) -> Option<ResponsePlan> {
        let mut ok = true;
        let headers = self.header_edits(&join(path, "headers"), raw.headers, Self::response_header);
        ok &= headers.is_some();
        let (set_headers, remove_headers) = headers.unwrap_or_default();
        ok.then_some(ResponsePlan {
            set_headers,
            remove_headers,
        })
    }

    /// A header name a response section may name: not hop-by-hop (they are removed
    /// anyway, reusing the request side's check), not one that frames the body.
    fn response_header(&mut self, path: &str, name: &str) -> Option<HeaderName> {
        let header = self.header_name(path, name)?;
        if FRAMING.contains(&header) {
            self.error_at_key(
                path,
                format!("header {name} frames the response body and is managed by the gateway"),
            );
            return None;
        }
        Some(header)
    }
}

/// Why `origin` is not a serialized origin a browser sends (`scheme://host[:port]`,
/// nothing after it); `None` when it is one.
fn origin_problem(origin: &str) -> Option<&'static str> {
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return Some("expected http:// or https:// and a host, such as https://app.example.com");
    };
    if authority.is_empty() {
        return Some("it has no host");
    }
    if authority.contains(['/', '?', '#']) {
        return Some("an origin has no path: a browser sends scheme://host[:port] only, without a trailing /");
    }
    if authority.contains('@') || http::uri::Authority::from_str(authority).is_err() {
        return Some("the host is not a valid host[:port]");
    }
    // Compared as the browser sends it: a port it would never send matches nothing.
    // No port: nothing more to check.
    let (_, port) = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.starts_with('[') || host.ends_with(']'))?;
    // As a browser writes it: digits, no sign, no leading zero.
    let number = port
        .parse::<u16>()
        .ok()
        .filter(|_| port.bytes().all(|b| b.is_ascii_digit()) && !port.starts_with('0'));
    let default_port = if origin.starts_with("https://") {
        443
    } else {
        80
    };
    match number {
        None => Some("the port must be a number from 1 to 65535, as a browser writes it (no sign, no leading zero)"),
        Some(port) if port == default_port => Some(
            "a browser leaves the scheme's default port out of its Origin, so this never matches: remove the port",
        ),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::origin_problem;

    #[test]
    fn origins_are_what_browsers_send() {
        for good in [
            "https://app.example.com",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://[::1]:5173",
            "https://app.example.com:8443",
            "http://app.example.com:443",
        ] {
            assert_eq!(origin_problem(good), None, "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "null",
            "ftp://files.example.com",
            "https://",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "http://app.example.com:99999",
            "http://app.example.com:0",
            "http://app.example.com:08080",
            "http://app.example.com:+8080",
            "http://app.example.com:0080",
        ] {
            assert!(origin_problem(bad).is_some(), "{bad}");
        }
    }
}
