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
use serde_json::{Map, Value};

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
pub(crate) fn with_include_usage(body: &[u8]) -> Option<Bytes> {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    if request.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let options = request
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if options.is_null() {
        *options = Value::Object(Map::new());
    }
    // A `stream_options` that is no object is the upstream's to refuse.
    let options = options.as_object_mut()?;
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return None;
    }
    options.insert("include_usage".to_owned(), Value::Bool(true));
    serde_json::to_vec(&request).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
}
