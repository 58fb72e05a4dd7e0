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
use openhqm_core::hop_by_hop::{is_hop_by_hop, named_by_connection};
use openhqm_core::time::rfc3339_ms;
use openhqm_core::{CorrelationId, Envelope, Metadata, RequestRecord, RequestStatus, ResultData};
use openhqm_queue::Durability;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::accept::{Accepted, accept, stamp};
use crate::handlers::{IDEMPOTENT_REPLAYED, accepted_response, read_limited};
use crate::prefer::{self, PREFER, PREFERENCE_APPLIED, Preferences};
use crate::wait::wait_for_answer;
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
    /// Queue the caller's `Host`, for the replay to send instead of the
    /// endpoint URL's.
    pub preserve_host: bool,
}

/// Request headers that never travel with the message besides the
/// hop-by-hop ones: they describe this request to the ingress, or are
/// answered here. (`Prefer` travels without the preferences answered here.)
const NOT_QUEUED: &[&str] = &["host", "content-length", "expect", idempotency::HEADER];

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
    // A CONNECT names a host to tunnel to, not a resource of the app: there
    // is nothing to replay.
    if method == Method::CONNECT {
        return Err(crate::problem::method_not_allowed(method, uri).await);
    }
    // `OPTIONS *` asks about this server, not about a resource of the app.
    if uri.path() == "*" {
        return Err(Problem::invalid_path(
            "the asterisk-form target (`OPTIONS *`) names no resource of the app to replay; nothing was queued",
        ));
    }
    let path = replay_path(uri.path(), sidecar.path_prefix.as_deref());
    // Climbing above the root climbs out of any base path the endpoint has:
    // the forwarder would refuse it for good, so the caller is told now.
    if !openhqm_core::path::within("/", path) {
        return Err(Problem::invalid_path(
            "the path climbs above its root (a `..` segment); nothing was queued",
        ));
    }
    crate::accept::refuse_early(&state, &headers)?;
    let (bytes, held) = read_limited(&state, &headers, body).await?;
    let query = uri.query().unwrap_or_default();
    // Only the header: a `wait` query parameter belongs to the app.
    let prefs = Preferences::from_headers(&headers);
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
    // An absolute-form target's authority wins over `Host` (RFC 9112 §3.2.2).
    let host = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    let call = Call {
        method: &method,
        host,
        path,
        query,
        headers: &headers,
        body: &bytes,
    };
    let envelope = call.envelope(sidecar, id, now);
    // The envelope holds the body now; a large one is not kept twice while
    // the caller waits.
    drop(bytes);
    // `respond-async` alone: 202 at once. With `wait=N` too: an answer
    // within N seconds, else 202 (RFC 7240 §4.1, §4.3).
    let wait = match (prefs.respond_async, prefs.wait) {
        (true, None) => Duration::ZERO,
        (_, asked) => asked.unwrap_or(sidecar.wait).min(state.config.max_wait),
    };
    // A caller that waits takes the backend's answer as its acknowledgement,
    // so its message need not be on disk before it is forwarded (the
    // embedded engine holds it in memory): written and synced before any
    // 202, and at a clean shutdown.
    let durability = if wait.is_zero() {
        Durability::Full
    } else {
        Durability::Deferred
    };
    let accepted = accept(&state, envelope, 0, keyed, now, durability).await?;
    // Written, the body has left this process; a deferred call's message
    // may be held in memory until it is answered, so it keeps its share.
    let _held = (durability == Durability::Deferred).then_some(held);
    let replayed = matches!(accepted, Accepted::Replayed(_));
    let record = match accepted {
        Accepted::New(r) | Accepted::Replayed(r) => r,
    };
    let (record, honoured) = wait_for_answer(&state, record, wait).await;
    let (id, finished) = (record.correlation_id, record.status.is_terminal());
    // A 202 says "stored": ours may not be synced yet, nor a replayed
    // key's, whose first caller may still be waiting; nor its status record,
    // which a key must not outlive (the two syncs share one commit on the
    // embedded engine).
    if !finished && (durability == Durability::Deferred || replayed) {
        let (queue, store) = tokio::join!(state.queue.sync(), state.store.sync());
        if let Err(e) = queue {
            tracing::warn!(correlation_id = %id, error = %e, "queue sync not confirmed; answered 503");
            return Err(Problem::unconfirmed("queue", state.config.retry_after_secs));
        }
        if let Err(e) = store {
            tracing::warn!(correlation_id = %id, error = %e, "result store sync not confirmed; answered 503");
            return Err(Problem::unconfirmed(
                "result store",
                state.config.retry_after_secs,
            ));
        }
    }
    // A problem (no answer from the backend) carries the headers below too.
    let mut response = if finished {
        answer(record, method == Method::HEAD).unwrap_or_else(IntoResponse::into_response)
    } else {
        accepted_response(&record, state.config.retry_after_secs)
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        h.insert(CORRELATION_ID.clone(), v);
    }
    // The preferences honoured: the wait the caller asked for (as capped),
    // if there was one, and `respond-async` if it got a 202 for it. Appended:
    // the application may have applied its own.
    let applied = prefer::applied(
        prefs.respond_async && !finished,
        (prefs.wait.is_some() && honoured).then_some(wait),
    );
    if let Some(v) = applied {
        h.append(PREFERENCE_APPLIED.clone(), v);
    }
    h.append(header::VARY, HeaderValue::from_static("prefer"));
    if replayed {
        h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// One caller's request, as received.
struct Call<'a> {
    method: &'a Method,
    /// The host the caller asked for.
    host: Option<&'a str>,
    path: &'a str,
    query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl Call<'_> {
    /// The envelope that replays this call against the sidecar's endpoint.
    fn envelope(&self, sidecar: &SidecarConfig, id: CorrelationId, now: u64) -> Envelope {
        let mut extra = serde_json::Map::new();
        extra.insert("path".into(), Value::String(self.path.to_owned()));
        if !self.query.is_empty() {
            extra.insert("query".into(), Value::String(self.query.to_owned()));
        }
        let Queued { text, binary } = queued_headers(
            self.headers,
            self.host.filter(|_| sidecar.preserve_host),
            sidecar.forward_headers.as_deref(),
        );
        Envelope {
            v: ENVELOPE_VERSION,
            correlation_id: id,
            payload: RawValue::NULL.to_owned(),
            headers: Some(text),
            timestamp: Some(Value::String(rfc3339_ms(now))),
            metadata: Metadata {
                endpoint: sidecar.endpoint.clone(),
                method: Some(self.method.as_str().to_owned()),
                extra,
                ..Metadata::default()
            },
            raw_body: Some(BASE64.encode(self.body)),
            binary_headers: binary,
            passthrough: true,
            idempotency_key: idempotency::passed_on(self.headers),
            derived_headers: BTreeMap::new(),
        }
    }
}

