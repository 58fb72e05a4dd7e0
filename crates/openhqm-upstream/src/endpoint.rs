//! One configured endpoint at run time, and one forward to it.
//!
//! A forward runs in named steps under one deadline,
//! `min(endpoint timeout, attempt timeout)`:
//! 1. `admit`: wait for a concurrency permit, then a rate-limit slot, both
//!    bounded by the deadline, so a backend never sees more than
//!    `max_concurrency` requests from this process nor more than its rate;
//! 2. `Pool::pick` a target;
//! 3. `prepare`: method, URL and headers;
//! 4. `exchange`: send, then read the body within `max_response_size`;
//! 5. `settle`: feed the target's health, then classify the answer.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName,
    HeaderValue, RETRY_AFTER, TRANSFER_ENCODING,
};
use hyper::{Method, Request, Uri};
use openhqm_core::hop_by_hop::{check_transfer_codings, named_by_connection};
use openhqm_core::{Envelope, LastResponse};
use openhqm_metrics::Metrics;
use openhqm_worker::Output;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Longest a forward waits for a concurrency or rate slot before its message
/// goes back to the queue ([`UpstreamError::Saturated`], not an attempt).
/// Long enough that a slot freeing up soon is taken without a round trip
/// through the queue; short enough that one saturated endpoint cannot hold
/// the worker pool from the others' messages.
pub const MAX_SLOT_WAIT: Duration = Duration::from_secs(1);

use crate::classify::{Attempted, Verdict, classify, is_target_failure, status_class};
use crate::client::{Body, HttpClient};
use crate::config::EndpointConfig;
use crate::error::UpstreamError;
use crate::gcra::RateLimiter;
use crate::headers::{
    AuthHeader, HeaderPolicy, HeaderSources, OutHeader, auth_header, is_hop_by_hop, outgoing,
};
use crate::pool::Pool;
use crate::redact::Redactor;
use crate::response::{content_type, headers_to_json, raw_headers, read_limited};
use crate::rewrite::{Base, Rewrite, target};

/// The header a caller's idempotency key is passed on in (IETF
/// draft-ietf-httpapi-idempotency-key-header).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Settings shared by every endpoint (`proxy.*`).
#[derive(Debug)]
pub(crate) struct Shared {
    pub policy: HeaderPolicy,
    /// `policy` with every client header forwarded: for passthrough requests.
    pub passthrough_policy: HeaderPolicy,
    pub max_response_size: usize,
}

/// A configured endpoint, ready to forward.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub name: String,
    pub cfg: EndpointConfig,
    method: Method,
    pub client: HttpClient,
    pub pool: Arc<Pool>,
    auth: Option<AuthHeader>,
    redactor: Redactor,
    rewrite: Rewrite,
    permits: Option<Semaphore>,
    limiter: Option<RateLimiter>,
    retries: Counter,
}

impl Endpoint {
    pub fn new(name: &str, cfg: &EndpointConfig, metrics: &Metrics) -> Result<Self, UpstreamError> {
        let bad = |message: String| UpstreamError::Config {
            endpoint: name.to_owned(),
            message,
        };
        let method = Method::from_bytes(cfg.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad(format!("`{}` is not an HTTP method", cfg.method)))?;
        let pool = Arc::new(Pool::new(name, cfg, metrics)?);
        let auth = auth_header(cfg);
        let targets = pool.targets().iter().map(|t| t.base.url());
        Ok(Self {
            name: name.to_owned(),
            method,
            client: crate::client::build(cfg).map_err(bad)?,
            redactor: Redactor::new(cfg, auth.as_ref(), targets),
            pool,
            auth,
            rewrite: Rewrite::new(cfg.path_rewrite.as_ref()).map_err(bad)?,
            permits: cfg.max_concurrency.map(|n| Semaphore::new(n.max(1))),
            limiter: cfg.rate_limit.as_ref().map(RateLimiter::new),
            retries: metrics.upstream_retries(name),
            cfg: cfg.clone(),
        })
    }

