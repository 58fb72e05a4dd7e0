//! Real HTTP backends on 127.0.0.1 and helpers to drive a [`ProxyProcessor`].
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::Request as HttpRequest;
use axum::response::{IntoResponse, Response};
use openhqm_core::{CorrelationId, Envelope, Failure, Metadata};
use openhqm_metrics::Metrics;
use openhqm_upstream::{EndpointConfig, ProxyProcessor, UpstreamConfig};
use openhqm_worker::{Output, Processor, Request};
use serde_json::{Value, json};

/// Serves `router` on an ephemeral port; the server lives as long as the test runtime.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// A backend answering every request with what it received.
pub fn echo() -> Router {
    Router::new().fallback(echo_handler)
}

pub async fn echo_handler(req: HttpRequest) -> Response {
    let (parts, body) = req.into_parts();
    let headers: BTreeMap<String, Vec<String>> = parts
        .headers
        .keys()
        .map(|k| {
            let vals = parts
                .headers
                .get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect();
            (k.as_str().to_owned(), vals)
        })
        .collect();
    let body = to_bytes(body, usize::MAX).await.unwrap();
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response()
}

/// A response with the given status, headers and body.
pub fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).unwrap()
}

pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

/// A config with one endpoint `api`.
pub fn config(endpoint: EndpointConfig) -> UpstreamConfig {
    let mut cfg = UpstreamConfig::default();
    cfg.endpoints.insert("api".into(), endpoint);
    cfg
}

pub fn processor(cfg: &UpstreamConfig) -> ProxyProcessor {
    assert_eq!(cfg.validate(), Vec::new());
    ProxyProcessor::new(cfg, &Metrics::new()).unwrap()
}

/// An envelope for endpoint `api`.
pub fn envelope(payload: &str, headers: &[(&str, &str)]) -> Envelope {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Envelope {
        v: 1,
        correlation_id: CorrelationId::new(),
        payload: serde_json::value::RawValue::from_string(payload.to_owned()).unwrap(),
        headers: Some(headers),
        timestamp: None,
        metadata: Metadata {
            endpoint: Some("api".into()),
            ..Metadata::default()
        },
        raw_body: None,
        binary_headers: BTreeMap::new(),
        passthrough: false,
        idempotency_key: None,
        derived_headers: BTreeMap::new(),
    }
}

pub async fn call(p: &ProxyProcessor, env: &Envelope) -> Result<Output, Failure> {
    call_within(p, env, Duration::from_secs(30)).await
}

/// Calls until a call is admitted, putting a `Busy` one (no slot) back
/// for its `retry_after` as the worker pool releases its message.
pub async fn call_admitted(p: &ProxyProcessor, env: &Envelope) -> Result<Output, Failure> {
    loop {
        match call(p, env).await {
            Err(f) if f.kind == openhqm_core::FailureKind::Busy => {
                tokio::time::sleep(f.retry_after.unwrap_or(Duration::from_millis(20))).await;
            }
            other => return other,
        }
    }
}

/// One attempt the worker allows `timeout` for.
pub async fn call_within(
    p: &ProxyProcessor,
    env: &Envelope,
    timeout: Duration,
) -> Result<Output, Failure> {
    p.process(&Request {
        envelope: env,
        attempt: 1,
        timeout,
    })
    .await
}

/// The echo backend's record of the request headers, one value per name.
pub fn seen_headers(out: &Output) -> BTreeMap<String, String> {
    out.shown_result()["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v[0].as_str().unwrap().to_owned()))
        .collect()
}

/// Waits for `cond` with a deadline instead of sleeping a fixed time.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn value(v: &Value, path: &str) -> Value {
    v.pointer(path).cloned().unwrap_or(Value::Null)
}

/// Like [`processor`], keeping the metrics to inspect.
pub fn processor_with_metrics(cfg: &UpstreamConfig) -> (ProxyProcessor, std::sync::Arc<Metrics>) {
    assert_eq!(cfg.validate(), Vec::new());
    let m = Metrics::new();
    (ProxyProcessor::new(cfg, &m).unwrap(), m)
}
