//! The composition root: from a validated config to a listening gateway, and from a
//! new config to a swapped one.
//!
//! Starts the demo upstream when a config uses it, builds one client per upstream and
//! the route table, binds the public listener (HTTP/1.1 and h2c prior knowledge) and
//! the admin listener. Startup and reload share one path, [`Gateway::apply`]: a config
//! becomes a `Proxy` that is swapped in atomically for new requests, while
//! requests already running keep the generation they started with. The only file that
//! knows every other module.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{GatewayConfig, UpstreamTarget};
use crate::listener::{self, Acceptor, ConnectionLimits, Connections};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::shutdown::{self, DrainPlan, Shutdown, StopNow};
use crate::telemetry::{Traces, UnsentSpans};
use crate::upstream::demo::DemoServer;
use crate::upstream::{
    BudgetGeneration, HealthBook, HealthGeneration, RetryBudgets, TlsError, Upstream,
};

/// Why the gateway could not start, or a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (admin): {source}")]
    BindAdmin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the demo upstream: {0}")]
    Demo(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Tracing(#[from] crate::telemetry::TracingError),
}

/// What outlives a generation: metrics, the demo server, the shutdown signal.
#[derive(Debug)]
pub struct Gateway {
    metrics: Arc<Metrics>,
    /// The config in force, compiled; it holds the one copy of the config.
    current: watch::Sender<Arc<Proxy>>,
    demo: Mutex<Option<DemoServer>>,
    /// Fired when the drain time has run out: supervised streams end with `shutdown`.
    shutdown: Shutdown,
    /// The trace exporter of the config in force; kept across reloads that do not
    /// change `telemetry.otlp`.
    traces: std::sync::Mutex<Option<Arc<Traces>>>,
    /// The spans not yet exported, of every exporter the process has started: a stop
    /// waits for them (streams opened before a reload end on their first exporter).
    unsent_spans: Arc<UnsentSpans>,
    /// Resumable streams by route: a reload must not forget them.
    resume_tables: Arc<crate::resume::Tables>,
    /// What the gateway has learned of each endpoint's health: kept across reloads
    /// too, for the endpoints a reload leaves as they were.
    health: Arc<HealthBook>,
    /// What each route's retries have spent: kept across reloads for the routes a
    /// reload leaves as they were.
    budgets: Arc<RetryBudgets>,
    /// Held through each [`Gateway::apply`].
    applying: Mutex<()>,
}

impl Gateway {
    /// Compiles `config` into a generation and swaps it in for new requests.
    ///
    /// The first call (startup) and every reload go through here, so a reload is
    /// exercised by every start.
    pub async fn apply(&self, config: GatewayConfig) -> Result<(), StartError> {
        // One at a time: what a generation keeps (endpoint health) is built from the
        // one before it, and must describe the config in force.
        let _applying = self.applying.lock().await;
        let config = Arc::new(config);
        let demo_origin = self.demo_origin(&config).await?;
        let traces = self.traces_for(&config)?;
        let (compiled, metrics, shutdown, tables) = (
            config.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
            self.resume_tables.clone(),
        );
        let mut health = self.health.generation(&self.metrics);
        let mut budgets = self.budgets.generation();
        // Thousands of routes (regexes, the route table, CA files read from disk) take
        // long enough to stall every stream if compiled on the runtime.
        let (proxy, health, budgets) = tokio::task::spawn_blocking(move || {
            let proxy = compile(
                compiled,
                demo_origin.as_deref(),
                &metrics,
                shutdown,
                &tables,
                &mut health,
                &mut budgets,
            );
            proxy.map(|proxy| (proxy, health, budgets))
        })
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
        let proxy = proxy.with_traces(traces.clone());
        health.commit();
        budgets.commit();
        // Only a config that is applied replaces the exporter the stop flushes.
        *self
            .traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = traces;
        self.metrics
            .traffic()
            .keep_limits_of(config.routes.iter().map(|route| route.name.as_str()));
        let replaced = self.current.send_replace(Arc::new(proxy));
        // Freeing thousands of routes takes a while too; requests still running keep
        // the old proxy alive, and whoever lets go of it last frees it.
        tokio::task::spawn_blocking(move || drop(replaced));
        self.metrics.config_applied();
        Ok(())
    }

    /// The config in force.
    pub fn config(&self) -> Arc<GatewayConfig> {
        self.current.borrow().config().clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The trace exporter of the config in force, if it traces.
    fn current_traces(&self) -> Option<Arc<Traces>> {
        self.traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The tracer for `config`'s `telemetry.otlp`: the running one when the section is
    /// unchanged, a new one (for new requests) when it changed, none when absent. It
    /// replaces the running one only once the config is applied.
    fn traces_for(&self, config: &GatewayConfig) -> Result<Option<Arc<Traces>>, StartError> {
        Ok(match &config.otlp {
            None => None,
            Some(otlp) => match self
                .current_traces()
                .filter(|traces| traces.config() == otlp)
            {
                Some(same) => Some(same),
                None => Some(Arc::new(Traces::start(
                    otlp,
                    self.metrics.spans_dropped(),
                    self.unsent_spans.clone(),
                )?)),
            },
        })
    }

    /// The demo server's origin when `config` uses it, started on first use.
    async fn demo_origin(&self, config: &GatewayConfig) -> Result<Option<String>, StartError> {
        let uses_demo = config
            .upstreams
            .values()
            .any(|u| matches!(u.target, UpstreamTarget::Demo { .. }));
        // One demo server for the process: started by the first config that uses it,
        // kept across reloads. Each request carries its upstream's pace, so every
        // config, and every demo upstream in it, has its own.
        if !uses_demo {
            return Ok(None);
        }
        let mut demo = self.demo.lock().await;
        if demo.is_none() {
            *demo = Some(DemoServer::start().await.map_err(StartError::Demo)?);
        }
        Ok(demo.as_ref().map(DemoServer::origin))
    }
}

/// One client per upstream, and the route table.
fn compile(
    config: Arc<GatewayConfig>,
    demo_origin: Option<&str>,
    metrics: &Arc<Metrics>,
    shutdown: Shutdown,
    resume_tables: &crate::resume::Tables,
    health: &mut HealthGeneration,
    budgets: &mut BudgetGeneration,
) -> Result<Proxy, StartError> {
    let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for (name, upstream) in &config.upstreams {
        let upstream = Upstream::new(upstream, demo_origin, health)?;
        upstreams.insert(name.clone(), Arc::new(upstream));
    }
    Ok(Proxy::new(
        config,
        &upstreams,
        metrics,
        shutdown,
        resume_tables,
        budgets,
    ))
}

/// A running gateway. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    gateway: Arc<Gateway>,
    admin: Arc<AdminState>,
    connections: Connections,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// The public listener's address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// [`Running::stop`] with the default wait for a final scrape and no "stop now".
    pub async fn shutdown(self, drain: Duration) {
        let plan = DrainPlan {
            drain,
            final_scrape_wait: crate::config::defaults::FINAL_SCRAPE_WAIT,
            stop_now: StopNow::new(),
        };
        self.stop(plan).await;
    }

    /// Drains and stops: `/readyz` turns 503 and no new connection is accepted; open
    /// requests get `plan.drain` to finish (or until `plan.stop_now` fires); then open
    /// responses are ended (supervised streams at an event boundary with outcome
    /// `shutdown`, passed-through bodies with their final chunk). If Prometheus
    /// scraped this gateway in the last minute, the admin listener then waits (up to
    /// `plan.final_scrape_wait`) for one more scrape so the drain's outcomes are not
    /// lost; the call returns within `plan.drain` plus [`shutdown::after_drain`].
    pub async fn stop(mut self, plan: DrainPlan) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        // Only now: once `/readyz` says 503, the listening socket is closed too, so
        // whoever sees the 503 also sees new connections refused.
        self.admin.ready.store(false, Ordering::Release);
        let admin = &self.admin;
        let unsent_spans = self.gateway.unsent_spans.clone();
        shutdown::drain(
            &self.connections,
            &plan,
            &self.gateway.shutdown,
            |limits| async move {
                // The last spans go out while Prometheus takes its last scrape.
                let flushed = async {
                    if !unsent_spans.flushed(limits.flush).await {
                        tracing::warn!("trace spans still unsent at the stop are lost");
                    }
                };
                tokio::join!(
                    admin.final_scrape(limits.scrape, shutdown::RECENT_SCRAPE),
                    flushed
                );
            },
        )
        .await;
    }
}

/// Binds the listeners and starts serving `config`.
pub async fn start(config: GatewayConfig) -> Result<Running, StartError> {
    start_with(config, ConnectionLimits::default()).await
}

/// [`start`] with other connection deadlines (tests shorten them).
#[doc(hidden)]
pub async fn start_with(
    config: GatewayConfig,
    limits: ConnectionLimits,
) -> Result<Running, StartError> {
    let bind = |addr: SocketAddr, admin: bool| async move {
        let listener = TcpListener::bind(addr).await;
        let listener = listener.and_then(|l| Ok((l.local_addr()?, l)));
        listener.map_err(|source| {
            if admin {
                StartError::BindAdmin { addr, source }
            } else {
                StartError::Bind { addr, source }
            }
        })
    };
    let (local_addr, listener) = bind(config.listen, false).await?;
    let (admin_addr, admin_listener) = bind(config.admin_listen, true).await?;

    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let resume_tables = Arc::new(crate::resume::Tables::new());
    let placeholder = Arc::new(Proxy::new(
        Arc::new(GatewayConfig::empty()),
        &BTreeMap::new(),
        &metrics,
        shutdown.clone(),
        &resume_tables,
        &mut Arc::new(RetryBudgets::default()).generation(),
    ));
    let gateway = Arc::new(Gateway {
        metrics: metrics.clone(),
        current: watch::channel(placeholder).0,
        demo: Mutex::new(None),
        shutdown,
        traces: std::sync::Mutex::new(None),
        unsent_spans: Arc::default(),
        resume_tables,
        health: Arc::new(HealthBook::default()),
        budgets: Arc::default(),
        applying: Mutex::new(()),
    });
    let routes = config.routes.len();
    gateway.apply(config).await?;
    tracing::info!(listen = %local_addr, admin = %admin_addr, routes, "gateway listening");

    let admin = Arc::new(AdminState::new(metrics, gateway.current.subscribe()));
    admin::serve(
        Acceptor::new(admin_listener, "admin"),
        admin.clone(),
        limits,
    );

    let (stop_tx, stop_rx) = oneshot::channel();
    let connections = Connections::new(limits, None);
    let current = gateway.current.subscribe();
    let signal = gateway.shutdown.clone();
    let make = move |peer: SocketAddr| {
        let current = current.clone();
        let signal = signal.clone();
        service_fn(move |request| {
            // The generation is taken once per request: a reload never changes the
            // rules of a request, or a stream, already running.
            let proxy = current.borrow().clone();
            let signal = signal.clone();
            // Boxed: hyper keeps the slot of a request's future as long as the
            // connection; this box is freed once the response head is out, so an open
            // stream does not keep the routing and forwarding state (~2 KB).
            Box::pin(async move {
                let response = proxy.serve(request, peer).await;
                Ok::<_, Infallible>(response.map(|body| body.ends_at(signal)))
            })
        })
    };
    let stop = async move {
        let _ = stop_rx.await;
    };
    let acceptor = Acceptor::new(listener, "public");
    let task = tokio::spawn(listener::accept_until(
        acceptor,
        connections.clone(),
        make,
        stop,
    ));
    Ok(Running {
        local_addr,
        admin_addr,
        gateway,
        admin,
        connections,
        stop: Some(stop_tx),
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config on free loopback ports whose one route goes to `upstreams`' first
    /// upstream, traced to `collector`.
    fn config(upstreams: &str, collector: SocketAddr) -> GatewayConfig {
        let yaml = format!(
            "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams:\n{upstreams}\
             routes:\n  - {{ name: chat, match: {{ path_prefix: /api }}, upstream: assistant }}\n\
             telemetry:\n  otlp: {{ endpoint: \"http://{collector}\" }}\n"
        );
        GatewayConfig::parse(&yaml, "gateway.yaml", &|_| None)
            .unwrap_or_else(|errors| panic!("{errors}\n{yaml}"))
    }

    /// A reload refused after its exporter was built (its CA file lost its certificate
    /// between validation and apply) leaves the exporter in force in place, so the
    /// next reload that keeps `telemetry.otlp` keeps it too.
    #[tokio::test]
    async fn a_refused_reload_leaves_the_trace_exporter_in_force() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (first, second) = (first.local_addr().unwrap(), second.local_addr().unwrap());
        let assistant = "  assistant: { url: \"http://127.0.0.1:1\" }\n";
        let running = start(config(assistant, first)).await.unwrap();
        let gateway = running.gateway();
        let in_force = gateway.current_traces().expect("an exporter");

        let ca = std::env::temp_dir().join(format!("sse-gateway-no-ca-{}", std::process::id()));
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let private = format!(
            "{assistant}  private:\n    url: https://127.0.0.1:1\n    tls: {{ ca_file: \"{}\" }}\n",
            ca.display()
        );
        let validated = config(&private, second);
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let refused = gateway.apply(validated).await;
        std::fs::remove_file(&ca).unwrap();
        assert!(matches!(refused, Err(StartError::Tls(_))), "{refused:?}");
        let after = gateway.current_traces().expect("an exporter");
        assert!(
            Arc::ptr_eq(&in_force, &after),
            "the refused config's exporter replaced the one in force"
        );

        gateway.apply(config(assistant, first)).await.unwrap();
        let kept = gateway.current_traces().expect("an exporter");
        assert!(Arc::ptr_eq(&in_force, &kept), "telemetry.otlp is unchanged");
        running.shutdown(Duration::ZERO).await;
    }
}
