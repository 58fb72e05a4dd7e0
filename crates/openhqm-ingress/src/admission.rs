//! Admission control: a bound on the work a listener lets pile up.
//!
//! The bound is on the queue's depth, the one number that grows without
//! limit when producers outrun the backends. Asking the queue on every
//! submit would cost a round trip (Redis) per request, so the depth is
//! sampled a few times a second and every request accepted since the sample
//! is added to it: between samples the estimate errs high (requests that
//! workers have taken since still count), so the bound holds even in a burst
//! that arrives faster than the sampling.
//!
//! Beside it, a listener bounds the request bodies it holds at once
//! ([`BodyBudget`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::body_budget::BodyBudget;

/// The admission state of one listener.
#[derive(Debug, Default)]
pub struct Admission {
    /// `server.max_pending`; 0 means unbounded.
    limit: u64,
    /// The queue depth at the last sample.
    sampled: AtomicU64,
    /// Requests accepted since that sample.
    since: AtomicU64,
    /// `server.max_buffered_bytes`.
    pub(crate) bodies: BodyBudget,
}

impl Admission {
    /// Admission bounded at `limit` unfinished (queued or in-flight) requests (0: unbounded).
    #[must_use]
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// The same, with request bodies held at once bounded at `bytes` (0:
    /// unbounded).
    #[must_use]
    pub fn with_body_budget(self, bytes: usize) -> Self {
        Self {
            bodies: BodyBudget::new(bytes),
            ..self
        }
    }

    /// Requests counted since the last sample; read it just before asking
    /// the queue for its depth and pass it to [`Admission::record_depth`].
    #[must_use]
    pub fn counted(&self) -> u64 {
        self.since.load(Ordering::Relaxed)
    }

    /// Records a fresh reading of the queue's depth, which includes the
    /// `counted` requests accepted before it was asked for; those accepted
    /// while it was being read stay counted.
    pub fn record_depth(&self, depth: u64, counted: u64) {
        self.sampled.store(depth, Ordering::Relaxed);
        let _ = self
            .since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(counted))
            });
    }

    /// Takes a place for one more request, or says how many are pending and
    /// the limit. Concurrent callers cannot overshoot: the place is taken
    /// before the check.
    pub(crate) fn reserve(&self) -> Result<(), (u64, u64)> {
        if self.limit == 0 {
            return Ok(());
        }
        let before = self.since.fetch_add(1, Ordering::Relaxed);
        let pending = self.sampled.load(Ordering::Relaxed).saturating_add(before);
        if pending >= self.limit {
            self.unreserve();
            Err((pending, self.limit))
        } else {
            Ok(())
        }
    }

    /// Whether a request would be refused now, without taking a place: to
    /// refuse it before its body is read, so that an overloaded listener
    /// buffers no bodies it would refuse anyway. [`Admission::reserve`]
    /// still decides for the requests that pass.
    pub(crate) fn is_full(&self) -> Option<(u64, u64)> {
        if self.limit == 0 {
            return None;
        }
        let pending = self
            .sampled
            .load(Ordering::Relaxed)
            .saturating_add(self.since.load(Ordering::Relaxed));
        (pending >= self.limit).then_some((pending, self.limit))
    }

    /// Gives back a place taken by [`Admission::reserve`] for a request that
    /// was not stored after all.
    pub(crate) fn unreserve(&self) {
        if self.limit != 0 {
            let _ = self
                .since
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Admission;

    #[test]
    fn the_estimate_adds_reserved_requests_to_the_sample() {
        let a = Admission::new(3);
        a.record_depth(1, 0);
        assert!(a.reserve().is_ok());
        assert!(a.reserve().is_ok());
        assert_eq!(a.reserve(), Err((3, 3)), "1 sampled + 2 reserved reaches 3");
        a.unreserve();
        assert!(a.reserve().is_ok(), "a place given back is free again");
        // A sample that saw the two reserved before it was asked for.
        let counted = a.counted();
        assert!(a.reserve().is_err());
        a.record_depth(2, counted);
        assert!(a.reserve().is_ok(), "2 sampled + 0 since is below 3");
        assert_eq!(a.reserve(), Err((3, 3)));
    }

    #[test]
    fn requests_accepted_while_the_depth_is_read_stay_counted() {
        let a = Admission::new(10);
        let counted = a.counted();
        for _ in 0..4 {
            a.reserve().expect("room");
        }
        // The depth was read before those four arrived.
        a.record_depth(5, counted);
        assert_eq!(a.counted(), 4);
        assert!(a.reserve().is_ok());
        assert_eq!(a.reserve(), Err((10, 10)));
    }

    #[test]
    fn full_is_read_without_taking_a_place() {
        let a = Admission::new(2);
        a.record_depth(1, 0);
        assert_eq!(a.is_full(), None);
        assert_eq!(a.is_full(), None, "asking took no place");
        a.reserve().expect("room");
        assert_eq!(a.is_full(), Some((2, 2)));
        assert_eq!(Admission::new(0).is_full(), None);
    }

    #[test]
    fn zero_means_unbounded() {
        let a = Admission::new(0);
        a.record_depth(u64::MAX, 0);
        assert!(a.reserve().is_ok());
    }
}
