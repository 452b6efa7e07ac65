//! A real `redis-server` on a loopback port, started by the test and killed by its
//! PID when dropped (or on demand, to test an outage).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, LIVENESS};

pub struct RedisServer {
    child: Option<Child>,
    /// The plain port, which the test's own commands use.
    pub addr: SocketAddr,
    /// The TLS port, when started with [`RedisServer::start_tls`].
    pub tls_addr: Option<SocketAddr>,
    tls_args: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` without persistence; `None` when the binary is not
    /// installed (CI installs Debian's `redis-server`, so there it always runs).
    pub async fn start() -> Option<RedisServer> {
        RedisServer::start_with(None).await
    }

    /// [`RedisServer::start`], also serving TLS with the PEM certificate and key
    /// files given (no client certificates asked for) on [`RedisServer::tls_addr`].
    pub async fn start_tls(cert_file: &str, key_file: &str) -> Option<RedisServer> {
        RedisServer::start_with(Some((cert_file, key_file))).await
    }

    async fn start_with(tls: Option<(&str, &str)>) -> Option<RedisServer> {
        // A port found free may be taken by a parallel test's server before this one
        // binds it: this one then exits, and the port answers for the other. So the
        // server that answers must be this one (its PID), or a new port is tried.
        for _ in 0..5 {
            let port = free_port();
            let tls_port = tls.map(|_| free_port());
            let tls_args: Vec<String> = match (tls, tls_port) {
                (Some((cert, key)), Some(tls_port)) => [
                    "--tls-port",
                    &tls_port.to_string(),
                    "--tls-cert-file",
                    cert,
                    "--tls-key-file",
                    key,
                    "--tls-auth-clients",
                    "no",
                ]
                .map(str::to_owned)
                .to_vec(),
                _ => Vec::new(),
            };
            let child = match spawn(port, &tls_args) {
                Ok(child) => child,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!(
                        "SKIPPED: redis-server is not installed (apt-get install redis-server)"
                    );
                    return None;
                }
                Err(error) => panic!("cannot start redis-server: {error}"),
            };
            let mut server = RedisServer {
                child: Some(child),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                tls_addr: tls_port.map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
                tls_args,
            };
            if server.listens().await {
                return Some(server);
            }
        }
        panic!("redis-server found no free port in 5 tries");
    }

    /// Waits until this server (by its PID) answers on `addr`; false when it exited
    /// first (its port was taken).
    async fn listens(&mut self) -> bool {
        let child = self.child.as_mut().expect("a server was started");
        let pid = format!("process_id:{}\r\n", child.id());
        let deadline = tokio::time::Instant::now() + LIVENESS;
        loop {
            if let Some(info) = self.try_command(&["INFO", "server"]).await {
                if info.contains(&pid) {
                    return true;
                }
            }
            let child = self.child.as_mut().expect("a server was started");
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server listens in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills the server now (an outage).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port (a restart without
    /// persistence); returns once it listens.
    pub async fn restart(&mut self) {
        self.kill();
        self.child =
            Some(spawn(self.addr.port(), &self.tls_args).expect("redis-server starts again"));
        assert!(
            self.listens().await,
            "redis-server could not take its port again"
        );
    }

    /// `redis-cli`-free: one RESP command, the raw reply.
    pub async fn command(&self, args: &[&str]) -> String {
        self.try_command(args).await.expect("redis answers")
    }

    /// [`RedisServer::command`], or `None` when nothing answers on the port.
    async fn try_command(&self, args: &[&str]) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(LIVENESS, stream.read(&mut reply))
            .await
            .expect("redis answers in time")
            .ok()?;
        Some(String::from_utf8_lossy(&reply[..n]).into_owned())
    }
}

/// `redis-server` on `port` of loopback, without persistence.
fn spawn(port: u16, tls_args: &[String]) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(tls_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
