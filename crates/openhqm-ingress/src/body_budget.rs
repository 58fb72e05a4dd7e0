//! A bound on the request bodies a listener holds at once.
//!
//! A body is read whole before it is stored (it is parsed, fingerprinted and
//! written as one message), so each request holds up to
//! `server.max_body_size` for a moment, and many at once hold their sum:
//! `server.max_pending` bounds the work stored, not this. Every body takes
//! its size from one budget (`server.max_buffered_bytes`) as its bytes
//! arrive, until its request is stored (for a waiting sidecar call held in
//! memory, answered);
//! a body that finds the budget spent is refused at once with 503 and
//! `Retry-After`, shedding load as a proxy at its buffer limit does, rather
//! than queueing behind the others with its connection open.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in KiB: a permit per byte would overflow the
/// semaphore's count for large budgets, and no body is that close to it.
const UNIT: usize = 1024;

/// The bytes of request bodies a listener may hold at once.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    units: Option<Arc<Semaphore>>,
    bytes: usize,
}

/// What one body holds of the budget; given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct BodyHold {
    permit: Option<OwnedSemaphorePermit>,
}

/// The budget is spent: the body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spent {
    /// The budget, in bytes.
    pub budget: usize,
}

impl BodyBudget {
    /// A budget of `bytes` (0: unbounded).
    #[must_use]
    pub fn new(bytes: usize) -> Self {
        Self {
            units: (bytes > 0).then(|| Arc::new(Semaphore::new(units(bytes)))),
            bytes,
        }
    }

    /// Takes what a body of `len` bytes needs (its declared length, or 0 for
    /// one sent in chunks, which grows as it arrives).
    pub(crate) fn hold(&self, len: usize) -> Result<BodyHold, Spent> {
        let mut hold = BodyHold::default();
        self.grow(&mut hold, len)?;
        Ok(hold)
    }

    /// Makes `hold` cover `len` bytes.
    pub(crate) fn grow(&self, hold: &mut BodyHold, len: usize) -> Result<(), Spent> {
        let Some(units_left) = &self.units else {
            return Ok(());
        };
        let held = hold
            .permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        let more = units(len).saturating_sub(held);
        if more == 0 {
            return Ok(());
        }
        let spent = Spent { budget: self.bytes };
        let more = u32::try_from(more).map_err(|_| spent)?;
        let permit = Arc::clone(units_left)
            .try_acquire_many_owned(more)
            .map_err(|_| spent)?;
        match &mut hold.permit {
            Some(held) => held.merge(permit),
            None => hold.permit = Some(permit),
        }
        Ok(())
    }
}

impl Default for BodyBudget {
    /// Unbounded.
    fn default() -> Self {
        Self::new(0)
    }
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_share_the_budget_and_give_it_back() {
        let budget = BodyBudget::new(10 * UNIT);
        let first = budget.hold(6 * UNIT).expect("room");
        let mut second = budget.hold(0).expect("a chunked body starts empty");
        budget.grow(&mut second, 3 * UNIT + 1).expect("4 units");
        assert_eq!(
            budget.grow(&mut second, 5 * UNIT),
            Err(Spent { budget: 10 * UNIT }),
            "6 + 5 units do not fit in 10"
        );
        assert!(budget.hold(UNIT).is_err());
        drop(first);
        budget.grow(&mut second, 10 * UNIT).expect("alone, it fits");
        drop(second);
        assert!(budget.hold(10 * UNIT).is_ok(), "all given back");
    }

    #[test]
    fn zero_means_unbounded() {
        let budget = BodyBudget::new(0);
        let _held = budget.hold(usize::MAX).expect("unbounded");
        assert!(budget.hold(usize::MAX).is_ok());
    }
}
