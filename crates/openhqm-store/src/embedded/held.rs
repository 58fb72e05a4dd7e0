//! PENDING records of deferred requests, held in memory instead of written.
//!
//! A request whose caller waits for its answer is published deferred: the
//! embedded queue holds its message in memory until a sync, and its record
//! is held here alongside, so that a crash, which loses the message, does not
//! leave a record PENDING for a week for a request nobody will run. The
//! first written transition (the outcome, or a cancel) replaces it; a
//! [`sync`](crate::ResultStore::sync) (before a `202`) writes it.
//!
//! Readers look here last: the overlay (PROCESSING) and storage hold newer
//! states than this first one. A sync marks what it writes, and the entries
//! stay until its commit, so readers never miss a record in between.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use openhqm_core::{CorrelationId, RequestRecord};

#[derive(Default)]
pub(super) struct Held(Mutex<HashMap<CorrelationId, Entry>>);

struct Entry {
    record: RequestRecord,
    /// A sync wrote it; its commit takes the entry out.
    written: bool,
}

impl Held {
    /// Holds `record` unless `exists` says the request has a newer state
    /// (a worker took its message before the record was made); checked
    /// under the lock, so a transition's commit cannot slip in between.
    pub(super) fn hold(&self, record: RequestRecord, exists: impl FnOnce() -> bool) {
        let mut entries = self.lock();
        if !exists() {
            let entry = Entry {
                record,
                written: false,
            };
            entries.insert(entry.record.correlation_id, entry);
        }
    }

    pub(super) fn get(&self, id: CorrelationId) -> Option<RequestRecord> {
        self.lock().get(&id).map(|e| e.record.clone())
    }

    /// A transition of `id` was committed: storage has a newer state.
    pub(super) fn replaced(&self, id: CorrelationId) {
        self.lock().remove(&id);
    }

    /// Marks every unwritten record written and returns them, for a sync.
    pub(super) fn mark_for_sync(&self) -> Vec<RequestRecord> {
        self.lock()
            .values_mut()
            .filter(|e| !e.written)
            .map(|e| {
                e.written = true;
                e.record.clone()
            })
            .collect()
    }

    /// A sync could not write `id`: the next one tries again.
    pub(super) fn unmark(&self, id: CorrelationId) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.written = false;
        }
    }

    /// The sync that wrote `ids` committed.
    pub(super) fn committed(&self, ids: &[CorrelationId]) {
        let mut entries = self.lock();
        for id in ids {
            if entries.get(id).is_some_and(|e| e.written) {
                entries.remove(id);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CorrelationId, Entry>> {
        // Each method leaves the map consistent, whatever panicked meanwhile.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