    /// Forwards one attempt of `env`.
    pub async fn forward(
        &self,
        shared: &Shared,
        env: &Envelope,
        attempt: u32,
        timeout: Duration,
    ) -> Result<Output, UpstreamError> {
        let budget = Duration::from_secs(self.cfg.timeout).min(timeout);
        let now = Instant::now();
        let deadline = now + budget;
        // Waiting for a concurrency or rate slot may take half the attempt's
        // time, no more: the backend always gets the other half, so a slow
        // queue for slots is never blamed on it as a timeout. And never more
        // than `MAX_SLOT_WAIT`: a waiting worker is one the pool cannot give
        // to another endpoint's messages.
        let _permit = self.admit(now + (budget / 2).min(MAX_SLOT_WAIT)).await?;
        let lease = self.pool.pick(env)?;
        // Counted once a target is chosen: waiting for a slot or a target
        // is no retry.
        if attempt > 1 {
            self.retries.inc();
        }
        let request = self.prepare(shared, env, &lease.target().base)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        let exchanged = exchange(&self.client, request, remaining, shared.max_response_size).await;
        let seconds = started.elapsed().as_secs_f64();
        let target = lease.target().label.clone();
        let (class, failed, result) = match exchanged {
            Ok(answer) => {
                let retry_after = answer
                    .headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok());
                let attempted = Attempted::Answered {
                    status: answer.status,
                    retry_after,
                };
                let verdict = classify(attempted, &self.cfg.retry_on, SystemTime::now());
                let (class, failed) = (status_class(attempted), is_target_failure(attempted));
                let keep_raw = env.passthrough;
                (
                    class,
                    failed,
                    settle(verdict, answer, keep_raw, &self.redactor),
                )
            }
            Err(Exchange::TimedOut) => (
                status_class(Attempted::TimedOut),
                true,
                Err(UpstreamError::Timeout(remaining)),
            ),
            // An answer too large to read is no failure of the target's.
            Err(Exchange::Failed(e @ UpstreamError::ResponseHeadTooLarge)) => {
                (status_class(Attempted::NetworkError), false, Err(e))
            }
            Err(Exchange::Failed(e)) => (status_class(Attempted::NetworkError), true, Err(e)),
            Err(Exchange::Unkept(status, e)) => {
                let attempted = Attempted::Answered {
                    status,
                    retry_after: None,
                };
                (
                    status_class(attempted),
                    is_target_failure(attempted),
                    Err(e),
                )
            }
        };
        lease.finish(class, seconds, failed);
        log_outcome(env, &self.name, &target, &result, seconds);
        result
    }

    async fn admit(&self, deadline: Instant) -> Result<Option<SemaphorePermit<'_>>, UpstreamError> {
        let started = Instant::now();
        let permit = match &self.permits {
            None => None,
            Some(sem) => match tokio::time::timeout_at(deadline.into(), sem.acquire()).await {
                Ok(Ok(p)) => Some(p),
                // The semaphore is never closed; a timeout is the one way out.
                Ok(Err(_)) | Err(_) => {
                    return Err(UpstreamError::Saturated {
                        endpoint: self.name.clone(),
                        limit: "concurrency",
                        waited: started.elapsed(),
                        retry_after: None,
                    });
                }
            },
        };
        if let Some(limiter) = &self.limiter {
            limiter
                .acquire(deadline)
                .await
                .map_err(|wait| UpstreamError::Saturated {
                    endpoint: self.name.clone(),
                    limit: "rate",
                    waited: started.elapsed(),
                    retry_after: Some(wait),
                })?;
        }
        Ok(permit)
    }

    fn prepare(
        &self,
        shared: &Shared,
        env: &Envelope,
        base: &Base,
    ) -> Result<Request<Body>, UpstreamError> {
        let method = match env.metadata.method.as_deref() {
            // CONNECT names a tunnel, not a resource to forward to.
            Some(m) => Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .ok()
                .filter(|m| *m != Method::CONNECT)
                .ok_or_else(|| UpstreamError::InvalidMethod(m.to_owned()))?,
            None => self.method.clone(),
        };
        let (uri, url_auth) = target(base, env, &self.rewrite)?;
        let sources = HeaderSources {
            client: env.headers.as_ref(),
            derived: &env.derived_headers,
            endpoint: &self.cfg.headers,
            auth: self.auth.as_ref(),
            correlation_id: env.correlation_id,
        };
        // A passthrough caller's headers were filtered by the sidecar's own
        // list at the ingress; only the strip list and hop-by-hop rules apply.
        let policy = if env.passthrough {
            &shared.passthrough_policy
        } else {
            &shared.policy
        };
        let mut headers = HeaderMap::new();
        for h in outgoing(policy, &sources) {
            let invalid = || UpstreamError::InvalidHeader(h.name().to_owned());
            let name = HeaderName::from_bytes(h.name().as_bytes()).map_err(|_| invalid())?;
            let mut value = HeaderValue::from_str(h.value()).map_err(|_| invalid())?;
            if matches!(h, OutHeader::Secret(..)) {
                value.set_sensitive(true);
            }
            headers.insert(name, value);
        }
        // A caller's bytes no string can hold go as they came, with the
        // precedence of client headers: any other source overrides them.
        for (name, bytes) in &env.binary_headers {
            let invalid = || UpstreamError::InvalidHeader(name.clone());
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            if headers.contains_key(&name) || !policy.forwards(name.as_str()) {
                continue;
            }
            let bytes = BASE64.decode(bytes).map_err(|_| invalid())?;
            headers.insert(
                name,
                HeaderValue::from_bytes(&bytes).map_err(|_| invalid())?,
            );
        }
        // Passed on so the backend can deduplicate too, unless stripped.
        if let Some(key) = env
            .idempotency_key
            .as_ref()
            .filter(|_| !policy.strips(IDEMPOTENCY_KEY))
        {
            let value = HeaderValue::from_str(key)
                .map_err(|_| UpstreamError::InvalidHeader(IDEMPOTENCY_KEY.to_owned()))?;
            headers.insert(IDEMPOTENCY_KEY, value);
        }
        // Credentials in the target URL, unless the request carries its own.
        if let Some(basic) = url_auth
            && !headers.contains_key(AUTHORIZATION)
        {
            headers.insert(AUTHORIZATION, basic);
        }
        if env.passthrough {
            // The caller's `Host`, if the sidecar kept it (`preserve_host`);
            // otherwise the client sets the target's.
            if let Some(host) = env.headers.as_ref().and_then(|h| h.get(HOST.as_str())) {
                let value = HeaderValue::from_str(host)
                    .map_err(|_| UpstreamError::InvalidHeader(HOST.as_str().to_owned()))?;
                headers.insert(HOST, value);
            }
            // Exactly what the caller sent: no body means none, and its own
            // content type (or none) stands.
            let body = outgoing_body(env, None)?;
            return Ok(request(method, uri, headers, body));
        }
        // The payload is the body of the methods that carry one; a GET or
        // HEAD goes without (and without a content type for it).
        let body = if matches!(method, Method::GET | Method::HEAD) {
            Vec::new()
        } else {
            // The payload is JSON text unless exact bytes came with the
            // message (a foreign one): those have only the type they came
            // with, if any.
            if env.raw_body.is_none() && !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            outgoing_body(env, content_type(&headers))?
        };
        Ok(request(method, uri, headers, body))
    }
}

