//! A route, compiled for serving, and the one step that compiles it.
//!
//! As in Vector, configuration builds the component in one place: [`Route::build`]
//! turns a validated `RouteConfig` into everything a request on it uses (the router
//! entry, the request translation, the upstream client, the stream plan with its
//! compiled pipeline, and the metric handles, resolved once). After this step the
//! request path never looks at the config again.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;

use super::forward::Failover;
use crate::admission::Admission;
use crate::config::{PathMatch, RequestPlan, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::protocol::Protocol;
use crate::resume::{ResumePlan, Tables};
use crate::shutdown::Shutdown;
use crate::supervise::StreamPlan;
use crate::upstream::{BudgetGeneration, Upstream};

/// A route, compiled for serving.
#[derive(Debug)]
pub(crate) struct Route {
    pub name: Arc<str>,
    /// How a matched request becomes the upstream request.
    pub request: RequestPlan,
    pub upstream: Arc<Upstream>,
    pub upstream_name: Arc<str>,
    pub metrics: Arc<RouteMetrics>,
    /// Set when the route has a `stream` section.
    pub stream: Option<Arc<StreamPlan>>,
    /// The route's requests in flight, and its `limits` when it has some.
    pub admission: Arc<Admission>,
    /// Endpoint choice and retries (`forward.rs`).
    pub failover: Failover,
    /// Set when the route's streams are resumable (`stream.resume`).
    pub resume: Option<Arc<ResumePlan>>,
}

/// What the router needs to find a route: its path match and methods.
pub(super) type RouterEntry = (PathMatch, Option<Vec<Method>>, Route);

impl Route {
    /// Compiles `config` into its router entry; `upstreams` holds a ready client per
    /// upstream name. `None` only if the upstream is missing, which validation rules
    /// out: a running gateway skips such a route rather than panic. A route that
    /// retries takes its budget from `budgets` (the one it had, when a reload leaves
    /// it as it was).
    pub(crate) fn build(
        config: &RouteConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        metrics: &Metrics,
        shutdown: &Shutdown,
        resume_tables: &Tables,
        budgets: &mut BudgetGeneration,
    ) -> Option<RouterEntry> {
        let upstream = upstreams.get(&config.upstream)?.clone();
        let rule_names: Vec<&str> = config
            .stream
            .iter()
            .flat_map(|stream| {
                stream
                    .pipeline
                    .rules()
                    .iter()
                    .map(crate::rewrite::Rule::name)
            })
            .collect();
        let protocol = config
            .stream
            .as_ref()
            .map_or(Protocol::Sse, |stream| stream.pipeline.contract().protocol);
        let route_metrics = Arc::new(metrics.route(&config.name, &rule_names, protocol));
        let name: Arc<str> = Arc::from(config.name.as_str());
        let stream = config.stream.as_ref().map(|stream| {
            Arc::new(StreamPlan::new(
                name.clone(),
                stream,
                route_metrics.clone(),
                shutdown.clone(),
            ))
        });
        // Every route counts its requests in flight, limits or not: a reload that adds
        // `limits` then counts the streams already open against them.
        let limits = config.limits.clone().unwrap_or_default();
        let admission = Arc::new(Admission::new(&config.name, &limits, metrics));
        let endpoints: Vec<&str> = upstream.endpoints().names().collect();
        let budget = match &config.retry {
            Some(retry) => budgets.budget(&config.name, &config.upstream, retry),
            // Never used: a route without `retry` makes one attempt.
            None => Arc::default(),
        };
        let failover = Failover {
            retry: config.retry.clone(),
            budget,
            metrics: metrics.traffic().failover(&config.name, &endpoints),
        };
        let resume = config.stream.as_ref().and_then(|stream| {
            let resume = stream.resume.as_ref()?;
            Some(Arc::new(ResumePlan::new(
                name.clone(),
                resume,
                stream,
                resume_tables,
                metrics.resume(),
            )))
        });
        let route = Route {
            failover,
            admission,
            stream,
            resume,
            metrics: route_metrics,
            name,
            upstream_name: Arc::from(upstream.name()),
            request: config.request.clone(),
            upstream,
        };
        Some((config.path.clone(), config.methods.clone(), route))
    }

    /// The route's protocol: its clients are that protocol's SDKs, so every error the
    /// gateway answers on it is in that shape.
    pub(crate) fn protocol(&self) -> Protocol {
        self.stream
            .as_ref()
            .map_or(Protocol::Sse, |plan| plan.protocol())
    }
}
