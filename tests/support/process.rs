//! The real `sse-gateway` binary as a child process, on a config file in its own
//! directory: for what only a process shows (signals, exit codes, reloads from the
//! file, descriptor limits).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{body_text, free_port, get, Metrics};

/// The gateway binary running on a config file in its own directory.
pub struct GatewayProcess {
    pub child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

impl GatewayProcess {
    /// Writes `config` (with `LISTEN` and `ADMIN` replaced) and starts the binary on it;
    /// returns once `/healthz` answers.
    pub async fn start(name: &str, config: &str) -> GatewayProcess {
        GatewayProcess::start_limited(name, config, None).await
    }

    /// [`GatewayProcess::start`], with at most `max_files` open descriptors when given
    /// (`ulimit -n`, then the binary in place of the shell: the child is the gateway).
    pub async fn start_limited(name: &str, config: &str, max_files: Option<u32>) -> GatewayProcess {
        let dir =
            std::env::temp_dir().join(format!("sse-gateway-ops-{name}-{}", std::process::id()));
        // A port found free can be taken by a parallel test before the child binds it;
        // the child then exits with a bind error, and a new pair of ports is tried.
        for _ in 0..5 {
            match GatewayProcess::spawn(&dir, config, max_files).await {
                Ok(process) => return process,
                Err(log) => assert!(
                    log.contains("Address already in use"),
                    "the gateway did not start:\n{log}"
                ),
            }
        }
        panic!("the gateway did not start: its ports were taken 5 times in a row");
    }

    /// One start on fresh ports: the running gateway, or its log when it exited.
    async fn spawn(
        dir: &std::path::Path,
        config: &str,
        max_files: Option<u32>,
    ) -> Result<GatewayProcess, String> {
        std::fs::create_dir_all(dir).unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let config_path = dir.join("gateway.yaml");
        let log = dir.join("gateway.log");
        let text = config
            .replace("LISTEN", &format!("127.0.0.1:{port}"))
            .replace("ADMIN", &format!("127.0.0.1:{admin_port}"));
        std::fs::write(&config_path, text).unwrap();
        let mut command = match max_files {
            None => Command::new(env!("CARGO_BIN_EXE_sse-gateway")),
            Some(n) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_sse-gateway"));
                shell
            }
        };
        let child = command
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut process = GatewayProcess {
            child,
            dir: dir.to_path_buf(),
            config: config_path,
            log,
            addr: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], admin_port).into(),
        };
        // Generous: a busy machine compiling other tests can be slow to start a process.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Its own "listening" line, not a connect: a connect could reach whatever took
        // the port first.
        while !process.log_text().contains("gateway listening") {
            if process.child.try_wait().unwrap().is_some() {
                return Err(process.log_text());
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = process.child.kill();
                return Err(format!("no answer within 30 s\n{}", process.log_text()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(process)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Replaces the config file the way Kubernetes does: write aside, rename over.
    pub fn replace_config(&self, config: &str) {
        let current = std::fs::read_to_string(&self.config).unwrap();
        let listen = current
            .lines()
            .find(|l| l.starts_with("listen:"))
            .unwrap()
            .to_owned();
        let admin = current
            .lines()
            .find(|l| l.starts_with("admin:"))
            .unwrap()
            .to_owned();
        let text = config
            .replace("listen: LISTEN", &listen)
            .replace("admin: { listen: ADMIN }", &admin);
        let aside = self.dir.join("gateway.yaml.new");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, &self.config).unwrap();
    }

    pub async fn metrics(&self) -> Metrics {
        let response = get(self.admin, "/metrics").await;
        Metrics::parse(&body_text(response).await)
    }

    /// Polls `/metrics` until `check` holds (within [`LIVENESS`](super::LIVENESS)); returns the last read.
    pub async fn metrics_until(&self, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
        let log = || format!("log:\n{}", self.log_text());
        super::poll_metrics(|| self.metrics(), what, check, log).await
    }

    pub async fn reloads_reach(&self, result: &str, count: f64) {
        let reloads = |metrics: &Metrics| {
            metrics.get("sse_gateway_config_reloads_total", &[("result", result)])
        };
        let what = format!("a reload {result}");
        let metrics = self.metrics_until(&what, |m| reloads(m) >= count).await;
        assert_eq!(reloads(&metrics), count, "reloads with result {result}");
    }

    /// Reads the log until `check` holds (within [`LIVENESS`](super::LIVENESS)) and
    /// returns it; fails the test naming `what` otherwise.
    pub async fn log_until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + super::LIVENESS;
        loop {
            let log = self.log_text();
            if check(&log) {
                return log;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (within `within`); its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway did not exit in time; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
