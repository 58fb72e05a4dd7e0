//! RFC 9457 problem details: the one error shape of the API.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use openhqm_core::CorrelationId;
use serde_json::json;

/// An API error. `code` is stable and documented; `detail` is for people.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    retry_after: Option<u32>,
}

impl Problem {
    /// A problem with the given status, stable code, title and detail.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400: the body is not JSON.
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Request body is not valid JSON",
            detail,
        )
    }

    /// 400: the body could not be read as framed (a broken chunk): the
    /// request never came whole, whatever its content.
    pub fn unreadable_body(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "Request body could not be read",
            detail,
        )
    }

    /// 400: a `Host` header missing (HTTP/1.1), repeated or malformed
    /// (RFC 9112 §3.2).
    pub fn invalid_host(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-host",
            "Host header is not valid",
            detail,
        )
    }

    /// 501: a transfer coding other than `chunked` (RFC 9112 §6.1), which
    /// hyper leaves in place: the body would be stored still coded.
    pub fn unsupported_transfer_coding(coding: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported-transfer-coding",
            "Transfer coding not supported",
            format!(
                "the body is sent with Transfer-Encoding `{}`; only `chunked` is understood",
                coding.escape_debug()
            ),
        )
    }

    /// 400: a query parameter malformed or out of its range.
    pub fn invalid_parameter(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Query parameter is not valid",
            detail,
        )
    }

    /// 400: a passthrough path that climbs out of its root (`..`).
    pub fn invalid_path(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-path",
            "Request path is not valid",
            detail,
        )
    }

    /// 422: JSON, but not a valid request.
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
            "Request is not valid",
            detail,
        )
    }

    /// 400: `metadata.endpoint` names no configured endpoint.
    pub fn unknown_endpoint(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "unknown-endpoint",
            "Unknown endpoint",
            format!("metadata.endpoint `{name}` is not a configured proxy endpoint"),
        )
    }

    /// 400: `metadata.callback_url` is not an absolute http(s) URL.
    pub fn invalid_callback_url(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-callback-url",
            "Callback URL is not usable",
            detail,
        )
    }

    /// 400: `metadata.callback_url` names a host OpenHQM may not call (or
    /// callbacks are disabled).
    pub fn callback_not_allowed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "callback-not-allowed",
            "Callback host is not allowed",
            detail,
        )
    }

    /// 413: body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body is too large",
            format!("the body exceeds server.max_body_size ({limit} bytes)"),
        )
    }

    /// 415: a body in a content coding we do not decode (RFC 9110 §8.4.1):
    /// stored as sent, it would reach workers as bytes nobody can read.
    pub fn unsupported_encoding(coding: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-encoding",
            "Content encoding not supported",
            format!(
                "the body is sent with Content-Encoding `{coding}`; send it unencoded (identity)"
            ),
        )
    }

    /// 408: the client sent nothing of its body for
    /// `server.read_timeout_seconds`.
    pub fn body_timeout(idle: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request body stalled",
            format!(
                "no part of the body arrived for server.read_timeout_seconds ({} s)",
                idle.as_secs()
            ),
        )
    }

    /// 404: unknown or expired request.
    pub fn unknown_request(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "request-not-found",
            "Request not found",
            format!("no request `{id}`: it is unknown or its result has expired"),
        )
    }

    /// 503: a dependency is down. The detail stays generic: the cause goes
    /// to the logs, not to clients.
    pub fn unavailable(what: &'static str, retry_after: u32) -> Self {
        Self::service_unavailable(
            format!("the {what} is unavailable; retry later"),
            retry_after,
        )
    }

    /// 503: the listener holds `server.max_buffered_bytes` of request bodies
    /// already; this one was not read.
    pub fn receiving_too_much(budget: usize, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "receiving-too-much",
                "Too many request bodies at once",
                format!(
                    "the listener is receiving as many request bodies as it holds at once (server.max_buffered_bytes, {budget} bytes); nothing was stored, retry later"
                ),
            )
        }
    }

    /// 503: a write the request needs was not confirmed. It may have landed
    /// (a timeout): the client is told how to retry without running the
    /// request twice.
    pub fn unconfirmed(what: &'static str, retry_after: u32) -> Self {
        Self::service_unavailable(
            format!(
                "the {what} did not confirm storing the request; retry later, with an Idempotency-Key so that a retry can never run it twice"
            ),
            retry_after,
        )
    }

    fn service_unavailable(detail: String, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service-unavailable",
                "Service temporarily unavailable",
                detail,
            )
        }
    }

    /// 429: this listener holds as much pending work as it may; nothing was
    /// stored.
    pub fn overloaded(pending: u64, limit: u64, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "Too much pending work",
                format!(
                    "about {pending} requests are queued or in flight, at the limit of server.max_pending ({limit}); nothing was stored, retry later"
                ),
            )
        }
    }

    /// 422: an idempotency key reused for a different request.
    pub fn idempotency_key_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was already used for a different request",
        )
    }

    /// 409: the first request with this idempotency key is still being accepted.
    pub fn idempotency_key_in_use(retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-use",
                "Idempotency key in use",
                "a request with this Idempotency-Key is being accepted right now; retry shortly",
            )
        }
    }

    /// 400: a malformed `Idempotency-Key` header.
    pub fn invalid_idempotency_key(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            detail,
        )
    }

    /// 409: the request can no longer be cancelled.
    pub fn not_cancellable(id: &str, status: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "not-cancellable",
            "Request cannot be cancelled",
            format!("request `{id}` is {status}; only a PENDING request can be cancelled"),
        )
    }

    /// 502: a passthrough request ended without an answer from the backend.
    pub fn bad_gateway(id: CorrelationId) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream-failed",
            "The backend did not answer",
            format!(
                "request {id} failed without an answer from the backend to relay; the error is at /api/v1/response/{id}"
            ),
        )
    }

    /// 504: a passthrough request ran out of time at the backend.
    pub fn gateway_timeout(id: CorrelationId) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            "The backend did not answer in time",
            format!("request {id} timed out at the backend"),
        )
    }

    /// 409: the request was cancelled before a worker took it.
    pub fn cancelled(id: CorrelationId) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "request-cancelled",
            "Request cancelled",
            format!("request {id} was cancelled; the app will not be called for it"),
        )
    }

    /// The stable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("urn:openhqm:problem:{}", self.code),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // Our only 415 is about a content coding: say which one is accepted
        // (RFC 9110 §15.5.16).
        if self.status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        response
    }
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no endpoint at `{}`", uri.path()),
    )
}

pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("`{method}` is not allowed on `{}`", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The codes the sources construct: each `Problem` names its status on
    /// one line and its code, a string literal, on the next.
    fn constructed() -> BTreeSet<String> {
        let sources = [include_str!("problem.rs"), include_str!("telemetry.rs")];
        let mut codes = BTreeSet::new();
        for source in sources {
            let lines: Vec<&str> = source.lines().map(str::trim).collect();
            for pair in lines.windows(2) {
                if pair[0].starts_with("StatusCode::")
                    && let Some(code) = pair[1]
                        .strip_prefix('"')
                        .and_then(|l| l.strip_suffix("\","))
                {
                    codes.insert(code.to_owned());
                }
            }
        }
        codes
    }

    #[test]
    fn every_problem_code_is_in_the_api_description_and_the_readme() {
        let codes = constructed();
        assert!(codes.len() > 15, "too few codes found: {codes:?}");
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json");
        let listed: BTreeSet<String> =
            spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
                .as_array()
                .expect("code enum")
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect();
        assert_eq!(codes, listed, "openapi.json's Problem.code enum");
        let readme = include_str!("../../../README.md");
        for code in &codes {
            assert!(
                readme.contains(&format!("| `{code}` |")),
                "README's error table lacks `{code}`"
            );
        }
    }
}
