//! How a failed attempt is settled: retried after a backoff, or given up.
//!
//! This is the single decision the worker consults; it is pure so that the
//! whole policy is visible in one table of tests.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::RequestStatus;

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth trying again (network error, 5xx, overload).
    Transient,
    /// The attempt ran past its deadline; retried like a transient failure,
    /// but a request whose last attempt timed out ends as TIMEOUT.
    Timeout,
    /// Trying again cannot help (bad input, unknown operation).
    Permanent,
    /// The attempt could not start: a limit of this process was full (a
    /// backend's concurrency cap or rate limit), or no target of the backend
    /// may be tried now (open breakers, ejections, failed health checks).
    /// Not an attempt: the message waits in the queue and comes back as the
    /// same attempt, when the limit or a target frees up if that is known.
    Busy,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Classification.
    pub kind: FailureKind,
    /// Human-readable reason, stored as the request's `error`.
    pub message: String,
    /// A minimum delay the other side asked for (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// What the other side answered, if it answered at all: kept with the
    /// request so one that runs out of retries still shows the last answer.
    pub response: Option<Box<LastResponse>>,
}

/// A backend's answer that failed the attempt (e.g. a 503).
#[derive(Debug, Clone, PartialEq)]
pub struct LastResponse {
    /// The HTTP status.
    pub status_code: u16,
    /// The response headers; a repeated header is an array of its values.
    pub headers: Map<String, Value>,
    /// The body, as a result body is kept (JSON, or text with its type).
    pub body: Value,
    /// The exact bytes (base64), for passthrough requests only; when set,
    /// they are the body (`body` is not stored).
    pub raw_body: Option<String>,
    /// With `raw_body`: the headers `headers` shows lossily, byte for byte.
    pub raw_headers: Option<crate::RawHeaders>,
}

impl Failure {
    /// A failure of the given kind.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            response: None,
        }
    }
}

/// Retry policy: exponential backoff, jittered between `base` and the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Shortest delay before a retry.
    pub base: Duration,
    /// Longest delay before a retry (also caps `Retry-After`).
    pub max: Duration,
    /// Retries after the first attempt; `3` means at most 4 attempts.
    pub max_retries: u32,
}

impl Backoff {
    /// The delay before retrying after failed attempt number `attempt` (1-based).
    ///
    /// The window grows as `base * 2^attempt`, capped at `max`; the delay is
    /// drawn uniformly from `[base, window]` using `jitter` in `[0, 1]`.
    #[must_use]
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 2f64.powi(i32::try_from(attempt.min(62)).unwrap_or(62));
        // `try_from`: `mul_f64` panics past `Duration::MAX`, which a base of
        // a few seconds reaches by attempt 60.
        let window = Duration::try_from_secs_f64(self.base.as_secs_f64() * factor)
            .unwrap_or(self.max)
            .min(self.max)
            .max(self.base);
        let span = window.saturating_sub(self.base);
        self.base + span.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// The shortest wait of a [`Decision::Release`]: a limit or target that
/// frees up "now" is not asked again in a tight loop.
pub const RELEASE_FLOOR: Duration = Duration::from_millis(50);

/// The longest wait of a [`Decision::Release`]: a message waiting on a long
/// open breaker or a down backend is looked at again at least this often.
pub const RELEASE_CEILING: Duration = Duration::from_secs(60);

/// What to do with a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Redeliver after `delay`; the request goes back to PENDING.
    Retry {
        /// How long the queue holds the message.
        delay: Duration,
    },
    /// Put the message back for `delay` as the same attempt: it never ran.
    Release {
        /// How long the queue holds the message.
        delay: Duration,
    },
    /// Dead-letter the message and finish the request with `status`.
    GiveUp {
        /// FAILED or TIMEOUT.
        status: RequestStatus,
        /// The reason recorded with the dead letter.
        reason: String,
    },
}

