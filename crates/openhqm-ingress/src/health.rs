//! Health: `/health` (the contract's shape, really probing the queue and the
//! store), `/health/live` (the process answers) and `/health/ready` (503 while
//! a dependency is down).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use openhqm_core::time::{now_ms, rfc3339_ms};
use serde_json::{Value, json};

use crate::ApiState;

async fn probe<E: std::fmt::Display>(
    timeout: std::time::Duration,
    check: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

fn component(result: &Result<(), String>) -> Value {
    match result {
        Ok(()) => json!({ "status": "healthy" }),
        Err(e) => json!({ "status": "unhealthy", "error": e }),
    }
}

/// Probes both dependencies; `true` if both answer.
async fn check(state: &ApiState) -> (bool, Value) {
    let timeout = state.config.probe_timeout;
    let (queue, store) = tokio::join!(
        probe(timeout, state.queue.health()),
        probe(timeout, state.store.health())
    );
    let ok = queue.is_ok() && store.is_ok();
    for (name, result) in [("queue", &queue), ("store", &store)] {
        if let Err(e) = result {
            tracing::warn!(component = name, error = %e, "health probe failed");
        }
    }
    (
        ok,
        json!({ "queue": component(&queue), "store": component(&store) }),
    )
}

fn with_status(ok: bool, body: &Value, retry_after: u32) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !ok {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    response
}

/// `GET /health`.
pub(crate) async fn health(State(state): State<Arc<ApiState>>) -> Response {
    let (ok, components) = check(&state).await;
    let body = json!({
        "status": if ok { "healthy" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": rfc3339_ms(now_ms()),
        "components": components,
    });
    with_status(ok, &body, state.config.retry_after_secs)
}

/// `GET /health/live`.
pub(crate) async fn live() -> Response {
    with_status(true, &json!({ "status": "alive" }), 0)
}

/// `GET /health/ready`.
pub(crate) async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    let (ok, components) = check(&state).await;
    let body =
        json!({ "status": if ok { "ready" } else { "not_ready" }, "components": components });
    with_status(ok, &body, state.config.retry_after_secs)
}
