//! The error shapes: the JSON body of an error the gateway reports, before the
//! headers or inside a stream, in the shape each protocol's SDK raises on
//! (`docs/protocols.md`). The generic shape serves `sse` routes and requests no route
//! matched.

use bytes::Bytes;
use serde_json::json;

use super::Protocol;

#[derive(serde::Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

/// Field order is the documented order: `type`, `message`, `route`.
#[derive(serde::Serialize)]
struct ErrorObject<'a> {
    #[serde(rename = "type")]
    error_type: &'a str,
    message: &'a str,
    route: Option<&'a str>,
}

/// The JSON error object; `route` is `null` when no route was matched.
pub(crate) fn error_json(error_type: &str, message: &str, route: Option<&str>) -> Bytes {
    let envelope = ErrorEnvelope {
        error: ErrorObject {
            error_type,
            message,
            route,
        },
    };
    // Serializing borrowed strings into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// The JSON error object in `protocol`'s shape. `sequence_number`, given only inside a
/// stream, makes the Responses shape the API's `error` event; before the headers the
/// Responses API answers like Chat Completions.
pub(crate) fn error_json_in(
    protocol: Protocol,
    error_type: &str,
    message: &str,
    route: Option<&str>,
    sequence_number: Option<u64>,
) -> Bytes {
    let value = match (protocol, sequence_number) {
        (Protocol::Sse, _) => return error_json(error_type, message, route),
        (Protocol::Anthropic, _) => json!({
            "type": "error",
            "error": { "type": error_type, "message": message },
        }),
        (Protocol::OpenaiResponses, Some(sequence_number)) => json!({
            "type": "error",
            "code": error_type,
            "message": message,
            "param": null,
            "sequence_number": sequence_number,
            // The flat fields are the API's error event; the nested object is what
            // makes the openai Python SDK raise.
            "error": { "type": error_type, "code": error_type, "message": message, "param": null },
        }),
        (Protocol::OpenaiChat | Protocol::OpenaiResponses, _) => json!({
            "error": { "message": message, "type": error_type, "param": null, "code": error_type },
        }),
    };
    Bytes::from(value.to_string())
}
