//! Getting finished spans out without ever making a stream wait: a bounded queue in
//! front of the OTLP/HTTP exporter, drained by one task on the runtime.
//!
//! A span is handed over with a `try_send`: when the queue is full (the collector is
//! down or slow and the queue has filled), the span is dropped and counted, and the
//! request goes on. One export runs at a time, with a timeout and no retries (a retry
//! would only hold the queue longer); a failed export's spans are counted as dropped
//! too. The task ends once the provider is gone and the queue is empty: a reload that
//! changes the endpoint lets the old exporter finish what it holds. At a stop,
//! [`Unsent::flushed`] waits (bounded) for what is queued, so the spans of the streams
//! the drain ended are not lost with the process.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use prometheus::IntCounter;
use tokio::sync::{mpsc, Notify};

/// Spans waiting for export, at most: a few seconds of a busy gateway, a few MB.
pub(super) const QUEUE: usize = 2048;
/// Spans per export request.
const BATCH: usize = 512;
/// The longest one export may take before its spans count as dropped.
pub(super) const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is a small protobuf; more is not read.
const MAX_RESPONSE: usize = 1 << 20;

/// Where dropped spans are counted, by reason.
#[derive(Debug, Clone)]
pub(crate) struct Dropped {
    pub queue_full: IntCounter,
    pub export_failed: IntCounter,
}

/// Spans queued or being exported: what a stop waits for. One for the process,
/// shared by every exporter a reload starts: the streams opened before a reload end
/// their spans on the exporter they started with.
#[derive(Debug, Default)]
pub(crate) struct Unsent {
    spans: AtomicUsize,
    none_left: Notify,
}

impl Unsent {
    /// Waits until every span handed over so far has been exported (or counted as
    /// dropped), for at most `limit`; true when none is left.
    pub(crate) async fn flushed(&self, limit: Duration) -> bool {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let none_left = self.none_left.notified();
                if self.spans.load(Ordering::Acquire) == 0 {
                    return;
                }
                none_left.await;
            }
        });
        waited.await.is_ok()
    }

    fn done(&self, count: usize) {
        if self.spans.fetch_sub(count, Ordering::AcqRel) == count {
            self.none_left.notify_waiters();
        }
    }
}

/// The span processor: hands each finished span to the export task, or drops it.
#[derive(Debug)]
pub(super) struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    dropped: IntCounter,
    unsent: Arc<Unsent>,
}

impl QueueProcessor {
    /// Starts the export task on the current runtime.
    pub(super) fn start(
        exporter: opentelemetry_otlp::SpanExporter,
        dropped: Dropped,
        unsent: Arc<Unsent>,
    ) -> QueueProcessor {
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(export(
            spans,
            exporter,
            dropped.export_failed,
            unsent.clone(),
        ));
        QueueProcessor {
            queue,
            dropped: dropped.queue_full,
            unsent,
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        // Counted before the hand-over, so the export task never counts it off first.
        self.unsent.spans.fetch_add(1, Ordering::AcqRel);
        if self.queue.try_send(span).is_err() {
            self.unsent.done(1);
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    /// Nothing to wait for: the task exports what is queued and ends when this
    /// processor (the queue's sender) is dropped.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

async fn export(
    mut spans: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    failed: IntCounter,
    unsent: Arc<Unsent>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while spans.recv_many(&mut batch, BATCH).await > 0 {
        let taken = batch.len();
        let count = taken as u64;
        let sent =
            tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(std::mem::take(&mut batch)));
        match sent.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                failed.inc_by(count);
                tracing::debug!(%error, spans = count, "span export failed");
            }
            Err(_) => {
                failed.inc_by(count);
                tracing::debug!(spans = count, "span export timed out");
            }
        }
        unsent.done(taken);
    }
}

/// The exporter's HTTP client: hyper on the gateway's runtime, plain or TLS.
#[derive(Clone)]
pub(super) struct HyperClient(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>);

impl fmt::Debug for HyperClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HyperClient")
    }
}

impl HyperClient {
    pub(super) fn new() -> HyperClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        HyperClient(Client::builder(TokioExecutor::new()).build(https))
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let exchange = async {
            let response = self.0.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        tokio::time::timeout(EXPORT_TIMEOUT, exchange)
            .await
            .map_err(|_| HttpError::from("the OTLP collector did not answer in time"))?
    }
}

impl HttpClient for HyperClient {
    // The trait is declared with `async_trait`; this is its signature written out.
    fn send_bytes<'client, 'future>(
        &'client self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'future>>
    where
        'client: 'future,
        Self: 'future,
    {
        Box::pin(self.send(request))
    }
}