/// The request to send. An empty body is sent as `Content-Length: 0` for
/// the methods whose semantics define a body (RFC 9110 §8.6: some servers
/// answer `411` without it), and as nothing at all for the others; hyper
/// sets the length of any other body, and `Host` from the URI.
fn request(method: Method, uri: Uri, mut headers: HeaderMap, body: Vec<u8>) -> Request<Body> {
    if body.is_empty() && matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    let mut request = Request::new(Body::new(Bytes::from(body)));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

/// The bytes sent to the backend. The payload goes as it came: JSON stays
/// JSON text; exact bytes recorded in `raw_body` go verbatim; a JSON string
/// sent with a non-JSON content type (XML, form, plain text) goes as the
/// string's own text, since that is what the client meant to send.
fn outgoing_body(env: &Envelope, content_type: Option<&str>) -> Result<Vec<u8>, UpstreamError> {
    if let Some(encoded) = &env.raw_body {
        return BASE64
            .decode(encoded)
            .map_err(|e| UpstreamError::InvalidBody(format!("raw_body is not base64: {e}")));
    }
    let json_type = content_type.is_none_or(is_json_content_type);
    if !json_type && let Ok(text) = serde_json::from_str::<String>(env.payload.get()) {
        return Ok(text.into_bytes());
    }
    Ok(env.payload.get().as_bytes().to_vec())
}

fn is_json_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    openhqm_core::body::is_json(&essence)
}

enum Exchange {
    /// No whole answer within the attempt's time.
    TimedOut,
    /// Connecting, sending or reading failed.
    Failed(UpstreamError),
    /// An answer came, with this status, but its body cannot be kept: over
    /// `max_response_size`, or in a transfer coding left undecoded.
    Unkept(u16, UpstreamError),
}

