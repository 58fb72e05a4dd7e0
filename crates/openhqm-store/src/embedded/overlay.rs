//! Records of requests in PROCESSING, kept in memory over their stored
//! state and never written (see the module above for why that is safe).
//!
//! The transition that ends PROCESSING is written, and until its batch is
//! committed readers of the database still find the older record: so the
//! entry stays, marked superseded, and readers keep seeing PROCESSING until
//! the commit, as they would if it had been written. Transitions on the
//! writer thread skip a superseded entry: the batch they read holds the
//! newer write. If the commit fails, the entry stays, and readers never see
//! a result that was not stored.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use openhqm_core::{CorrelationId, RequestRecord};

/// The PROCESSING record of each request being taken, by id. Bounded by the
/// deliveries in flight: every attempt ends in a written transition, whose
/// commit takes the entry out.
#[derive(Default)]
pub(super) struct Overlay(Mutex<HashMap<CorrelationId, Entry>>);

struct Entry {
    record: RequestRecord,
    /// A later transition was written; its commit removes the entry.
    superseded: bool,
}

impl Overlay {
    /// What readers see over the database: PROCESSING until the transition
    /// that ends it is committed.
    pub(super) fn visible(&self, id: CorrelationId) -> Option<RequestRecord> {
        self.lock().get(&id).map(|e| e.record.clone())
    }

    /// The record a transition starts from, if it is in PROCESSING and has
    /// not been superseded by a write the writer's batch holds.
    pub(super) fn current(&self, id: CorrelationId) -> Option<RequestRecord> {
        self.lock()
            .get(&id)
            .filter(|e| !e.superseded)
            .map(|e| e.record.clone())
    }

    /// Puts a PROCESSING `record` over the stored one.
    pub(super) fn set(&self, record: RequestRecord) {
        let entry = Entry {
            record,
            superseded: false,
        };
        self.lock().insert(entry.record.correlation_id, entry);
    }

    /// A transition out of PROCESSING was written for `id`, not yet committed.
    pub(super) fn supersede(&self, id: CorrelationId) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.superseded = true;
        }
    }

    /// The batch with a written transition of `id` is committed: readers find
    /// it in the database, unless a later transition in the same batch took
    /// the request back to PROCESSING.
    pub(super) fn committed(&self, id: CorrelationId) {
        let mut entries = self.lock();
        if entries.get(&id).is_some_and(|e| e.superseded) {
            entries.remove(&id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CorrelationId, Entry>> {
        // Each method leaves the map consistent, whatever panicked meanwhile.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use openhqm_core::RequestStatus;
    use openhqm_core::time::now_ms;

    use super::*;

    fn processing(id: CorrelationId) -> RequestRecord {
        RequestRecord {
            status: RequestStatus::Processing,
            ..RequestRecord::pending(id, now_ms())
        }
    }

    #[test]
    fn processing_stays_visible_until_the_write_that_ends_it_is_committed() {
        let overlay = Overlay::default();
        let id = CorrelationId::new();
        overlay.set(processing(id));
        assert!(overlay.current(id).is_some());
        overlay.supersede(id);
        // The writer reads its batch; readers still see PROCESSING.
        assert!(overlay.current(id).is_none());
        assert_eq!(
            overlay.visible(id).map(|r| r.status),
            Some(RequestStatus::Processing)
        );
        overlay.committed(id);
        assert!(overlay.visible(id).is_none());
    }

    #[test]
    fn a_commit_does_not_drop_a_processing_record_taken_again_in_its_batch() {
        let overlay = Overlay::default();
        let id = CorrelationId::new();
        overlay.set(processing(id));
        overlay.supersede(id); // a retry written...
        overlay.set(processing(id)); // ...and taken again in the same batch
        overlay.committed(id);
        assert!(overlay.current(id).is_some());
    }
}
