//! Header lists: the comma-separated form many HTTP fields take (RFC 9110 section
//! 5.6.1), such as `Connection`, `Transfer-Encoding`, `Vary` and
//! `Access-Control-Request-Headers`. A list may come as several lines of one header
//! or as one line with commas, and a recipient must read both the same way; every
//! place that reads one goes through [`items`], so none of them tells the two apart.

use http::header::{AsHeaderName, HeaderMap};

/// The items of every line of the list header `name`, in order, trimmed, empty ones
/// left out. A line that is not visible ASCII is skipped whole, as if it were not
/// there (for `Transfer-Encoding`, the coding before it is then the last).
pub(crate) fn items<K: AsHeaderName>(headers: &HeaderMap, name: K) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderValue, CONNECTION};

    #[test]
    fn lines_and_commas_read_alike() {
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, HeaderValue::from_static(" keep-alive ,, x-a"));
        headers.append(CONNECTION, HeaderValue::from_static("x-b,"));
        headers.append(
            CONNECTION,
            HeaderValue::from_bytes(b"x-\xffc").expect("opaque"),
        );
        let read: Vec<&str> = items(&headers, CONNECTION).collect();
        assert_eq!(read, ["keep-alive", "x-a", "x-b"]);
        assert_eq!(items(&HeaderMap::new(), CONNECTION).count(), 0);
    }
}
