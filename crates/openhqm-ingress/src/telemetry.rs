//! Request metrics (labelled by route template, never by raw path) and
//! `/metrics`; the layer that carries them also refuses misframed requests
//! ([`crate::framing`]).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiState, PASSTHROUGH_ROUTE, Problem, ROUTES};

/// The route template. A matched route that is not one of ours is the
/// passthrough prefix route; an unmatched request is `fallback`'s to name.
fn route_label(matched: Option<&MatchedPath>, fallback: &'static str) -> &'static str {
    match matched {
        Some(m) => ROUTES
            .iter()
            .find(|r| **r == m.as_str())
            .copied()
            .unwrap_or(PASSTHROUGH_ROUTE),
        None => fallback,
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Request metrics of the API router.
pub(crate) async fn track(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    observe(&state, request, next, "unmatched").await
}

/// Request metrics of the sidecar port, where everything unmatched is passthrough.
pub(crate) async fn track_sidecar(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    observe(&state, request, next, PASSTHROUGH_ROUTE).await
}

async fn observe(
    state: &ApiState,
    request: Request,
    next: Next,
    unmatched: &'static str,
) -> Response {
    let route = route_label(request.extensions().get::<MatchedPath>(), unmatched);
    let method = method_label(request.method());
    let started = Instant::now();
    // Framing is checked here rather than in a layer of its own: one layer
    // fewer for every request to pass through (a boxed future and a cloned
    // service each), and what it refuses is counted all the same.
    let response = match crate::framing::check(&request) {
        Ok(()) => next.run(request).await,
        Err(problem) => problem.into_response(),
    };
    state.metrics.api_request(
        method,
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    if !state.config.metrics_enabled {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "metrics-disabled",
            "Metrics are disabled",
            "monitoring.metrics_enabled is false",
        )
        .into_response();
    }
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(openhqm_metrics::CONTENT_TYPE),
    );
    response
}
