//! One request's trace: the server span that lasts until the response body is done
//! (for a stream: its outcome, not its headers), and the client span of the upstream
//! request, whose `traceparent` goes upstream.
//!
//! Spans are started and finished once per request, and touched in between only by
//! rare things (stuck, unstuck, the end of the stream), never per event.

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use crate::protocol::FinishReasons;

/// The facts of a finished request, as its log line has them.
#[derive(Debug, Default)]
pub(crate) struct Finished<'a> {
    /// The status sent; `None` when the client left before any response.
    pub status: Option<u16>,
    pub bytes: u64,
    /// How a plain request ended, or a stream's outcome.
    pub end: &'a str,
    /// Supervised streams only.
    pub stream: Option<StreamFacts>,
}

/// What a supervised stream adds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StreamFacts {
    pub events: u64,
    pub rules_hit: u64,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Seconds from the request's start to the first content event.
    pub time_to_first_chunk: Option<f64>,
    pub finish_reasons: FinishReasons,
    /// The outcome is an error the client was told about.
    pub error: bool,
}

/// A request's spans; ended when dropped.
#[derive(Debug)]
pub(crate) struct RequestTrace {
    tracer: SdkTracer,
    /// Holds the server span.
    server: Context,
    /// Holds the client span, once the upstream request is sent.
    client: Option<Context>,
    /// The client span's `url.full`, written when it ends: each attempt of a retry
    /// goes to its own endpoint, and a span attribute set twice is exported twice.
    client_url: Option<String>,
}

impl RequestTrace {
    pub(super) fn start(
        tracer: &SdkTracer,
        parent: &Context,
        method: &str,
        path: &str,
        request_id: &str,
    ) -> RequestTrace {
        let span = tracer
            .span_builder(method.to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("url.path", path.to_owned()),
                KeyValue::new("sse_gateway.request_id", request_id.to_owned()),
            ])
            .start_with_context(tracer, parent);
        RequestTrace {
            tracer: tracer.clone(),
            server: parent.with_span(span),
            client: None,
            client_url: None,
        }
    }

    /// The route is known: the span is named after it.
    pub(crate) fn set_route(&self, method: &str, route: &str, upstream: &str) {
        let span = self.server.span();
        span.update_name(format!("{method} {route}"));
        span.set_attributes([
            KeyValue::new("sse_gateway.route", route.to_owned()),
            KeyValue::new("sse_gateway.upstream", upstream.to_owned()),
        ]);
    }

    /// Starts the client span of the upstream request and writes its `traceparent`
    /// (and the client's `tracestate`) into the upstream request's headers.
    pub(crate) fn start_upstream(&mut self, method: &str, upstream: &str, headers: &mut HeaderMap) {
        let span = self
            .tracer
            .span_builder(format!("{method} {upstream}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("sse_gateway.upstream", upstream.to_owned()),
            ])
            .start_with_context(&self.tracer, &self.server);
        let client = self.server.with_span(span);
        TraceContextPropagator::new().inject_context(&client, &mut HeaderInjector(headers));
        // The propagator writes `tracestate` even when it is empty, which W3C Trace
        // Context asks senders to leave out.
        if headers
            .get("tracestate")
            .is_some_and(http::HeaderValue::is_empty)
        {
            headers.remove("tracestate");
        }
        self.client = Some(client);
    }

    /// An attempt of the request goes to `url`.
    pub(crate) fn upstream_url(&mut self, url: String) {
        if self.client.is_some() {
            self.client_url = Some(url);
        }
    }

    /// The upstream answered with `status` (its response headers).
    pub(crate) fn upstream_status(&self, status: u16) {
        if let Some(client) = &self.client {
            client.span().set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
    }

    /// Something happened to the stream: `stuck`, `unstuck`, `terminator`,
    /// `error_event`, `upstream_error_event`. (A resumed stream adds `resume` here.)
    pub(crate) fn event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        self.server.span().add_event(name, attributes);
    }

    /// Writes the request's facts and ends both spans.
    pub(crate) fn finish(self, facts: &Finished<'_>) {
        let span = self.server.span();
        let mut attributes = vec![
            KeyValue::new("sse_gateway.bytes", saturating(facts.bytes)),
            KeyValue::new("sse_gateway.outcome", facts.end.to_owned()),
        ];
        // Only a status that was sent: semantic conventions leave it out otherwise.
        if let Some(status) = facts.status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        let mut error = facts.status.is_some_and(|status| status >= 500);
        if let Some(stream) = facts.stream {
            error |= stream.error;
            attributes.push(KeyValue::new(
                "sse_gateway.events",
                saturating(stream.events),
            ));
            attributes.push(KeyValue::new(
                "sse_gateway.rules_hit",
                saturating(stream.rules_hit),
            ));
            if let Some(tokens) = stream.input_tokens {
                attributes.push(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    saturating(tokens),
                ));
            }
            if let Some(tokens) = stream.output_tokens {
                attributes.push(KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    saturating(tokens),
                ));
            }
            if let Some(seconds) = stream.time_to_first_chunk {
                attributes.push(KeyValue::new(
                    "gen_ai.response.time_to_first_chunk",
                    seconds,
                ));
            }
            if !stream.finish_reasons.is_empty() {
                let reasons = stream.finish_reasons.labels().map(StringValue::from);
                attributes.push(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    Value::Array(Array::String(reasons.collect())),
                ));
            }
        }
        span.set_attributes(attributes);
        if error {
            span.set_status(Status::error(facts.end.to_owned()));
        }
        if let Some(client) = &self.client {
            if let Some(url) = &self.client_url {
                client
                    .span()
                    .set_attribute(KeyValue::new("url.full", url.clone()));
            }
            if error {
                client
                    .span()
                    .set_status(Status::error(facts.end.to_owned()));
            }
            client.span().end();
        }
        span.end();
    }
}

fn saturating(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