/// Settles failed attempt number `attempt` (1-based, counting attempts made
/// before the submit via `metadata.retry_count`).
#[must_use]
pub fn decide(failure: &Failure, attempt: u32, policy: &Backoff, jitter: f64) -> Decision {
    let exhausted = attempt > policy.max_retries;
    match failure.kind {
        // When the limit or a target frees up, if known; else a short,
        // jittered wait. Not capped by `policy.max`: that bounds the wait
        // between attempts, and coming back before the limit or breaker lets
        // the message through would only put it back again.
        // A known wait is spread over the tenth after it (never before: that
        // would only bounce), so the messages held on one breaker do not all
        // come back at the same instant.
        FailureKind::Busy => Decision::Release {
            delay: failure
                .retry_after
                .map_or_else(
                    || policy.delay(1, jitter),
                    |known| {
                        // Capped first: a processor's `Duration::MAX` must
                        // not overflow the spread.
                        let known = known.min(RELEASE_CEILING);
                        known + known.mul_f64(0.1 * jitter)
                    },
                )
                .clamp(RELEASE_FLOOR, RELEASE_CEILING),
        },
        FailureKind::Permanent => Decision::GiveUp {
            status: RequestStatus::Failed,
            reason: failure.message.clone(),
        },
        FailureKind::Transient | FailureKind::Timeout if exhausted => Decision::GiveUp {
            status: if failure.kind == FailureKind::Timeout {
                RequestStatus::Timeout
            } else {
                RequestStatus::Failed
            },
            reason: format!("{} (after {attempt} attempts)", failure.message),
        },
        FailureKind::Transient | FailureKind::Timeout => {
            let backoff = policy.delay(attempt, jitter);
            let delay = match failure.retry_after {
                Some(asked) => backoff.max(asked.min(policy.max)),
                None => backoff,
            };
            Decision::Retry { delay }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        max_retries: 3,
    };

    fn check(
        kind: FailureKind,
        retry_after: Option<u64>,
        attempt: u32,
        jitter: f64,
        expected: Decision,
    ) {
        let failure = Failure {
            kind,
            message: "boom".into(),
            retry_after: retry_after.map(Duration::from_secs),
            response: None,
        };
        assert_eq!(
            decide(&failure, attempt, &POLICY, jitter),
            expected,
            "{kind:?} attempt {attempt}"
        );
    }

    fn retry(ms: u64) -> Decision {
        Decision::Retry {
            delay: Duration::from_millis(ms),
        }
    }

    fn give_up(status: RequestStatus, reason: &str) -> Decision {
        Decision::GiveUp {
            status,
            reason: reason.into(),
        }
    }

    #[test]
    fn decision_table() {
        use FailureKind::*;
        use RequestStatus::{Failed, Timeout as TimedOut};
        check(Transient, None, 1, 0.0, retry(1000));
        check(Transient, None, 1, 1.0, retry(2000));
        check(Transient, None, 3, 1.0, retry(8000));
        check(
            Transient,
            None,
            4,
            0.5,
            give_up(Failed, "boom (after 4 attempts)"),
        );
        check(Timeout, None, 2, 0.0, retry(1000));
        check(
            Timeout,
            None,
            4,
            0.0,
            give_up(TimedOut, "boom (after 4 attempts)"),
        );
        check(Permanent, None, 1, 0.0, give_up(Failed, "boom"));
        // Retry-After raises the delay, but never past the configured maximum.
        check(Transient, Some(30), 1, 0.0, retry(30_000));
        check(Transient, Some(3600), 1, 0.0, retry(60_000));
        // Busy: back as the same attempt, however many came before, after
        // the limit's own wait if it knows it.
        let release = |ms| Decision::Release {
            delay: Duration::from_millis(ms),
        };
        check(Busy, None, 9, 0.0, release(1000));
        check(Busy, None, 9, 1.0, release(2000));
        check(Busy, Some(3), 9, 0.0, release(3000));
        check(Busy, Some(3), 9, 1.0, release(3300));
        check(Busy, Some(3600), 1, 0.0, release(60_000));
        check(Busy, Some(0), 1, 0.0, release(50));
        // A wait no clock can reach is capped, not overflowed.
        check(Busy, Some(u64::MAX), 1, 1.0, release(60_000));
        check(Transient, Some(u64::MAX), 1, 1.0, retry(60_000));
    }

    #[test]
    fn a_release_waits_past_the_retry_maximum_up_to_its_ceiling() {
        // An open breaker's 4 s is waited out even when retries wait at most
        // half a second: coming back sooner would only be put back again.
        let quick = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
            max_retries: 4,
        };
        let busy = |secs| Failure {
            retry_after: Some(Duration::from_secs(secs)),
            ..Failure::new(FailureKind::Busy, "no healthy target")
        };
        let release = |delay| Decision::Release { delay };
        assert_eq!(
            decide(&busy(4), 1, &quick, 0.5),
            release(Duration::from_millis(4200))
        );
        assert_eq!(decide(&busy(600), 9, &quick, 0.5), release(RELEASE_CEILING));
    }

    #[test]
    fn backoff_window_is_capped() {
        assert_eq!(POLICY.delay(20, 1.0), Duration::from_secs(60));
        assert_eq!(POLICY.delay(20, 0.0), Duration::from_secs(1));
        assert_eq!(POLICY.delay(u32::MAX, 1.0), Duration::from_secs(60));
        // A base of seconds times 2^62 is past `Duration::MAX`: capped, no panic.
        let slow = Backoff {
            base: Duration::from_secs(5),
            max: Duration::from_secs(3600),
            max_retries: 100,
        };
        assert_eq!(slow.delay(90, 1.0), Duration::from_secs(3600));
        assert_eq!(slow.delay(90, 0.0), Duration::from_secs(5));
    }
}
