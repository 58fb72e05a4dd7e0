//! Submit, status and response.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use openhqm_core::envelope::{MAX_PAYLOAD_DEPTH, nesting_depth, unreadable};
use openhqm_core::time::rfc3339_ms;
use openhqm_core::{
    CallbackPolicy, CallbackUrlError, CorrelationId, Envelope, RequestRecord, RequestStatus,
    SubmitRequest,
};
use openhqm_queue::Durability;
use openhqm_store::{Transition, Update};
use serde_json::{Value, json};

use crate::accept::{Accepted, accept, stamp};
use crate::body_budget::{BodyHold, Spent};
use crate::prefer::{self, Preferences};
use crate::{ApiState, Problem, idempotency};

/// The `{id}` of a request's path. One that is not UTF-8 once decoded names
/// no request: 404 as for any unknown id, where axum's own rejection would be
/// a `text/plain` 400.
pub(crate) struct IdParam(String);

impl<S: Send + Sync> FromRequestParts<S> for IdParam {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            // Quoted as sent (percent-encoded), which is printable.
            Err(_) => Err(Problem::unknown_request(
                parts.uri.path().rsplit('/').next().unwrap_or_default(),
            )),
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    // `to_vec`, not `to_string`: `Display` goes through `fmt`, a few times
    // slower. A `Value` always serializes.
    let mut response = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Reads the body, refusing it as soon as it passes the limit, or once the
/// client has sent nothing for `idle` (a client trickling its body, or
/// stalled in the middle of it, must not hold a task and its buffer for
/// ever; a slow but steady upload still gets through).
///
/// The body holds its size of `server.max_buffered_bytes` (see
/// [`crate::body_budget`]) until the returned hold is dropped.
pub(crate) async fn read_limited(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(bytes::Bytes, BodyHold), Problem> {
    use http_body_util::BodyExt as _;
    let (limit, idle) = (state.config.max_body_size, state.config.read_timeout);
    let budget = &state.admission.bodies;
    let spent = |s: Spent| {
        state.metrics_admission_refused();
        Problem::receiving_too_much(s.budget, state.config.retry_after_secs)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Problem::too_large(limit));
    }
    // Only bytes that arrived are charged (and allocated ahead of them): a
    // client that declares a large body and trickles it holds what it sent.
    let mut hold = budget.hold(0).map_err(spent)?;
    let mut body = http_body_util::Limited::new(body, limit);
    let mut bytes = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(64 * 1024));
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| Problem::body_timeout(idle))?;
        match frame {
            None => return Ok((bytes.freeze(), hold)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    budget
                        .grow(&mut hold, bytes.len() + data.len())
                        .map_err(spent)?;
                    bytes.extend_from_slice(&data);
                }
            }
            Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Problem::too_large(limit));
            }
            Some(Err(e)) => {
                return Err(Problem::unreadable_body(format!(
                    "could not read the body: {e}"
                )));
            }
        }
    }
}

