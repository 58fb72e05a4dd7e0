//! The transparent (passthrough) ingress: a queue in front of an app whose
//! clients change only the host they call.
//!
//! Any method, path, query, headers and body are queued as one envelope
//! (`passthrough: true`, the exact body in `raw_body`); a worker replays them
//! against the sidecar's endpoint and keeps the backend's exact answer. The
//! caller waits on the queue for that answer, woken by the store's
//! completion notification, and gets the backend's status, headers and
//! body. RFC 7240: `Prefer: respond-async` asks for a `202` at once, and
//! `wait=N` bounds the wait; once the wait runs out (or the process starts
//! shutting down, or too many callers are already waiting) the answer is
//! `202 Accepted` with the status resource in `Location` and `Retry-After`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use openhqm_core::envelope::ENVELOPE_VERSION;
use openhqm_core::time::rfc3339_ms;
use openhqm_core::{Envelope, Metadata, RequestRecord, RequestStatus, ResultData};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::accept::{Accepted, accept, stamp};
use crate::handlers::{read_limited, status_body};
use crate::prefer::Preferences;
use crate::{ApiState, Problem, idempotency};

/// Settings of the passthrough ingress (`sidecar.*`).
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The proxy endpoint requests are replayed against; `None` for
    /// `proxy.default_endpoint`.
    pub endpoint: Option<String>,
    /// How long a caller waits for the backend's answer when it does not
    /// say (`Prefer: wait=N`); capped by `server.max_wait_seconds`.
    pub wait: Duration,
    /// Mounted under this prefix of the API port (stripped before the
    /// replay), rather than (or as well as) on its own port.
    pub path_prefix: Option<String>,
    /// Client headers passed on (lower-case names); `None` passes all but
    /// hop-by-hop ones.
    pub forward_headers: Option<Vec<String>>,
}

/// Request headers that never travel with the message: they describe this
/// connection or are answered here.
const NOT_QUEUED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "trailer",
    "host",
    "content-length",
    "expect",
    "prefer",
    idempotency::HEADER,
];

/// Response headers not copied from the stored answer: framing is redone
/// for the new connection.
const NOT_REPLAYED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "content-length",
];

