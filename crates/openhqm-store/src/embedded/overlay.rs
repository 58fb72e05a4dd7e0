//! Records readers must see over the database's: those in PROCESSING, never
//! written (see the module above for why that is safe), and a written one
//! until its batch is committed and readers find it in the database.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use openhqm_core::{CorrelationId, RequestRecord, RequestStatus};

/// The newest record of each request being processed, by id. Bounded by
/// the deliveries in flight: every attempt ends in a written transition,
/// whose record leaves once committed.
#[derive(Default)]
pub(super) struct Overlay(Mutex<HashMap<CorrelationId, RequestRecord>>);

impl Overlay {
    pub(super) fn get(&self, id: CorrelationId) -> Option<RequestRecord> {
        self.lock().get(&id).cloned()
    }

    /// Puts `record` over the stored one: until it is committed if it is
    /// written, for as long as it is PROCESSING if not.
    pub(super) fn set(&self, record: RequestRecord) {
        self.lock().insert(record.correlation_id, record);
    }

    /// Once a written record is committed: readers find it (or a later one)
    /// in the database, unless a later transition in the same batch took the
    /// request back to PROCESSING.
    pub(super) fn committed(&self, id: CorrelationId) {
        let mut records = self.lock();
        if records
            .get(&id)
            .is_some_and(|r| r.status != RequestStatus::Processing)
        {
            records.remove(&id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CorrelationId, RequestRecord>> {
        // Each method leaves the map consistent, whatever panicked meanwhile.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use openhqm_core::time::now_ms;

    use super::*;

    fn record(id: CorrelationId, status: RequestStatus) -> RequestRecord {
        RequestRecord {
            status,
            ..RequestRecord::pending(id, now_ms())
        }
    }

    #[test]
    fn a_written_record_leaves_once_committed_and_a_processing_one_stays() {
        let overlay = Overlay::default();
        let id = CorrelationId::new();
        overlay.set(record(id, RequestStatus::Completed));
        assert_eq!(
            overlay.get(id).map(|r| r.status),
            Some(RequestStatus::Completed)
        );
        overlay.committed(id);
        assert!(overlay.get(id).is_none());
        // A retry written, then taken again in the same batch: the retry's
        // commit must not drop the newer PROCESSING record.
        overlay.set(record(id, RequestStatus::Pending));
        overlay.set(record(id, RequestStatus::Processing));
        overlay.committed(id);
        assert_eq!(
            overlay.get(id).map(|r| r.status),
            Some(RequestStatus::Processing)
        );
    }
}
