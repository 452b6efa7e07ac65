//! Config reload: on SIGHUP, and when the config file's content changes.
//!
//! The file is re-read every `POLL_INTERVAL` and compared by content, which also
//! catches the atomic symlink swap Kubernetes does for a mounted `ConfigMap` (the path
//! stays, the file behind it changes) without depending on inotify semantics. A change
//! is applied only once it holds still: a file rewritten in place (a slow
//! `cat > gateway.yaml`, a network filesystem) can be read cut between two routes,
//! which is often valid YAML, and applying that would drop a route until the next
//! write. So a changed content is read again after `SETTLE` and applied only when both
//! reads agree; while it keeps changing it is read every `SETTLE` until it stops. A
//! rename over the file is seen whole at once and costs just the one `SETTLE`. A valid
//! file is applied through the same path as startup; an invalid one keeps the running
//! config, logs every error with its location, and counts a failure.
//!
//! Reading, parsing and validating run on the blocking pool, never on the runtime's
//! workers: a pathological file then costs a blocking thread, not the streams. A file
//! that cannot be read (out of descriptors, a dangling symlink) is no config problem:
//! it is counted apart, logged once per run of failures, and retried on the next tick;
//! the content last read stays the reference, so a read that works again is no reload
//! unless the content changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigErrors, GatewayConfig, ReadError};
use crate::gateway::Gateway;

/// How often the config file is compared with the last one read.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a changed file must read the same before it is applied. A writer that
/// streams the file (a shell redirect fed by a pipe, `kubectl exec ... cat`, a network
/// filesystem flushing its cache) pauses between its writes for milliseconds to a
/// few hundred; half a second outlasts those pauses, while a change still takes
/// effect within about one and a half `POLL_INTERVAL`s. A writer that stalls longer
/// than this in the middle of the file can still be read cut: writing aside and
/// renaming over the file is the way to be safe from that.
pub(crate) const SETTLE: Duration = Duration::from_millis(500);

/// Watches `path` and `hangup` until the runtime stops; `loaded` is the content the
/// running config was loaded from.
pub async fn watch(path: PathBuf, gateway: Arc<Gateway>, mut hangup: Hangup, loaded: Vec<u8>) {
    let mut last = Arc::new(loaded);
    // A content that differs from `last`, read once and waiting for a second read
    // `SETTLE` later to agree with it.
    let mut settling: Option<Arc<Vec<u8>>> = None;
    let mut unreadable = false;
    loop {
        let wait = if settling.is_some() {
            SETTLE
        } else {
            POLL_INTERVAL
        };
        let trigger = tokio::select! {
            () = tokio::time::sleep(wait) => "file change",
            Some(()) = recv(&mut hangup) => "SIGHUP",
        };
        let now = match read(&path).await {
            Ok(now) => now,
            Err(error) => {
                gateway.metrics().count_config_read_error();
                if !unreadable {
                    tracing::warn!(trigger, %error, "config file unreadable; the running config stays, retrying every second");
                }
                unreadable = true;
                // Whatever was read before the failure is no proof of a still file.
                settling = None;
                continue;
            }
        };
        if unreadable {
            tracing::info!("the config file is readable again");
            unreadable = false;
        }
        // SIGHUP reloads at once, even an unchanged file: the operator says the file is
        // ready, and a CA file it names may have changed.
        if trigger != "SIGHUP" {
            if now == last {
                settling = None;
                continue;
            }
            match settling.take() {
                Some(before) if before == now => {}
                _ => {
                    settling = Some(now);
                    continue;
                }
            }
        }
        settling = None;
        last = now.clone();
        reload(&path, now, &gateway, trigger).await;
    }
}

async fn read(path: &Path) -> Result<Arc<Vec<u8>>, ReadError> {
    let path = path.to_owned();
    match tokio::task::spawn_blocking(move || GatewayConfig::read(&path)).await {
        Ok(read) => read.map(Arc::new),
        Err(join) => Err(ReadError(std::io::Error::other(join))),
    }
}

/// Validates `content` (read from `path`) off the runtime, and applies it; returns
/// whether it was applied.
pub(crate) async fn reload(
    path: &Path,
    content: Arc<Vec<u8>>,
    gateway: &Gateway,
    trigger: &str,
) -> bool {
    let source = path.display().to_string();
    let parsed = tokio::task::spawn_blocking(move || {
        GatewayConfig::from_bytes(&content, &source, &|name| std::env::var(name).ok())
    })
    .await;
    let parsed = parsed.unwrap_or_else(|join| {
        Err(ConfigErrors {
            source: path.display().to_string(),
            errors: vec![crate::config::ConfigError {
                position: None,
                path: String::new(),
                message: format!("validation did not finish: {join}"),
            }],
        })
    });
    let mut config = match parsed {
        Ok(config) => config,
        Err(errors) => {
            for line in errors.to_string().lines() {
                tracing::error!(
                    trigger,
                    error = line,
                    "config reload failed; the running config stays"
                );
            }
            gateway.metrics().count_reload(false);
            return false;
        }
    };
    let running = gateway.config();
    if config.listen != running.listen || config.admin_listen != running.admin_listen {
        tracing::warn!(
            trigger,
            listen = %config.listen,
            admin = %config.admin_listen,
            running_listen = %running.listen,
            running_admin = %running.admin_listen,
            "listen addresses changed: restart the gateway to apply them; the rest is applied now"
        );
        config.listen = running.listen;
        config.admin_listen = running.admin_listen;
    }
    if config.log.format != running.log.format || config.log.level != running.log.level {
        tracing::warn!(trigger, "log settings changed: they take effect on restart");
        // `/config` shows what is in force.
        config.log = running.log.clone();
    }
    let routes = config.routes.len();
    match gateway.apply(config).await {
        Ok(()) => {
            gateway.metrics().count_reload(true);
            tracing::info!(trigger, routes, "config reloaded");
            true
        }
        Err(error) => {
            gateway.metrics().count_reload(false);
            tracing::error!(trigger, %error, "config reload failed; the running config stays");
            false
        }
    }
}

/// A SIGHUP listener, if the platform has one.
#[cfg(unix)]
pub(crate) type Hangup = Option<tokio::signal::unix::Signal>;
/// A SIGHUP listener, if the platform has one.
#[cfg(not(unix))]
pub type Hangup = Option<()>;

/// Installs the SIGHUP handler. Call it before the gateway is reachable: SIGHUP's
/// default action ends the process.
#[cfg(unix)]
pub(crate) fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reloads follow file changes only");
            None
        }
    }
}

/// Installs the SIGHUP handler (none on this platform).
#[cfg(not(unix))]
pub fn hangup_signal() -> Hangup {
    None
}

/// The next SIGHUP; never resolves without a signal handler.
async fn recv(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        #[cfg(unix)]
        Some(signal) => signal.recv().await,
        _ => std::future::pending().await,
    }
}
