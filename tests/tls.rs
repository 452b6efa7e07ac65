//! An `https://` upstream with a private CA: the gateway verifies it with the CA from
//! `tls.ca_file`, negotiates HTTP/2 by ALPN, and streams the response through; without
//! the CA it refuses the upstream with a 502.

mod support;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A TLS acceptor for `localhost` with a fresh self-signed certificate, offering
/// `alpn`; and the certificate as PEM.
fn acceptor(alpn: &[&[u8]]) -> (TlsAcceptor, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    (TlsAcceptor::from(Arc::new(config)), cert_pem)
}

/// A TLS upstream for `localhost` with a fresh self-signed certificate; returns its
/// port, the certificate as PEM, and a channel of the HTTP versions it served.
async fn tls_upstream() -> (u16, String, mpsc::UnboundedReceiver<http::Version>) {
    let (acceptor, cert_pem) = acceptor(&[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (versions_tx, versions) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let versions_tx = versions_tx.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let _ = versions_tx.send(request.version());
                    async move {
                        let response = Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(Full::new(Bytes::from_static(b"data: over tls\n\n")))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, cert_pem, versions)
}

fn config(port: u16, ca_file: Option<&std::path::Path>) -> String {
    let tls = ca_file.map_or(String::new(), |file| {
        format!("    tls: {{ ca_file: \"{}\" }}\n", file.display())
    });
    format!(
        "upstreams:\n  secure:\n    url: https://localhost:{port}\n{tls}\
         routes:\n  - name: chat\n    match: {{ path_prefix: /api/stream }}\n    upstream: secure\n"
    )
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_over_h2() {
    let (port, cert_pem, mut versions) = tls_upstream().await;
    let ca_file =
        std::env::temp_dir().join(format!("sse-gateway-tls-{}-{port}.pem", std::process::id()));
    std::fs::write(&ca_file, cert_pem).unwrap();
    let gateway = start_gateway(&config(port, Some(&ca_file))).await;

    let response = get(gateway.addr, "/api/stream").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(response).await, "data: over tls\n\n");
    assert_eq!(versions.recv().await, Some(http::Version::HTTP_2));
    std::fs::remove_file(&ca_file).ok();
}

#[tokio::test]
async fn https_upstream_with_an_untrusted_certificate_is_refused() {
    let (port, _cert_pem, mut versions) = tls_upstream().await;
    let gateway = start_gateway(&config(port, None)).await;
    let response = get(gateway.addr, "/api/stream").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let json = body_json(response).await;
    assert_eq!(json["error"]["type"], "upstream_unavailable");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{json}"
    );
    assert!(versions.try_recv().is_err(), "no request was served");
}

/// An HTTP/1.1 upstream over TLS that answers `401` before it has read a large body and
/// closes: the client gets that answer, as from a plain-HTTP upstream.
#[tokio::test]
async fn an_answer_before_the_whole_body_was_read_reaches_the_client() {
    let (acceptor, cert_pem) = acceptor(&[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let ca_file = std::env::temp_dir().join(format!(
        "sse-gateway-tls-early-{}-{port}.pem",
        std::process::id()
    ));
    std::fs::write(&ca_file, cert_pem).unwrap();
    let gateway = start_gateway(&config(port, Some(&ca_file))).await;
    let upstream = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // As Go's server does. With Nagle's algorithm the answer, a small write behind
        // the handshake's, could still be queued when the close resets the connection,
        // and the reset discards it: no client could have it.
        tcp.set_nodelay(true).unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        answer_before_the_body(tls).await;
    });
    let reply = post_reading_meanwhile(gateway.addr, "/api/stream", 4 * 1024 * 1024).await;
    assert!(reply.starts_with("HTTP/1.1 401 "), "{reply}");
    assert!(reply.ends_with(EARLY_ANSWER), "{reply}");
    upstream.await.unwrap();
    std::fs::remove_file(&ca_file).ok();
}
