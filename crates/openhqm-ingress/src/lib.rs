//! The HTTP API (CONTRACT.md's v1) on axum.
//!
//! [`router`] builds every route over an [`ApiState`]. Handlers never decide
//! anything about processing: submit stores the status record and publishes
//! the envelope, the rest read the store. Every error is an RFC 9457 problem
//! ([`problem::Problem`]) with a stable `code`.

mod accept;
mod admission;
mod body_budget;
mod dead_letters;
mod docs;
mod framing;
mod handlers;
mod health;
pub mod idempotency;
pub mod prefer;
mod problem;
pub mod sidecar;
mod telemetry;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use openhqm_metrics::{Metrics, QueueMetrics};
use openhqm_queue::QueueBackend;
use openhqm_store::ResultStore;
use tokio::sync::{Semaphore, watch};

pub use admission::Admission;
pub use body_budget::BodyBudget;
pub use idempotency::IdempotencyConfig;
pub use problem::Problem;
pub use sidecar::SidecarConfig;

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest submit body, in bytes.
    pub max_body_size: usize,
    /// How long a client may send nothing in the middle of a request body;
    /// past it the request is refused with 408.
    pub read_timeout: Duration,
    /// `Retry-After` seconds sent with 503 answers.
    pub retry_after_secs: u32,
    /// How long a health probe may take before the dependency counts as down.
    pub probe_timeout: Duration,
    /// Whether `/metrics` is served.
    pub metrics_enabled: bool,
    /// With proxy mode on, the endpoint names a submit may ask for; a request
    /// naming another is refused at once instead of failing in a worker.
    pub known_endpoints: Option<std::collections::HashSet<String>>,
    /// Longest `Prefer: wait` honoured when reading a response.
    pub max_wait: Duration,
    /// Idempotency keys.
    pub idempotency: IdempotencyConfig,
    /// The transparent (passthrough) ingress, if enabled.
    pub sidecar: Option<SidecarConfig>,
    /// Hosts a `metadata.callback_url` may name; a submit naming another
    /// (or any, when the list is empty) is refused with 400.
    pub callbacks: openhqm_core::CallbackPolicy,
    /// How workers read the request queue: the dead-letter listing names the
    /// request a foreign message became by decoding it the same way.
    pub decoder: openhqm_core::Decoder,
}

/// What the handlers share.
pub struct ApiState {
    /// Where submits go.
    pub queue: Arc<dyn QueueBackend>,
    /// Where status and results are read.
    pub store: Arc<dyn ResultStore>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Pre-resolved metrics of the request queue.
    pub queue_metrics: QueueMetrics,
    /// Settings.
    pub config: ApiConfig,
    /// The bound on pending work (`server.max_pending`).
    pub admission: Arc<Admission>,
    /// Permits for callers held waiting (`server.max_waiting`); a caller
    /// that finds none gets its 202 at once instead of waiting.
    pub waiting: Semaphore,
    /// Becomes `true` when the process starts shutting down: waiting callers
    /// are answered at once (with their result, or a 202 and `Location`).
    pub stopping: watch::Receiver<bool>,
}

impl ApiState {
    fn metrics_admission_refused(&self) {
        self.metrics.admission_refused().inc();
    }
}

/// The route templates served, as they appear in metrics and the API description.
pub const ROUTES: &[&str] = &[
    "/api/v1/submit",
    "/api/v1/status/{correlation_id}",
    "/api/v1/response/{correlation_id}",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/api/v1/dead-letters",
    "/api/v1/dead-letters/redrive",
];

/// The metrics label of every passthrough request, whatever its path.
pub const PASSTHROUGH_ROUTE: &str = "passthrough";

/// Health and metrics only, for processes that run workers without the API:
/// a port opened to probes and scrapers changes nothing.
pub fn admin_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(ROUTES[3], get(health::health))
        .route(ROUTES[4], get(health::live))
        .route(ROUTES[5], get(health::ready))
        .route(ROUTES[6], get(telemetry::metrics))
        .fallback(problem::not_found)
        // Counts requests and refuses misframed ones (`framing`): every
        // router needs it.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            telemetry::track,
        ))
        .with_state(state)
}

/// Builds the API router; with a sidecar `path_prefix`, the passthrough
/// ingress is mounted under it.
pub fn router(state: Arc<ApiState>) -> Router {
    let mut router = Router::new();
    if let Some(prefix) = state
        .config
        .sidecar
        .as_ref()
        .and_then(|s| s.path_prefix.as_deref())
    {
        // `{*path}` matches no empty segment: `/prefix/` needs its own route.
        router = router
            .route(prefix, any(sidecar::passthrough))
            .route(&format!("{prefix}/"), any(sidecar::passthrough))
            .route(&format!("{prefix}/{{*path}}"), any(sidecar::passthrough));
    }
    router
        .route(ROUTES[0], post(handlers::submit))
        .route(ROUTES[1], get(handlers::status).delete(handlers::cancel))
        .route(ROUTES[2], get(handlers::response))
        .route(ROUTES[3], get(health::health))
        .route(ROUTES[4], get(health::live))
        .route(ROUTES[5], get(health::ready))
        .route(ROUTES[6], get(telemetry::metrics))
        .route(ROUTES[7], get(docs::openapi))
        .route(ROUTES[8], get(docs::page))
        .route(ROUTES[9], get(dead_letters::list))
        .route(ROUTES[10], post(dead_letters::redrive))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        // Counts requests and refuses misframed ones (`framing`): every
        // router needs it.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            telemetry::track,
        ))
        .with_state(state)
}

/// The passthrough ingress on its own port: every method and path is queued
/// and replayed to the backend, except the status and response resources
/// that its `202` answers point to.
pub fn sidecar_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(ROUTES[1], get(handlers::status).delete(handlers::cancel))
        .route(ROUTES[2], get(handlers::response))
        .fallback(sidecar::passthrough)
        .method_not_allowed_fallback(problem::method_not_allowed)
        // Counts requests and refuses misframed ones (`framing`): every
        // router needs it.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            telemetry::track_sidecar,
        ))
        .with_state(state)
}

/// The first value of query parameter `name`, percent-decoded as any
/// client may encode it (`?limit=%31%30` is `?limit=10`).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