/// The backend's answer as stored, or a problem saying why there is none.
/// The answer to a `HEAD` keeps the backend's `Content-Length`: it tells the
/// size of the body a `GET` would get, and this one has none to measure.
fn answer(record: RequestRecord, head: bool) -> Result<Response, Problem> {
    let outcome = record.outcome.unwrap_or_default();
    // A failed request relays the backend's last answer (a 503 after the
    // retries) only with its body: one over `proxy.max_response_size` keeps
    // just the head, for the operator, and is no answer to pass on.
    let relayable = record.status != RequestStatus::Failed || outcome.raw_body.is_some();
    let Some(status) = outcome
        .status_code
        .filter(|_| relayable)
        .and_then(|s| StatusCode::from_u16(s).ok())
    else {
        // The cause (an address, an OS error) goes to the log, not the caller;
        // `/api/v1/response/{id}` keeps it for the operator.
        let id = record.correlation_id;
        let error = outcome.error.as_deref().unwrap_or("");
        tracing::warn!(correlation_id = %id, status = %record.status, error, "passthrough request ended without a backend answer");
        return Err(match record.status {
            RequestStatus::Timeout => Problem::gateway_timeout(id),
            RequestStatus::Cancelled => Problem::cancelled(id),
            _ => Problem::bad_gateway(id),
        });
    };
    // A bare body: no content type of our own, only the backend's.
    let mut response = Response::new(Body::from(exact_body(&outcome)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    // Hop-by-hop headers, and those the backend's `Connection` named, were
    // dropped when the answer was stored.
    let raw = outcome.raw_headers.as_ref();
    for (name, values) in outcome.headers.iter().flatten() {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        // Framing is redone for the new connection.
        if is_hop_by_hop(header.as_str()) || (header == header::CONTENT_LENGTH && !head) {
            continue;
        }
        // Values `headers` shows lossily go as the backend sent their bytes.
        if let Some(exact) = raw.and_then(|r| r.get(name)) {
            for value in exact {
                if let Some(v) = BASE64
                    .decode(value)
                    .ok()
                    .and_then(|b| HeaderValue::from_bytes(&b).ok())
                {
                    h.append(header.clone(), v);
                }
            }
            continue;
        }
        let values: Vec<&Value> = match values {
            Value::Array(many) => many.iter().collect(),
            one => vec![one],
        };
        for value in values {
            if let Some(v) = value.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
                h.append(header.clone(), v);
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
                serde_json::to_vec(o).unwrap_or_default()
            }
        }
        Some(v) => serde_json::to_vec(v).unwrap_or_default(),
    }
}

/// The path replayed to the backend: the request's, less the mount prefix.
fn replay_path<'a>(path: &'a str, prefix: Option<&str>) -> &'a str {
    let rest = prefix.and_then(|p| path.strip_prefix(p)).unwrap_or(path);
    if rest.is_empty() { "/" } else { rest }
}