fn parse_submit(
    bytes: &[u8],
    known_endpoints: Option<&HashSet<String>>,
    callbacks: &CallbackPolicy,
) -> Result<SubmitRequest, Problem> {
    let malformed = |e: serde_json::Error| {
        // serde_json counts its nesting limit as a syntax error, but the
        // body is JSON: it only nests deeper than anything here reads.
        if e.to_string().starts_with("recursion limit exceeded") {
            Problem::invalid_request(format!(
                "the body nests arrays and objects deeper than {MAX_PAYLOAD_DEPTH} levels"
            ))
        } else if (e.is_syntax() || e.is_eof())
            // Skipping a value checks neither UTF-8 nor ranges: JSON that is
            // not text is malformed, text that skips is JSON.
            && (std::str::from_utf8(bytes).is_err()
                || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err())
        {
            Problem::malformed_json(e.to_string())
        } else {
            // Valid JSON, with a value nothing here can read (`1e999`, or a
            // lone surrogate: the syntax takes them, a reader does not).
            Problem::invalid_request(field_of(bytes, &e))
        }
    };
    // serde also reads a struct from an array (fields by position): only an
    // object is a submit. Anything else that is JSON at all is 422.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(malformed)?;
        return Err(Problem::invalid_request(
            r#"the body must be a JSON object, e.g. {"payload": ...}"#,
        ));
    }
    let req: SubmitRequest = match serde_json::from_slice(bytes) {
        Ok(req) => req,
        Err(e) if e.is_syntax() || e.is_eof() => return Err(malformed(e)),
        // A value of the wrong type (`metadata.timeout: invalid type: ...`).
        Err(e) => return Err(Problem::invalid_request(field_of(bytes, &e))),
    };
    // Kept as text, the payload is not parsed here: a processor reading it
    // would find out after the 202 that it nests too deep.
    let depth = nesting_depth(req.payload.get());
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(Problem::invalid_request(format!(
            "payload: nests arrays and objects {depth} levels deep; at most {MAX_PAYLOAD_DEPTH} can be read"
        )));
    }
    // Proxy mode forwards the payload's text as it came, to backends that
    // may read what serde_json does not (JavaScript takes `1e999`).
    if known_endpoints.is_none()
        && let Some(e) = unreadable(req.payload.get())
    {
        // Its position would count from the payload, not the body.
        let e = e.to_string();
        let what = e.split(" at line ").next().unwrap_or_default();
        return Err(Problem::invalid_request(format!("payload: {what}")));
    }
    // Refused now, not found out by a worker after the 202. The value is not
    // quoted: it may be a credential.
    for (name, value) in req.headers.iter().flatten() {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || axum::http::HeaderValue::from_str(value).is_err()
        {
            return Err(Problem::invalid_request(format!(
                "headers: `{}` is not a valid HTTP header name, or its value has control characters",
                name.escape_debug()
            )));
        }
    }
    if let Some(metadata) = &req.metadata {
        metadata.validate().map_err(Problem::invalid_request)?;
        if let Some(method) = &metadata.method
            && (axum::http::Method::from_bytes(method.as_bytes()).is_err()
                || method.trim().eq_ignore_ascii_case("CONNECT"))
        {
            return Err(Problem::invalid_request(format!(
                "metadata.method `{method}` is not an HTTP method a request can be forwarded with"
            )));
        }
        if let (Some(name), Some(known)) = (&metadata.endpoint, known_endpoints)
            && !known.contains(name)
        {
            return Err(Problem::unknown_endpoint(name));
        }
        if let Some(url) = &metadata.callback_url {
            callbacks.check(url).map_err(|e| match e {
                CallbackUrlError::Invalid(_) => Problem::invalid_callback_url(e.to_string()),
                CallbackUrlError::NotAllowed(_) | CallbackUrlError::Disabled => {
                    Problem::callback_not_allowed(e.to_string())
                }
            })?;
        }
    }
    Ok(req)
}

/// `e`, found reading `bytes` as a submit, prefixed with the field it is
/// in (read again, only now that it failed, to find that field).
fn field_of(bytes: &[u8], e: &serde_json::Error) -> String {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, SubmitRequest>(&mut de) {
        Err(at) if at.path().iter().next().is_some() => format!("{}: {}", at.path(), at.inner()),
        _ => e.to_string(),
    }
}

/// W3C Trace Context: the caller's span, continued by the forward, and the
/// vendor state that goes with it.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Puts the caller's trace context (the HTTP headers tracing clients send)
/// among the headers the forward carries, unless the body's `headers` name
/// a `traceparent`: the forward continues the caller's trace (the forwarder
/// checks it).
fn continue_trace(envelope: &mut Envelope, headers: &HeaderMap) {
    let Some(parent) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let carried = envelope.headers.get_or_insert_default();
    if carried.keys().any(|k| k.eq_ignore_ascii_case(TRACEPARENT)) {
        return;
    }
    carried.insert(TRACEPARENT.to_owned(), parent.to_owned());
    if let Some(state) = headers.get(TRACESTATE).and_then(|v| v.to_str().ok()) {
        carried.insert(TRACESTATE.to_owned(), state.to_owned());
    }
}

/// Marks the answer to a repeated idempotency key.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// `POST /api/v1/submit`: store, publish, answer 202 only once both are done.
/// With an `Idempotency-Key` that already stands for a request, the answer
/// is that request's 202 (its current status), marked `Idempotent-Replayed`.
/// The first content coding of the body other than `identity`, if any.
fn content_coding(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
}

