//! What one forward's outcome means for the request: deliver or retry.
//!
//! One pure function, so the whole policy reads as one table of tests:
//! - a network error is transient, a timeout is a [`FailureKind::Timeout`];
//! - a status on the endpoint's `retry_on` list is transient, with the
//!   backend's `Retry-After` (seconds or HTTP-date) as the least delay;
//! - every other status is delivered as the result, the backend's status kept
//!   (a backend's 404 completes the request with status code 404).
//!
//! Processors never retry themselves: the worker decides from the verdict.

use std::time::{Duration, SystemTime};

use openhqm_core::FailureKind;

/// What happened to one forward, as far as classification cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted<'a> {
    /// The backend answered.
    Answered {
        /// Its status.
        status: u16,
        /// Its `Retry-After` header, if any.
        retry_after: Option<&'a str>,
    },
    /// No usable answer: connection refused, reset, DNS, protocol error.
    NetworkError,
    /// No answer within the deadline.
    TimedOut,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Complete the request with the backend's answer.
    Deliver,
    /// Fail the attempt; the worker retries or gives up.
    Retry {
        /// `Transient` or `Timeout`.
        kind: FailureKind,
        /// The least delay the backend asked for.
        retry_after: Option<Duration>,
    },
}

/// Classifies one forward. `now` is only used for `Retry-After` dates.
#[must_use]
pub fn classify(attempted: Attempted<'_>, retry_on: &[u16], now: SystemTime) -> Verdict {
    match attempted {
        Attempted::NetworkError => Verdict::Retry {
            kind: FailureKind::Transient,
            retry_after: None,
        },
        Attempted::TimedOut => Verdict::Retry {
            kind: FailureKind::Timeout,
            retry_after: None,
        },
        Attempted::Answered {
            status,
            retry_after,
        } if retry_on.contains(&status) => Verdict::Retry {
            kind: FailureKind::Transient,
            retry_after: retry_after.and_then(|v| openhqm_core::retry_after::parse(v, now)),
        },
        Attempted::Answered { .. } => Verdict::Deliver,
    }
}

/// Bounded label for a status (`2xx` ...), or the failure kind.
#[must_use]
pub fn status_class(attempted: Attempted<'_>) -> &'static str {
    match attempted {
        Attempted::Answered { status, .. } => match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        Attempted::NetworkError => "error",
        Attempted::TimedOut => "timeout",
    }
}

/// Whether the outcome counts against the target's health (breaker,
/// passive ejection): the target failed, not the request.
#[must_use]
pub fn is_target_failure(attempted: Attempted<'_>) -> bool {
    match attempted {
        Attempted::Answered { status, .. } => status >= 500,
        Attempted::NetworkError | Attempted::TimedOut => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY_ON: &[u16] = &[408, 429, 500, 502, 503, 504];

    fn now() -> SystemTime {
        // Sun, 06 Nov 1994 08:49:37 GMT
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    fn check(attempted: Attempted<'_>, expected: Verdict) {
        assert_eq!(
            classify(attempted, RETRY_ON, now()),
            expected,
            "{attempted:?}"
        );
    }

    fn answered(status: u16, retry_after: Option<&str>) -> Attempted<'_> {
        Attempted::Answered {
            status,
            retry_after,
        }
    }

    fn retry(kind: FailureKind, secs: Option<u64>) -> Verdict {
        Verdict::Retry {
            kind,
            retry_after: secs.map(Duration::from_secs),
        }
    }

    #[test]
    fn classification_table() {
        use FailureKind::{Timeout, Transient};
        check(Attempted::NetworkError, retry(Transient, None));
        check(Attempted::TimedOut, retry(Timeout, None));
        for status in [200, 201, 204, 301, 400, 401, 404, 409, 422, 501, 505] {
            check(answered(status, None), Verdict::Deliver);
        }
        // Retry-After is only honoured where the status is retried.
        check(answered(404, Some("5")), Verdict::Deliver);
        for status in RETRY_ON {
            check(answered(*status, None), retry(Transient, None));
        }
        check(answered(429, Some("7")), retry(Transient, Some(7)));
        check(answered(503, Some(" 120 ")), retry(Transient, Some(120)));
        check(
            answered(503, Some("Sun, 06 Nov 1994 08:50:17 GMT")),
            retry(Transient, Some(40)),
        );
        check(
            answered(503, Some("Sun, 06 Nov 1994 08:00:00 GMT")),
            retry(Transient, Some(0)),
        );
        check(answered(503, Some("soon")), retry(Transient, None));
        check(answered(503, Some("-1")), retry(Transient, None));
        // An endpoint may retry on other statuses, or none.
        assert_eq!(
            classify(answered(404, None), &[404], now()),
            retry(Transient, None)
        );
        assert_eq!(classify(answered(503, None), &[], now()), Verdict::Deliver);
    }

    #[test]
    fn status_classes_and_target_failures() {
        for (attempted, class, target_failed) in [
            (answered(200, None), "2xx", false),
            (answered(302, None), "3xx", false),
            (answered(404, None), "4xx", false),
            (answered(429, None), "4xx", false),
            (answered(503, None), "5xx", true),
            (Attempted::NetworkError, "error", true),
            (Attempted::TimedOut, "timeout", true),
        ] {
            assert_eq!(status_class(attempted), class);
            assert_eq!(is_target_failure(attempted), target_failed, "{attempted:?}");
        }
    }
}
