//! OpenTelemetry traces over OTLP/HTTP (`telemetry.otlp`): one server span per request
//! that lasts until its response body is done, a client span for the upstream
//! request, and W3C `traceparent` continued from the client and sent upstream.
//!
//! Built once per distinct `telemetry.otlp` (a reload with the same section keeps the
//! running exporter; a changed one starts a new exporter for new requests, while
//! requests already running finish on the old one). Export never delays a stream: see
//! [`export`]. Crates: `opentelemetry`, `opentelemetry_sdk`, `opentelemetry-otlp`
//! (protobuf over HTTP, sent by the gateway's own hyper client).

mod export;
mod trace;

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use opentelemetry_sdk::Resource;

use crate::config::OtlpConfig;

pub(crate) use export::{Dropped, Unsent as UnsentSpans};
pub(crate) use trace::{Finished, RequestTrace, StreamFacts};

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {url}: {reason}")]
pub struct TracingError {
    url: String,
    reason: String,
}

/// A running tracer and its exporter, for one `telemetry.otlp`.
#[derive(Debug)]
pub(crate) struct Traces {
    config: OtlpConfig,
    /// Kept so the export task lives as long as any request may still end a span.
    _provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// Starts the exporter on the current runtime; its spans count in `unsent` until
    /// exported.
    pub(crate) fn start(
        config: &OtlpConfig,
        dropped: Dropped,
        unsent: Arc<UnsentSpans>,
    ) -> Result<Traces, TracingError> {
        let fail = |reason: String| TracingError {
            url: config.traces_url.clone(),
            reason,
        };
        let headers: HashMap<String, String> = config.headers.clone().into_iter().collect();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(export::HyperClient::new())
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.traces_url.clone())
            .with_headers(headers)
            .with_timeout(export::EXPORT_TIMEOUT)
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .build()
            .map_err(|error| fail(error.to_string()))?;
        // The processor owns the exporter from here on: it gets the resource now.
        exporter.set_resource(&resource);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(export::QueueProcessor::start(exporter, dropped, unsent))
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("sse-gateway");
        Ok(Traces {
            config: config.clone(),
            _provider: provider,
            tracer,
        })
    }

    /// The section this was built from.
    pub(crate) fn config(&self) -> &OtlpConfig {
        &self.config
    }

    /// Starts a request's server span, continuing the client's `traceparent` when it
    /// sent a valid one.
    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        request_id: &str,
    ) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        RequestTrace::start(&self.tracer, &parent, method, path, request_id)
    }
}