pub(crate) async fn submit(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    // The sidecar passes a coded body on as it came; a submit body is read.
    if let Some(coding) = content_coding(&headers) {
        return Err(Problem::unsupported_encoding(coding));
    }
    crate::accept::refuse_early(&state, &headers)?;
    // Held until the request is stored: its body is in memory until then.
    let (bytes, _held) = read_limited(&state, &headers, body).await?;
    let req = parse_submit(
        &bytes,
        state.config.known_endpoints.as_ref(),
        &state.config.callbacks,
    )?;
    let keyed = idempotency::keyed(&state.config.idempotency, &headers, &[&bytes])?;
    let (id, now) = stamp();
    let priority = req.metadata.as_ref().map_or(0, |m| m.priority);
    let mut envelope = Envelope::from_submit(id, req, &rfc3339_ms(now));
    envelope.idempotency_key = idempotency::passed_on(&headers);
    continue_trace(&mut envelope, &headers);
    let accepted = accept(&state, envelope, priority, keyed, now, Durability::Full).await?;
    let record = accepted.record();
    let mut response = json_response(
        StatusCode::ACCEPTED,
        &json!({
            "correlation_id": record.correlation_id,
            "status": record.status,
            "submitted_at": rfc3339_ms(record.submitted_at_ms),
        }),
    );
    if matches!(accepted, Accepted::Replayed(_)) {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `DELETE /api/v1/status/{id}`: cancels a request no worker holds yet.
/// A worker that later receives it finds it CANCELLED and drops it
/// unprocessed. 200 with the status; 409 once a worker holds it or it is
/// finished; 404 if unknown.
pub(crate) async fn cancel(
    State(state): State<Arc<ApiState>>,
    IdParam(id): IdParam,
) -> Result<Response, Problem> {
    let record = lookup(&state, &id).await?;
    let update = Update::to(RequestStatus::Cancelled);
    match state.store.transition(record.correlation_id, update).await {
        Ok(Transition::Applied(cancelled)) => {
            tracing::info!(correlation_id = %cancelled.correlation_id, "request cancelled");
            Ok(json_response(StatusCode::OK, &status_body(&cancelled)))
        }
        Ok(Transition::Refused { current }) => Err(Problem::not_cancellable(&id, current.as_str())),
        // Only a move to PROCESSING can be held.
        Ok(Transition::Held(_)) => Err(Problem::not_cancellable(
            &id,
            RequestStatus::Processing.as_str(),
        )),
        Err(e) => {
            tracing::warn!(correlation_id = %record.correlation_id, error = %e, "cancel failed; answered 503");
            Err(Problem::unavailable(
                "result store",
                state.config.retry_after_secs,
            ))
        }
    }
}

async fn lookup(state: &ApiState, raw_id: &str) -> Result<RequestRecord, Problem> {
    // A producer's own id that is not a UUID finds the request it maps to.
    let id = CorrelationId::from_text(raw_id);
    match state.store.get(id).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(Problem::unknown_request(raw_id)),
        Err(e) => {
            tracing::warn!(correlation_id = %id, error = %e, "status lookup failed; answered 503");
            Err(Problem::unavailable(
                "result store",
                state.config.retry_after_secs,
            ))
        }
    }
}

pub(crate) fn status_body(record: &RequestRecord) -> Value {
    json!({
        "correlation_id": record.correlation_id,
        "status": record.status,
        "submitted_at": rfc3339_ms(record.submitted_at_ms),
        "updated_at": rfc3339_ms(record.updated_at_ms),
    })
}

/// `GET /api/v1/status/{id}`.
pub(crate) async fn status(
    State(state): State<Arc<ApiState>>,
    IdParam(id): IdParam,
) -> Result<Response, Problem> {
    let record = lookup(&state, &id).await?;
    Ok(json_response(StatusCode::OK, &status_body(&record)))
}

/// `GET /api/v1/response/{id}`: 200 with every field once finished, 202 with
/// the status before. With `Prefer: wait=N` (or `?wait=N`) a request still in
/// progress is held until it finishes or the wait (capped by
/// `server.max_wait_seconds`) runs out, woken by the store's completion
/// notification, which reaches every listener sharing the store.
pub(crate) async fn response(
    State(state): State<Arc<ApiState>>,
    IdParam(id): IdParam,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let asked = Preferences::from_request(&headers, query.as_deref())
        .map_err(Problem::invalid_parameter)?
        .wait;
    let record = lookup(&state, &id).await?;
    let wait = asked.map_or(Duration::ZERO, |w| w.min(state.config.max_wait));
    let (record, honoured) = crate::wait::wait_for_answer(&state, record, wait).await;
    let mut response = if record.status.is_terminal() {
        json_response(StatusCode::OK, &record.response_body())
    } else {
        accepted_response(&record, state.config.retry_after_secs)
    };
    let h = response.headers_mut();
    if let Some(v) = prefer::applied(false, (asked.is_some() && honoured).then_some(wait)) {
        h.insert(prefer::PREFERENCE_APPLIED.clone(), v);
    }
    h.insert(header::VARY, HeaderValue::from_static("prefer"));
    Ok(response)
}

/// `202 Accepted` with the status, pointing at the status resource
/// (`Location`) and saying when to ask again (`Retry-After`).
pub(crate) fn accepted_response(record: &RequestRecord, retry_after: u32) -> Response {
    let mut response = json_response(StatusCode::ACCEPTED, &status_body(record));
    let h = response.headers_mut();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/api/v1/status/{}", record.correlation_id))
    {
        h.insert(header::LOCATION, location);
    }
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}