/// A backend's whole answer.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Sends `request` and reads the whole answer, all within `timeout`.
async fn exchange(
    client: &HttpClient,
    request: Request<Body>,
    timeout: Duration,
    limit: usize,
) -> Result<Answer, Exchange> {
    let head = request.method() == Method::HEAD;
    let whole = async {
        let resp = client
            .request(request)
            .await
            .map_err(|e| Exchange::Failed(UpstreamError::network(&e)))?;
        let (parts, incoming) = resp.into_parts();
        // RFC 9110 §6.4.1: these answers never have content.
        let bodiless =
            head || parts.status.is_informational() || matches!(parts.status.as_u16(), 204 | 304);
        let (status, headers) = (parts.status.as_u16(), parts.headers);
        if !bodiless {
            let codings = headers
                .get_all(TRANSFER_ENCODING)
                .iter()
                .map(|v| v.to_str().unwrap_or("?"));
            if let Err(coding) = check_transfer_codings(codings) {
                let response = head_only(status, &headers);
                let e = UpstreamError::UnreadableAnswer { coding, response };
                return Err(Exchange::Unkept(status, e));
            }
        }
        match read_limited(&headers, bodiless, incoming, limit).await {
            Ok(body) => Ok(Answer {
                status,
                headers,
                body,
            }),
            Err(UpstreamError::ResponseTooLarge { limit, .. }) => {
                let response = head_only(status, &headers);
                let e = UpstreamError::ResponseTooLarge { limit, response };
                Err(Exchange::Unkept(status, e))
            }
            Err(e) => Err(Exchange::Failed(e)),
        }
    };
    tokio::time::timeout(timeout, whole)
        .await
        .unwrap_or(Err(Exchange::TimedOut))
}

/// What is kept of an answer whose body is not: its status and headers.
fn head_only(status: u16, headers: &HeaderMap) -> Option<Box<LastResponse>> {
    Some(Box::new(LastResponse {
        status_code: status,
        headers: kept_headers(headers),
        body: serde_json::Value::Null,
        raw_body: None,
        raw_headers: None,
    }))
}

/// `keep_raw`: also keep the body's exact bytes, for a passthrough caller
/// who gets the backend's answer back verbatim. An error quotes the body
/// with the endpoint's secrets masked.
fn settle(
    verdict: Verdict,
    answer: Answer,
    keep_raw: bool,
    redactor: &Redactor,
) -> Result<Output, UpstreamError> {
    let Answer {
        status,
        ref headers,
        body,
    } = answer;
    let kept = kept_headers(headers);
    // Kept exact bytes are the body: the result is shown from them
    // (`ResultData::shown_result`), so a large body is not stored twice.
    // The exact bytes of headers JSON shows lossily go with them.
    let (result, raw_body, raw_headers) = if keep_raw {
        let mut raw = raw_headers(headers);
        raw.retain(|name, _| kept.contains_key(name));
        (
            serde_json::Value::Null,
            Some(BASE64.encode(&body)),
            (!raw.is_empty()).then_some(raw),
        )
    } else {
        (
            openhqm_core::body::to_result(content_type(headers), &body),
            None,
            None,
        )
    };
    match verdict {
        Verdict::Deliver => Ok(Output {
            result,
            status_code: Some(status),
            headers: Some(kept),
            raw_body,
            raw_headers,
        }),
        Verdict::Retry { retry_after, .. } => Err(UpstreamError::RetryableStatus {
            status,
            body: redactor.excerpt(&body),
            retry_after,
            response: Box::new(LastResponse {
                status_code: status,
                headers: kept,
                body: result,
                raw_body,
                raw_headers,
            }),
        }),
    }
}

/// The answer's headers as a result keeps them: without hop-by-hop ones,
/// the standard ones and any the `Connection` header names.
fn kept_headers(headers: &HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    let connection_named = named_by_connection(
        headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let mut kept = headers_to_json(headers);
    kept.retain(|name, _| !is_hop_by_hop(name) && !connection_named.contains(name));
    kept
}

fn log_outcome(
    env: &Envelope,
    endpoint: &str,
    target: &str,
    result: &Result<Output, UpstreamError>,
    seconds: f64,
) {
    let id = env.correlation_id;
    match result {
        Ok(out) => tracing::debug!(
            correlation_id = %id, endpoint, target_url = target,
            status = out.status_code, seconds, "forwarded"
        ),
        Err(e) => tracing::warn!(
            correlation_id = %id, endpoint, target_url = target,
            error = %e, seconds, "forward failed"
        ),
    }
}
