//! Waiters for a terminal status, by id: one [`Notify`] per id however many
//! callers wait on it, so a completion wakes only the callers waiting for
//! that request (a shared broadcast would wake every waiter for every
//! completion, which costs O(waiters) per request under a sync load).
//!
//! A store that has the finished record in hand ([`Waiters::finish`]) leaves
//! it with the waiters, so they need not read it back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use openhqm_core::{CorrelationId, RequestRecord};
use tokio::sync::Notify;

/// Waiters by id; one [`Notify`] per id however many wait on it.
#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<CorrelationId, Entry>>,
}

struct Entry {
    notify: Arc<Notify>,
    count: usize,
    /// The terminal record, when the store handed it over.
    finished: Option<RequestRecord>,
}

/// A registration; removes itself when the last waiter for the id leaves.
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
    id: CorrelationId,
    pub(crate) notify: Arc<Notify>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CorrelationId, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register(&self, id: CorrelationId) -> Waiting<'_> {
        let mut map = self.lock();
        let entry = map.entry(id).or_insert_with(|| Entry {
            notify: Arc::new(Notify::new()),
            count: 0,
            finished: None,
        });
        entry.count += 1;
        Waiting {
            waiters: self,
            id,
            notify: Arc::clone(&entry.notify),
        }
    }

    /// Wakes the waiters of `id`, which read the record from the store.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn wake(&self, id: CorrelationId) {
        if let Some(entry) = self.lock().get(&id) {
            entry.notify.notify_waiters();
        }
    }

    /// Wakes the waiters of a request that just finished, handing them `record`.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub(crate) fn finish(&self, record: &RequestRecord) {
        if let Some(entry) = self.lock().get_mut(&record.correlation_id) {
            entry.finished = Some(record.clone());
            entry.notify.notify_waiters();
        }
    }

    /// Forgets the terminal record handed over for `id`: a redrive reopened
    /// the request, so a waiter still registered must not answer with it.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub(crate) fn reopen(&self, id: CorrelationId) {
        if let Some(entry) = self.lock().get_mut(&id) {
            entry.finished = None;
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn wake_all(&self) {
        for entry in self.lock().values() {
            entry.notify.notify_waiters();
        }
    }
}

impl Waiting<'_> {
    /// The terminal record, if the store handed it over.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub(crate) fn finished(&self) -> Option<RequestRecord> {
        self.waiters
            .lock()
            .get(&self.id)
            .and_then(|e| e.finished.clone())
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        if let Some(entry) = map.get_mut(&self.id) {
            entry.count -= 1;
            if entry.count == 0 {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openhqm_core::RequestStatus;

    use super::*;

    #[test]
    fn a_reopened_request_is_no_longer_finished_for_its_waiters() {
        let waiters = Waiters::default();
        let id = CorrelationId::new();
        let waiting = waiters.register(id);
        let failed = RequestRecord {
            status: RequestStatus::Failed,
            ..RequestRecord::pending(id, 1)
        };
        waiters.finish(&failed);
        assert_eq!(
            waiting.finished().map(|r| r.status),
            Some(RequestStatus::Failed)
        );
        waiters.reopen(id);
        assert!(waiting.finished().is_none());
    }
}