static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Any method on any path: queue it, then wait for the backend's answer.
pub(crate) async fn passthrough(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let Some(sidecar) = state.config.sidecar.as_ref() else {
        return Err(crate::problem::not_found(uri).await);
    };
    let bytes = read_limited(&headers, body, state.config.max_body_size).await?;
    let path = replay_path(uri.path(), sidecar.path_prefix.as_deref());
    let query = uri.query().unwrap_or_default();
    // Only the header: a `wait` query parameter belongs to the app.
    let prefs = Preferences::from_request(&headers, None);
    let keyed = idempotency::keyed(
        &state.config.idempotency,
        &headers,
        &[
            method.as_str().as_bytes(),
            path.as_bytes(),
            query.as_bytes(),
            &bytes,
        ],
    )?;
    let (id, now) = stamp();
    let mut extra = serde_json::Map::new();
    extra.insert("path".into(), Value::String(path.to_owned()));
    if !query.is_empty() {
        extra.insert("query".into(), Value::String(query.to_owned()));
    }
    let envelope = Envelope {
        v: ENVELOPE_VERSION,
        correlation_id: id,
        payload: RawValue::NULL.to_owned(),
        headers: Some(queued_headers(&headers, sidecar.forward_headers.as_deref())),
        timestamp: Some(Value::String(rfc3339_ms(now))),
        metadata: Metadata {
            endpoint: sidecar.endpoint.clone(),
            method: Some(method.as_str().to_owned()),
            extra,
            ..Metadata::default()
        },
        raw_body: Some(BASE64.encode(&bytes)),
        passthrough: true,
        idempotency_key: None,
        derived_headers: BTreeMap::new(),
    };
    let accepted = accept(&state, envelope, 0, keyed, now).await?;
    let replayed = matches!(accepted, Accepted::Replayed(_));
    let record = match accepted {
        Accepted::New(r) | Accepted::Replayed(r) => r,
    };
    let record = if prefs.respond_async {
        record
    } else {
        let wait = prefs
            .wait
            .unwrap_or(sidecar.wait)
            .min(state.config.max_wait);
        wait_for_answer(&state, record, wait).await?
    };
    let mut response = if record.status.is_terminal() {
        answer(&record)?
    } else {
        accepted_response(&record)
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&record.correlation_id.to_string()) {
        h.insert(CORRELATION_ID.clone(), v);
    }
    if let Some(applied) = applied(&prefs, record.status.is_terminal(), &state) {
        h.insert(PREFERENCE_APPLIED.clone(), applied);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Waits until the record is terminal, the wait runs out, or the process
/// starts shutting down; returns the freshest record. A caller beyond
/// `server.max_waiting` does not wait at all.
pub(crate) async fn wait_for_answer(
    state: &ApiState,
    record: RequestRecord,
    wait: Duration,
) -> Result<RequestRecord, Problem> {
    if record.status.is_terminal() || wait.is_zero() {
        return Ok(record);
    }
    let Ok(_permit) = state.waiting.try_acquire() else {
        return Ok(record);
    };
    let mut stopping = state.stopping.clone();
    let id = record.correlation_id;
    let stopped = async move {
        if stopping.wait_for(|stop| *stop).await.is_err() {
            // No one can signal a stop any more: it never comes.
            std::future::pending::<()>().await;
        }
    };
    let waited = tokio::select! {
        r = state.store.wait_terminal(id, wait) => r,
        () = stopped => {
            // Shutting down: one last look, then hand out the Location.
            state.store.get(id).await.map(|r| r.filter(|r| r.status.is_terminal()))
        }
    };
    match waited {
        Ok(Some(done)) => Ok(done),
        Ok(None) => Ok(record),
        Err(e) => {
            tracing::warn!(correlation_id = %id, error = %e, "waiting for a result failed; answered 503");
            Err(Problem::unavailable(
                "result store",
                state.config.retry_after_secs,
            ))
        }
    }
}

/// The `Preference-Applied` value, if a preference shaped this answer.
fn applied(prefs: &Preferences, terminal: bool, state: &ApiState) -> Option<HeaderValue> {
    if prefs.respond_async && !terminal {
        return Some(HeaderValue::from_static("respond-async"));
    }
    let wait = prefs.wait?.min(state.config.max_wait);
    HeaderValue::from_str(&format!("wait={}", wait.as_secs())).ok()
}

/// `202 Accepted` pointing at the status resource.
fn accepted_response(record: &RequestRecord) -> Response {
    let body = status_body(record).to_string();
    let mut response = (StatusCode::ACCEPTED, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(location) =
        HeaderValue::from_str(&format!("/api/v1/status/{}", record.correlation_id))
    {
        h.insert(header::LOCATION, location);
    }
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The backend's answer as stored, or a problem saying why there is none.
fn answer(record: &RequestRecord) -> Result<Response, Problem> {
    let outcome = record.outcome.clone().unwrap_or_default();
    let Some(status) = outcome
        .status_code
        .and_then(|s| StatusCode::from_u16(s).ok())
    else {
        let error = outcome.error.unwrap_or_else(|| "no answer".into());
        return Err(match record.status {
            RequestStatus::Timeout => Problem::gateway_timeout(error),
            RequestStatus::Cancelled => {
                Problem::not_cancellable(&record.correlation_id.to_string(), record.status.as_str())
            }
            _ => Problem::bad_gateway(error),
        });
    };
    // A bare body: no content type of our own, only the backend's.
    let mut response = Response::new(Body::from(exact_body(&outcome)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    for (name, values) in outcome.headers.iter().flatten() {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if NOT_REPLAYED.contains(&name.as_str()) {
            continue;
        }
        let values: Vec<&Value> = match values {
            Value::Array(many) => many.iter().collect(),
            one => vec![one],
        };
        for value in values {
            if let Some(v) = value.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
                h.append(name.clone(), v);
            }
        }
    }
    Ok(response)
}

/// The stored body's bytes: exact when kept, else rebuilt from the result.
fn exact_body(outcome: &ResultData) -> Vec<u8> {
    if let Some(raw) = &outcome.raw_body
        && let Ok(bytes) = BASE64.decode(raw)
    {
        return bytes;
    }
    match &outcome.result {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(o)) if o.contains_key("content_type") => {
            if let Some(text) = o.get("response").and_then(Value::as_str) {
                text.as_bytes().to_vec()
            } else if let Some(b64) = o.get("response_base64").and_then(Value::as_str) {
                BASE64.decode(b64).unwrap_or_default()
            } else {
                Value::Object(o.clone()).to_string().into_bytes()
            }
        }
        Some(v) => v.to_string().into_bytes(),
    }
}

/// The path replayed to the backend: the request's, less the mount prefix.
fn replay_path<'a>(path: &'a str, prefix: Option<&str>) -> &'a str {
    let rest = prefix.and_then(|p| path.strip_prefix(p)).unwrap_or(path);
    if rest.is_empty() { "/" } else { rest }
}

/// The caller's headers that travel with the message, one entry per name
/// (repeated ones joined as RFC 9110 §5.3 allows; cookies with `; `).
fn queued_headers(headers: &HeaderMap, forward: Option<&[String]>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let connection_named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in headers {
        let n = name.as_str();
        if NOT_QUEUED.contains(&n)
            || connection_named.iter().any(|c| c == n)
            || forward.is_some_and(|list| !list.iter().any(|f| f == n))
        {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        out.entry(n.to_owned())
            .and_modify(|v| {
                v.push_str(if n == "cookie" { "; " } else { ", " });
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_prefix_is_stripped_and_root_stays_root() {
        assert_eq!(replay_path("/app/orders/1", Some("/app")), "/orders/1");
        assert_eq!(replay_path("/app", Some("/app")), "/");
        assert_eq!(replay_path("/orders", None), "/orders");
    }

    #[test]
    fn hop_by_hop_and_our_own_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("app:8080"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-trace"),
        );
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("prefer", HeaderValue::from_static("respond-async"));
        h.insert("idempotency-key", HeaderValue::from_static("k"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        h.append("accept", HeaderValue::from_static("text/html"));
        h.append("accept", HeaderValue::from_static("application/json"));
        let q = queued_headers(&h, None);
        let names: Vec<&str> = q.keys().map(String::as_str).collect();
        assert_eq!(names, ["accept", "authorization", "cookie"]);
        assert_eq!(q["cookie"], "a=1; b=2");
        assert_eq!(q["accept"], "text/html, application/json");
        let only = queued_headers(&h, Some(&["accept".to_owned()]));
        assert_eq!(only.keys().collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn the_body_is_exact_when_kept_and_rebuilt_otherwise() {
        let kept = ResultData {
            raw_body: Some(BASE64.encode(b"{ \"a\" : 1 }")),
            result: Some(serde_json::json!({"a": 1})),
            ..ResultData::default()
        };
        assert_eq!(exact_body(&kept), b"{ \"a\" : 1 }");
        let text = ResultData {
            result: Some(serde_json::json!({"response": "hi", "content_type": "text/plain"})),
            ..ResultData::default()
        };
        assert_eq!(exact_body(&text), b"hi");
        assert_eq!(exact_body(&ResultData::default()), b"");
    }
}
