//! The built-in demo upstream: an assistant that streams its answer token by token,
//! with the flaws real upstreams have, so the shipped `gateway.yaml` runs on its own.
//!
//! It listens on an ephemeral loopback port and is proxied like any other upstream, so
//! a demo stream exercises the same code path as production traffic. The flaws are the
//! ones this product exists for: `data:\n{"value":"..."}` (a stray newline after
//! `data:` that makes a spec client drop the token), a `: ping` comment, and the
//! terminator written as `data:\n[DONE]`.
//!
//! One demo server serves every demo upstream of every config: a request carries its
//! upstream's `token_interval` in the path ([`base_path`]), so each stream is paced by
//! the config it was routed by. A reload paces the streams opened after it; a stream
//! already running keeps its pace, as it keeps its rules.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::{sleep, Sleep};

use crate::config::defaults::DEMO_TOKEN_INTERVAL;

/// Request bodies larger than this are not read for the question.
const MAX_QUESTION_BODY: usize = 16 * 1024;

/// The start of the path that carries a demo upstream's `token_interval`.
const PACE: &str = "/token_interval/";

/// The base path of a demo upstream that pauses `token_interval` between tokens:
/// `/token_interval/80ms`.
pub(crate) fn base_path(token_interval: Duration) -> String {
    format!("{PACE}{}ms", token_interval.as_millis())
}

/// The pause a request's path asks for; the default when it names none (a request
/// sent to the demo server by hand).
fn pace(path: &str) -> Duration {
    path.strip_prefix(PACE)
        .and_then(|rest| rest.split('/').next())
        .and_then(|pause| pause.strip_suffix("ms"))
        .and_then(|millis| millis.parse().ok())
        .map_or(DEMO_TOKEN_INTERVAL, Duration::from_millis)
}

/// A running demo server; dropping it does not stop it (it lives as long as the
/// runtime, like the gateway's listeners).
#[derive(Debug, Clone)]
pub(crate) struct DemoServer {
    addr: SocketAddr,
}

impl DemoServer {
    /// Binds `127.0.0.1:0` and serves the demo stream on every path and method, paced
    /// as the path asks ([`base_path`]).
    pub(crate) async fn start() -> std::io::Result<DemoServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(answer);
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(DemoServer { addr })
    }

    /// `http://127.0.0.1:PORT`
    pub(crate) fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<DemoStream>, Infallible> {
    let token_interval = pace(request.uri().path());
    let query_question = request.uri().query().and_then(question_from_query);
    let body = http_body_util::Limited::new(request.into_body(), MAX_QUESTION_BODY)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let question = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|json| json.get("q").and_then(|q| q.as_str()).map(str::to_owned))
        .or(query_question)
        .unwrap_or_else(|| "nothing yet".to_owned());
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(DemoStream::new(&question, token_interval))
        .unwrap_or_default();
    Ok(response)
}

fn question_from_query(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "q")
        .map(|(_, value)| value.into_owned())
}

/// The answer's events, in wire form, flaws included.
fn script(question: &str) -> Vec<Bytes> {
    let question: String = question.chars().take(200).collect();
    let answer = format!(
        "Hello! You asked: \"{question}\". This answer streams token by token through \
         sse-gateway, which repairs what the upstream gets wrong, ends the stream on \
         its terminator, and counts every stream for Prometheus."
    );
    let mut events = vec![Bytes::from_static(b": ping\n\n")];
    for (i, word) in answer.split_inclusive(' ').enumerate() {
        let data = serde_json::json!({ "value": word }).to_string();
        // Every third token carries the stray newline after `data:`.
        let event = if i % 3 == 1 {
            format!("data:\n{data}\n\n")
        } else {
            format!("data: {data}\n\n")
        };
        events.push(Bytes::from(event));
        if i == 12 {
            events.push(Bytes::from_static(b": ping\n\n"));
        }
    }
    events.push(Bytes::from_static(b"data:\n[DONE]\n\n"));
    events
}

/// The demo response body: one event per `token_interval`, no task per stream.
#[derive(Debug)]
pub(crate) struct DemoStream {
    events: std::vec::IntoIter<Bytes>,
    pause: Pin<Box<Sleep>>,
    interval: Duration,
}

impl Default for DemoStream {
    fn default() -> Self {
        DemoStream::new("", Duration::ZERO)
    }
}

impl DemoStream {
    fn new(question: &str, interval: Duration) -> DemoStream {
        DemoStream {
            events: script(question).into_iter(),
            // The first event (a ping) goes out at once, like a real upstream's
            // early keep-alive.
            pause: Box::pin(sleep(Duration::ZERO)),
            interval,
        }
    }
}

impl Body for DemoStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.pause.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let next = self.events.next();
        if next.is_some() {
            let deadline = tokio::time::Instant::now() + self.interval;
            self.pause.as_mut().reset(deadline);
        }
        Poll::Ready(next.map(|event| Ok(Frame::data(event))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_has_the_flaws_it_advertises() {
        let events = script("why?");
        let all: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
        let text = String::from_utf8(all).unwrap();
        assert!(text.starts_with(": ping\n\n"));
        assert!(text.contains("data:\n{\"value\":"));
        assert!(text.contains("data: {\"value\":\"Hello! \"}\n\n"));
        assert!(text.contains("\\\"why?\\\""));
        assert!(text.ends_with("data:\n[DONE]\n\n"));
    }

    #[test]
    fn the_path_carries_the_pace() {
        let path = format!(
            "{}/v1/assistant/stream",
            base_path(Duration::from_millis(5))
        );
        assert_eq!(path, "/token_interval/5ms/v1/assistant/stream");
        assert_eq!(pace(&path), Duration::from_millis(5));
        assert_eq!(pace(&base_path(Duration::ZERO)), Duration::ZERO);
        assert_eq!(pace("/v1/assistant/stream"), DEMO_TOKEN_INTERVAL);
        assert_eq!(pace("/token_interval/soon/x"), DEMO_TOKEN_INTERVAL);
    }
}
