//! Rate limiting with GCRA (the generic cell rate algorithm).
//!
//! GCRA keeps one number per limiter, the theoretical arrival time (TAT) of
//! the next request, instead of a token bucket's count and refill clock, and
//! gives the same behaviour: a sustained `rate` with up to `burst` requests at
//! once after a quiet spell. A request that may not start yet *reserves* its
//! slot and waits for it, so waiters are served in order and the rate holds
//! under contention. A request that would wait past its deadline reserves
//! nothing and fails (transient, with the wait as `Retry-After`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// The pure part: parameters and the reservation rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gcra {
    /// Time between requests at the sustained rate.
    pub interval: Duration,
    /// How far ahead of schedule a request may start (`(burst - 1) * interval`).
    pub tolerance: Duration,
}

impl Gcra {
    /// From `rate_limit`.
    #[must_use]
    pub fn new(cfg: &RateLimitConfig) -> Self {
        let rps = if cfg.requests_per_second.is_finite() && cfg.requests_per_second > 0.0 {
            cfg.requests_per_second
        } else {
            f64::MIN_POSITIVE
        };
        let interval = Duration::try_from_secs_f64(1.0 / rps).unwrap_or(Duration::MAX);
        Self {
            interval,
            tolerance: interval.saturating_mul(cfg.burst.max(1) - 1),
        }
    }

    /// Reserves a slot at `now` (times measured from any fixed origin).
    ///
    /// Returns the new TAT and how long to wait, or, if that wait would exceed
    /// `max_wait`, the wait that would have been needed (TAT unchanged).
    ///
    /// # Errors
    /// The wait needed, when it exceeds `max_wait`.
    pub fn reserve(
        &self,
        tat: Duration,
        now: Duration,
        max_wait: Duration,
    ) -> Result<(Duration, Duration), Duration> {
        let start = tat.max(now);
        let wait = start.saturating_sub(self.tolerance).saturating_sub(now);
        if wait > max_wait {
            return Err(wait);
        }
        Ok((start.saturating_add(self.interval), wait))
    }
}

/// A shared limiter for one endpoint.
#[derive(Debug)]
pub struct RateLimiter {
    gcra: Gcra,
    origin: Instant,
    tat: Mutex<Duration>,
}

impl RateLimiter {
    /// A limiter with a full burst available.
    #[must_use]
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            gcra: Gcra::new(cfg),
            origin: Instant::now(),
            tat: Mutex::new(Duration::ZERO),
        }
    }

    /// Waits for a slot, up to `deadline`.
    ///
    /// # Errors
    /// The wait that would have been needed, when it would pass `deadline`.
    pub async fn acquire(&self, deadline: Instant) -> Result<(), Duration> {
        let now = Instant::now();
        let since = now.saturating_duration_since(self.origin);
        let max_wait = deadline.saturating_duration_since(now);
        let wait = {
            let mut tat = self
                .tat
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (next, wait) = self.gcra.reserve(*tat, since, max_wait)?;
            *tat = next;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Requests at the given times (ms) against 10/s with the given burst;
    /// expected waits (ms), or `None` where the request is refused with a
    /// 150 ms maximum wait.
    fn check(burst: u32, at: &[u64], expected: &[Option<u64>]) {
        let g = Gcra::new(&RateLimitConfig {
            requests_per_second: 10.0,
            burst,
        });
        let mut tat = Duration::ZERO;
        let got: Vec<Option<u64>> = at
            .iter()
            .map(|t| match g.reserve(tat, ms(*t), ms(150)) {
                Ok((next, wait)) => {
                    tat = next;
                    Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
                }
                Err(_) => None,
            })
            .collect();
        assert_eq!(got, expected, "burst {burst} at {at:?}");
    }

    #[test]
    fn gcra_table() {
        // No burst: one per 100 ms; a waiter reserves its slot.
        check(1, &[0, 0, 0, 0], &[Some(0), Some(100), None, None]);
        check(1, &[0, 100, 200], &[Some(0), Some(0), Some(0)]);
        check(1, &[0, 50, 300], &[Some(0), Some(50), Some(0)]);
        // Burst 3: three at once, then the sustained rate.
        check(
            3,
            &[0, 0, 0, 0, 0],
            &[Some(0), Some(0), Some(0), Some(100), None],
        );
        // A quiet spell refills the burst, but no further.
        check(
            3,
            &[0, 0, 0, 1000, 1000, 1000, 1000],
            &[
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(100),
            ],
        );
    }

    #[test]
    fn an_absurdly_slow_rate_saturates_instead_of_overflowing() {
        let g = Gcra::new(&RateLimitConfig {
            requests_per_second: 1e-30,
            burst: 1,
        });
        let (tat, wait) = g
            .reserve(Duration::ZERO, Duration::from_secs(5), Duration::ZERO)
            .expect("the first request goes at once");
        assert_eq!(wait, Duration::ZERO);
        assert_eq!(tat, Duration::MAX);
        assert!(
            g.reserve(tat, Duration::from_secs(6), Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn refused_reservation_leaves_state_untouched() {
        let g = Gcra::new(&RateLimitConfig {
            requests_per_second: 1.0,
            burst: 1,
        });
        let (tat, _) = g.reserve(Duration::ZERO, ms(0), ms(0)).expect("first");
        assert_eq!(g.reserve(tat, ms(0), ms(10)), Err(ms(1000)));
        assert_eq!(g.reserve(tat, ms(0), ms(1000)), Ok((ms(2000), ms(1000))));
    }
}