/// The caller's headers as the message carries them.
struct Queued {
    /// Values that are UTF-8 (nearly all), as text.
    text: BTreeMap<String, String>,
    /// Values that are not (obs-text, RFC 9110 §5.5), as base64 of their bytes.
    binary: BTreeMap<String, String>,
}

/// The caller's headers that travel with the message, one entry per name
/// (repeated ones joined as RFC 9110 §5.3 allows; cookies with `; `), and
/// `host` if the sidecar preserves it (whatever the forward list says: the
/// replay's `Host` is the sidecar's setting, not a forwarded header).
fn queued_headers(headers: &HeaderMap, host: Option<&str>, forward: Option<&[String]>) -> Queued {
    let mut joined: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(host) = host {
        joined.insert(header::HOST.as_str().to_owned(), host.as_bytes().to_vec());
    }
    let connection_named = named_by_connection(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    for (name, value) in headers {
        let n = name.as_str();
        if is_hop_by_hop(n)
            || NOT_QUEUED.contains(&n)
            || connection_named.iter().any(|c| c == n)
            || forward.is_some_and(|list| !list.iter().any(|f| f == n))
        {
            continue;
        }
        // Bytes as sent: RFC 9110 allows obs-text.
        let application;
        let value = if name == PREFER {
            let Some(kept) = value.to_str().ok().and_then(prefer::for_the_application) else {
                continue;
            };
            application = kept;
            application.as_bytes()
        } else {
            value.as_bytes()
        };
        joined
            .entry(n.to_owned())
            .and_modify(|v| {
                v.extend_from_slice(if n == "cookie" { b"; " } else { b", " });
                v.extend_from_slice(value);
            })
            .or_insert_with(|| value.to_vec());
    }
    let mut queued = Queued {
        text: BTreeMap::new(),
        binary: BTreeMap::new(),
    };
    for (name, bytes) in joined {
        match String::from_utf8(bytes) {
            Ok(text) => queued.text.insert(name, text),
            Err(e) => queued.binary.insert(name, BASE64.encode(e.into_bytes())),
        };
    }
    queued
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
        h.append(
            "x-latin",
            HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
        );
        let Queued { text: q, binary } = queued_headers(&h, None, None);
        assert_eq!(binary.len(), 1, "{binary:?}");
        assert_eq!(
            BASE64.decode(&binary["x-latin"]).expect("base64"),
            b"caf\xe9"
        );
        let names: Vec<&str> = q.keys().map(String::as_str).collect();
        assert_eq!(names, ["accept", "authorization", "cookie"]);
        assert_eq!(q["cookie"], "a=1; b=2");
        assert_eq!(q["accept"], "text/html, application/json");
        let accept = ["accept".to_owned()];
        let only = queued_headers(&h, None, Some(&accept));
        assert_eq!(only.text.keys().collect::<Vec<_>>(), ["accept"]);
        assert!(only.binary.is_empty());
        // The caller's Host goes with the message when it is to be
        // preserved, whatever the forward list.
        let with_host = queued_headers(&h, Some("app:8080"), Some(&accept)).text;
        assert_eq!(with_host.keys().collect::<Vec<_>>(), ["accept", "host"]);
        assert_eq!(with_host["host"], "app:8080");
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
