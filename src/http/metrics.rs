//! Prometheus metrics: requests by route and status, latency histograms, pool gauges.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::app::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// The registry of one running service (no process-wide globals, so tests can run
/// several services side by side).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    pool_size: Gauge,
    pool_idle: Gauge,
    im_listeners: Gauge,
    im_watched: Gauge,
    im_slow_consumers: Gauge,
    bus_connected: Gauge,
    bus_dropped: Gauge,
    /// The advisor queue's figures (the handoff service counts into them).
    pub handoff: std::sync::Arc<crate::handoff::HandoffMetrics>,
}

/// IM figures read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImStats {
    pub listeners: u64,
    pub watched_conversations: u64,
    pub slow_consumers: u64,
    pub bus_connected: bool,
    pub bus_dropped: u64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wealthdesk");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        let pool_size = Gauge::default();
        let pool_idle = Gauge::default();
        let im_listeners = Gauge::default();
        let im_watched = Gauge::default();
        let im_slow_consumers = Gauge::default();
        let bus_connected = Gauge::default();
        let bus_dropped = Gauge::default();
        registry.register(
            "im_listeners",
            "Open WebSocket connections and SSE streams on this node",
            im_listeners.clone(),
        );
        registry.register(
            "im_watched_conversations",
            "Conversations with at least one listener on this node",
            im_watched.clone(),
        );
        registry.register(
            "im_slow_consumers_closed",
            "Connections closed for not reading fast enough, since start",
            im_slow_consumers.clone(),
        );
        registry.register(
            "bus_connected",
            "1 while the NATS bus is connected (always 1 on a single node)",
            bus_connected.clone(),
        );
        registry.register(
            "bus_events_dropped",
            "Events not forwarded to NATS because its outbox overflowed, since start",
            bus_dropped.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route",
            latency.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Open database connections",
            pool_size.clone(),
        );
        registry.register(
            "db_pool_idle_connections",
            "Idle database connections",
            pool_idle.clone(),
        );
        let handoff = std::sync::Arc::new(crate::handoff::HandoffMetrics::register(&mut registry));
        Metrics {
            handoff,
            registry,
            requests,
            latency,
            pool_size,
            pool_idle,
            im_listeners,
            im_watched,
            im_slow_consumers,
            bus_connected,
            bus_dropped,
        }
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self, pool: (u32, usize), im: ImStats) -> String {
        self.pool_size.set(pool.0 as i64);
        self.pool_idle.set(pool.1 as i64);
        self.im_listeners.set(im.listeners as i64);
        self.im_watched.set(im.watched_conversations as i64);
        self.im_slow_consumers.set(im.slow_consumers as i64);
        self.bus_connected.set(im.bus_connected as i64);
        self.bus_dropped.set(im.bus_dropped as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Middleware recording every request under its route template (never the raw path,
/// which would explode the label set with ids).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    state.metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`
pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    match state.handoffs.queue_length().await {
        Ok(n) => state.metrics.handoff.set_queue_length(n),
        Err(e) => tracing::warn!(error = %e, "cannot read the queue length for the metrics"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .render(state.db.pool_stats(), state.im.stats()),
    )
}
