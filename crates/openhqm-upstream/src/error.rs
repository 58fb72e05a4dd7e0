//! Errors of the forwarder, and how each one fails an attempt.
//!
//! Messages never carry secrets: network errors are told by their causes,
//! which name no URL (it may hold credentials or keys in the query), and
//! auth values never reach an error at all. Bodies quoted from a backend are cut short, with
//! the endpoint's secrets masked ([`crate::redact`]): a backend may echo them.

use std::time::Duration;

use openhqm_core::{Failure, FailureKind, LastResponse};

/// Longest excerpt of a backend body quoted in an error.
pub const BODY_EXCERPT: usize = 512;

/// Why a forward did not produce a deliverable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The request names an endpoint that is not configured.
    #[error("unknown proxy endpoint `{0}`")]
    UnknownEndpoint(String),
    /// The request names no endpoint and there is no default.
    #[error("the request names no endpoint and proxy.default_endpoint is not set")]
    NoEndpoint,
    /// Every target is unhealthy, ejected or behind an open breaker. Nothing
    /// was sent, so it is no attempt: the message waits for a target.
    #[error("no healthy target for endpoint `{endpoint}`")]
    NoHealthyTarget {
        /// Endpoint name.
        endpoint: String,
        /// When a target may next be tried: the first ejection or open
        /// breaker ending, else the next health check or half-open trial.
        retry_after: Duration,
    },
    /// The endpoint's configuration cannot be used (checked at start-up).
    #[error("endpoint `{endpoint}`: {message}")]
    Config {
        /// Endpoint name.
        endpoint: String,
        /// What is wrong.
        message: String,
    },
    /// A header could not be encoded; the value is not quoted, it may be secret.
    #[error("header `{0}` has an invalid name or value")]
    InvalidHeader(String),
    /// `metadata.method` is not an HTTP method.
    #[error("`{0}` is not an HTTP method a request can be forwarded with")]
    InvalidMethod(String),
    /// The request's body cannot be sent as recorded.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// The target URL could not be built from the request's path.
    #[error("cannot build the backend URL: {0}")]
    InvalidUrl(String),
    /// The request's path climbs out of the endpoint's base path: the
    /// caller's fault, refused before any forward (the endpoint's
    /// credentials would go with it). The path is not quoted.
    #[error(
        "refused: the request's path climbs out of the endpoint's base path (a `..` segment); nothing was sent to the backend"
    )]
    PathOutsideBase,
    /// The forward took longer than its deadline.
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    /// Waiting for a concurrency permit or a rate-limit slot outlasted the deadline.
    #[error("endpoint `{endpoint}` is at its {limit} limit; waited {waited:?}")]
    Saturated {
        /// Endpoint name.
        endpoint: String,
        /// `concurrency` or `rate`.
        limit: &'static str,
        /// How long the attempt waited.
        waited: Duration,
        /// When a slot frees up, if known.
        retry_after: Option<Duration>,
    },
    /// Connecting, sending or reading failed: the error and its causes.
    #[error("backend request failed: {0}")]
    Network(String),
    /// The answer's head was more than hyper reads (100 headers, or about
    /// 400 KiB): the backend answered, but what it said cannot be kept, and
    /// sending the request again would only run it again.
    #[error(
        "the backend's response head is too large to read (more than 100 headers, or over 400 KiB); nothing of it was kept"
    )]
    ResponseHeadTooLarge,
    /// The answer's body is framed in a way it cannot be read through (a
    /// transfer coding other than chunked, which hyper leaves in place): the
    /// backend answered, but its body would be kept still coded, with
    /// nothing saying so. nginx answers such an upstream with a 502.
    #[error("the backend's answer cannot be read: {coding}; its body was not kept")]
    UnreadableAnswer {
        /// How the body is framed.
        coding: openhqm_core::hop_by_hop::TransferCoding,
        /// The answer's status and headers, so the failed request still
        /// shows what the backend said.
        response: Option<Box<LastResponse>>,
    },
    /// The body was larger than `proxy.max_response_size`.
    #[error("backend response exceeds proxy.max_response_size ({limit} bytes)")]
    ResponseTooLarge {
        /// The configured limit.
        limit: usize,
        /// The answer's status and headers (its body is not kept), so the
        /// failed request still shows what the backend said.
        response: Option<Box<LastResponse>>,
    },
    /// The backend answered with a status on the endpoint's `retry_on` list.
    #[error("backend answered {status}: {body}")]
    RetryableStatus {
        /// The status.
        status: u16,
        /// The start of the body, so the last answer is kept when retries run out.
        body: String,
        /// The backend's `Retry-After`.
        retry_after: Option<Duration>,
        /// The whole answer, kept with the request when retries run out.
        response: Box<LastResponse>,
    },
}

impl UpstreamError {
    /// Whether another attempt may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.kind() != FailureKind::Permanent
    }

    /// How the worker should treat the failed attempt.
    #[must_use]
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::UnknownEndpoint(_)
            | Self::NoEndpoint
            | Self::Config { .. }
            | Self::InvalidHeader(_)
            | Self::InvalidMethod(_)
            | Self::InvalidUrl(_)
            | Self::PathOutsideBase
            | Self::InvalidBody(_)
            | Self::ResponseHeadTooLarge
            | Self::UnreadableAnswer { .. }
            | Self::ResponseTooLarge { .. } => FailureKind::Permanent,
            Self::Timeout(_) => FailureKind::Timeout,
            // The attempt never started: it waits for a slot or a target,
            // uncounted, so an open breaker cannot use up the retries.
            Self::Saturated { .. } | Self::NoHealthyTarget { .. } => FailureKind::Busy,
            Self::Network(_) | Self::RetryableStatus { .. } => FailureKind::Transient,
        }
    }

    /// The delay the other side asked for, if any.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RetryableStatus { retry_after, .. } | Self::Saturated { retry_after, .. } => {
                *retry_after
            }
            Self::NoHealthyTarget { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The attempt's failure, as the worker takes it.
    #[must_use]
    pub fn into_failure(self) -> Failure {
        let (kind, retry_after, message) = (self.kind(), self.retry_after(), self.to_string());
        let response = match self {
            Self::RetryableStatus { response, .. } => Some(response),
            Self::ResponseTooLarge { response, .. } | Self::UnreadableAnswer { response, .. } => {
                response
            }
            _ => None,
        };
        Failure {
            kind,
            message,
            retry_after,
            response,
        }
    }
}

impl UpstreamError {
    /// A network error (connecting, sending, reading the answer), told with
    /// its causes, `outer: inner: root`, so the stored error says why
    /// ("invalid peer certificate: UnknownIssuer"), not just "client error
    /// (Connect)". hyper's errors name no URL.
    pub(crate) fn network(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if c.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse_too_large)
            {
                return Self::ResponseHeadTooLarge;
            }
            cause = c.source();
        }
        Self::Network(openhqm_core::cause::chain(e))
    }
}

/// The start of a body, for an error message.
#[must_use]
pub fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(BODY_EXCERPT)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if body.len() > BODY_EXCERPT {
        text.push('…');
    }
    text
}
