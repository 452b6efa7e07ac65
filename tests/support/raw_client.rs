//! A client on a raw socket: HTTP/1.0, so the response body is the event bytes
//! themselves and cutting the connection mid-answer is dropping the socket.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{read_until, LIVENESS};

/// One event as a client sees it: its data and the id it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub data: String,
    pub id: Option<String>,
    pub event: Option<String>,
}

/// What a resuming client gets when the answer cannot be completed: one error event
/// of `error_type` whose message starts with `message_start`, then the route's
/// closing (`[DONE]`).
pub fn assert_error_then_done(events: &[Seen], error_type: &str, message_start: &str) {
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].event.as_deref(), Some("error"));
    let error: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(error["error"]["type"], error_type);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with(message_start), "{message}");
    assert_eq!(events[1].data, "[DONE]", "the route's closing follows");
}

/// A client on a raw socket.
pub struct Client {
    /// The response head, once read.
    head: Option<String>,
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl Client {
    /// Sends the request; the response is read as the test asks for it.
    pub async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Client {
        Client::open_with(addr, "GET", target, headers).await
    }

    pub async fn open_with(
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Client {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut request = format!("{method} {target} HTTP/1.0\r\nhost: gateway\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        Client {
            head: None,
            stream,
            buffered: Vec::new(),
        }
    }

    pub async fn head(&mut self) -> &str {
        if self.head.is_none() {
            let head = read_until(&mut self.stream, b"\r\n\r\n").await;
            let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            self.head = Some(String::from_utf8_lossy(&head[..end]).into_owned());
            self.buffered = head[end..].to_vec();
        }
        self.head.as_deref().unwrap_or_default()
    }

    pub async fn status(&mut self) -> u16 {
        self.head().await[9..12].parse().unwrap()
    }

    /// The next event (`None` at the end of the body); comments are skipped.
    pub async fn next(&mut self) -> Option<Seen> {
        self.head().await;
        loop {
            if let Some(end) = self.buffered.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffered.drain(..end + 2).collect();
                let text = String::from_utf8(event).unwrap();
                let mut seen = Seen {
                    data: String::new(),
                    id: None,
                    event: None,
                };
                for line in text.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        data.trim_start().clone_into(&mut seen.data);
                    } else if let Some(id) = line.strip_prefix("id:") {
                        seen.id = Some(id.trim_start().to_owned());
                    } else if let Some(event) = line.strip_prefix("event:") {
                        seen.event = Some(event.trim_start().to_owned());
                    }
                }
                // Comment lines are skipped; a block of nothing else is no event.
                if text
                    .lines()
                    .all(|line| line.is_empty() || line.starts_with(':'))
                {
                    continue;
                }
                return Some(seen);
            }
            if !self.read_more().await {
                assert!(
                    self.buffered.is_empty(),
                    "the body ended inside an event: {:?}",
                    String::from_utf8_lossy(&self.buffered)
                );
                return None;
            }
        }
    }

    /// The body's bytes as sent, comments and all, up to and including `needle`.
    pub async fn bytes_until(&mut self, needle: &[u8]) -> Vec<u8> {
        self.head().await;
        loop {
            if let Some(at) = self
                .buffered
                .windows(needle.len())
                .position(|w| w == needle)
            {
                return self.buffered.drain(..at + needle.len()).collect();
            }
            assert!(
                self.read_more().await,
                "the body ended before {:?}: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.buffered)
            );
        }
    }

    /// Reads what comes next into the buffer (within [`LIVENESS`]); false at the end.
    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(LIVENESS, self.stream.read(&mut chunk))
            .await
            .expect("bytes arrive in time")
            .unwrap_or(0);
        self.buffered.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<Seen> {
        let mut events = Vec::new();
        for _ in 0..n {
            events.push(self.next().await.expect("one more event"));
        }
        events
    }

    /// Everything up to the end of the body.
    pub async fn rest(&mut self) -> Vec<Seen> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}
