//! Admission control: a bound on the work a listener lets pile up.
//!
//! The bound is on the queue's depth, the one number that grows without
//! limit when producers outrun the backends. Asking the queue on every
//! submit would cost a round trip (Redis) per request, so the depth is
//! sampled a few times a second and every request accepted since the sample
//! is added to it: the estimate only errs high between samples, so the bound
//! holds even in a burst that arrives faster than the sampling.

use std::sync::atomic::{AtomicU64, Ordering};

/// The admission state of one listener.
#[derive(Debug, Default)]
pub struct Admission {
    /// `server.max_pending`; 0 means unbounded.
    limit: u64,
    /// The queue depth at the last sample.
    sampled: AtomicU64,
    /// Requests accepted since that sample.
    since: AtomicU64,
}

impl Admission {
    /// Admission bounded at `limit` waiting requests (0: unbounded).
    #[must_use]
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Records a fresh reading of the queue's depth.
    pub fn record_depth(&self, depth: u64) {
        self.sampled.store(depth, Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }

    /// `Ok` if one more request may be accepted, else the estimated number
    /// pending and the limit.
    pub(crate) fn check(&self) -> Result<(), (u64, u64)> {
        if self.limit == 0 {
            return Ok(());
        }
        let pending = self
            .sampled
            .load(Ordering::Relaxed)
            .saturating_add(self.since.load(Ordering::Relaxed));
        if pending >= self.limit {
            Err((pending, self.limit))
        } else {
            Ok(())
        }
    }

    /// Counts one accepted request toward the estimate.
    pub(crate) fn accepted(&self) {
        self.since.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Admission;

    #[test]
    fn the_estimate_adds_accepted_requests_to_the_sample() {
        let a = Admission::new(3);
        a.record_depth(1);
        assert!(a.check().is_ok());
        a.accepted();
        assert!(a.check().is_ok());
        a.accepted();
        assert_eq!(a.check(), Err((3, 3)), "1 sampled + 2 accepted reaches 3");
        a.record_depth(0);
        assert!(a.check().is_ok(), "a new sample resets the count");
    }

    #[test]
    fn zero_means_unbounded() {
        let a = Admission::new(0);
        a.record_depth(u64::MAX);
        assert!(a.check().is_ok());
    }
}
