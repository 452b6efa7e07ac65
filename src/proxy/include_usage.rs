//! `stream.usage: request` on an `openai-chat` route: the gateway asks the upstream for
//! token usage that the client did not ask for.
//!
//! A Chat Completions stream reports usage only when the request says
//! `stream_options.include_usage: true`; the answer then ends with one extra chunk whose
//! `choices` is empty and which carries the usage. For a streaming request without it,
//! the body is read whole (within the route's `max_body_size` and `body_timeout`, as
//! any body is), the field is added, and the stream is told to read that chunk and
//! drop it, so a strict client never sees a chunk it did not ask for. A client that set
//! the field itself gets its body and its usage chunk untouched. Bodies that are not a
//! JSON object with `"stream": true` go up unchanged.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::Request;
use http_body_util::{BodyExt, Either, Full};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::ops::Range;

use crate::upstream::{ClientBodyError, ClientErrorKind, UpstreamBody, UpstreamError};

/// Reads the request's body and adds `stream_options.include_usage` when the client
/// streams without it. Returns the request to send and whether the field was added
/// (then the usage chunk is the gateway's, and must not reach the client).
pub(crate) async fn ask_for_usage(
    request: Request<UpstreamBody>,
) -> Result<(Request<UpstreamBody>, bool), UpstreamError> {
    let (mut parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let kind = error
                .downcast_ref::<ClientBodyError>()
                .map_or(ClientErrorKind::BadBody, ClientBodyError::kind);
            return Err(UpstreamError::ClientBody {
                kind,
                source: error,
            });
        }
    };
    let asked = with_include_usage(&body);
    let injected = asked.is_some();
    let body = asked.unwrap_or(body);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok((
        Request::from_parts(parts, Either::Right(Full::new(body))),
        injected,
    ))
}

/// The body with `stream_options.include_usage: true` added, when it is a streaming
/// Chat Completions request (a JSON object with `"stream": true`) that does not ask
/// for usage itself; `None` when it is left as it is.
///
/// The field is spliced into the bytes the client sent, which stay as they were around
/// it: member order, spacing, number spellings (`0.70`, an integer beyond 64 bits) and
/// escapes reach the upstream as written. A member written twice is read as its last
/// occurrence, as `serde_json` and Python's `json` read it.
pub(crate) fn with_include_usage(body: &[u8]) -> Option<Bytes> {
    let request: Members = serde_json::from_slice(body).ok()?;
    if request.get("stream")?.get() != "true" {
        return None;
    }
    let (replaced, insert) = match request.get("stream_options") {
        None => (
            after(body, request.last()?),
            r#","stream_options":{"include_usage":true}"#,
        ),
        Some(options) if options.get() == "null" => {
            (span(body, options), r#"{"include_usage":true}"#)
        }
        Some(options) => {
            // A `stream_options` that is no object is the upstream's to refuse.
            let members: Members = serde_json::from_str(options.get()).ok()?;
            match (members.get("include_usage"), members.last()) {
                (Some(asked), _) if asked.get() == "true" => return None,
                (Some(declined), _) => (span(body, declined), "true"),
                (None, Some(last)) => (after(body, last), r#","include_usage":true"#),
                (None, None) => (span(body, options), r#"{"include_usage":true}"#),
            }
        }
    };
    let mut edited = Vec::with_capacity(body.len() + insert.len());
    edited.extend_from_slice(&body[..replaced.start]);
    edited.extend_from_slice(insert.as_bytes());
    edited.extend_from_slice(&body[replaced.end..]);
    Some(Bytes::from(edited))
}

/// A JSON object's members in the order written, each value as the bytes it was
/// written as (borrowed from the body, so its place in the body is known).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Members<'a> {
    /// The value of `key`, the last one when the key is written twice.
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The value written last, after which a new member goes.
    fn last(&self) -> Option<&'a RawValue> {
        self.0.last().map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

/// Where `value` lies in `body`, of which it is a slice.
fn span(body: &[u8], value: &RawValue) -> Range<usize> {
    let start = value.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + value.get().len()
}

/// The empty range right after `value`, where a member is inserted.
fn after(body: &[u8], value: &RawValue) -> Range<usize> {
    let end = span(body, value).end;
    end..end
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn added(body: &Value) -> Option<Value> {
        with_include_usage(body.to_string().as_bytes())
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn a_streaming_request_without_include_usage_gets_it() {
        let request =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true});
        let mut want = request.clone();
        want["stream_options"] = json!({"include_usage": true});
        assert_eq!(added(&request), Some(want));
        // Other options are kept; false and null are replaced.
        let with_options =
            json!({"stream": true, "stream_options": {"include_obfuscation": false}});
        assert_eq!(
            added(&with_options).unwrap()["stream_options"],
            json!({"include_obfuscation": false, "include_usage": true})
        );
        let declined = json!({"stream": true, "stream_options": {"include_usage": false}});
        assert_eq!(
            added(&declined).unwrap()["stream_options"],
            json!({"include_usage": true})
        );
        let null = json!({"stream": true, "stream_options": null});
        assert_eq!(
            added(&null).unwrap()["stream_options"],
            json!({"include_usage": true})
        );
    }

    #[test]
    fn everything_else_is_left_as_it_is() {
        assert_eq!(
            added(&json!({"stream": true, "stream_options": {"include_usage": true}})),
            None
        );
        assert_eq!(
            added(&json!({"model": "m", "messages": []})),
            None,
            "not streaming"
        );
        assert_eq!(added(&json!({"stream": "true"})), None);
        assert_eq!(added(&json!({"stream": true, "stream_options": 1})), None);
        assert_eq!(added(&json!([1, 2])), None);
        assert_eq!(with_include_usage(b"not json"), None);
        assert_eq!(with_include_usage(b""), None);
    }

    #[test]
    fn every_other_byte_goes_up_as_the_client_wrote_it() {
        let cases: [(&str, &str); 6] = [
            (
                "{\"seed\": 123456789012345678901234567890, \"temperature\": 0.70,\n \"stream\": true }",
                "{\"seed\": 123456789012345678901234567890, \"temperature\": 0.70,\n \"stream\": true,\"stream_options\":{\"include_usage\":true} }",
            ),
            (
                r#"{"stream":true,"content":"caf\u00e9","stream_options":{"include_obfuscation":false},"z":1}"#,
                r#"{"stream":true,"content":"caf\u00e9","stream_options":{"include_obfuscation":false,"include_usage":true},"z":1}"#,
            ),
            (
                r#"{"stream_options": { "include_usage" : false }, "stream": true}"#,
                r#"{"stream_options": { "include_usage" : true }, "stream": true}"#,
            ),
            (
                r#"{"stream_options": null, "stream": true}"#,
                r#"{"stream_options": {"include_usage":true}, "stream": true}"#,
            ),
            (
                r#"{"stream_options": { }, "stream": true}"#,
                r#"{"stream_options": {"include_usage":true}, "stream": true}"#,
            ),
            // Written twice, the last one counts: that is the one edited.
            (
                r#"{"stream_options":{"include_usage":true},"stream":true,"stream_options":{}}"#,
                r#"{"stream_options":{"include_usage":true},"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
        ];
        for (sent, want) in cases {
            let got = with_include_usage(sent.as_bytes()).expect(sent);
            assert_eq!(std::str::from_utf8(&got).unwrap(), want);
        }
        // The last `stream` counts too.
        assert_eq!(
            with_include_usage(br#"{"stream":true,"stream":false}"#),
            None
        );
    }
}
