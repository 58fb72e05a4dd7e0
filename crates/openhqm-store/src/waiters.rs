//! Waiters for a terminal status, by id: one [`Notify`] per id however many
//! callers wait on it, so a completion wakes only the callers waiting for
//! that request (a shared broadcast would wake every waiter for every
//! completion, which costs O(waiters) per request under a sync load).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use openhqm_core::CorrelationId;
use tokio::sync::Notify;

/// Waiters by id; one [`Notify`] per id however many wait on it.
#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<CorrelationId, (Arc<Notify>, usize)>>,
}

/// A registration; removes itself when the last waiter for the id leaves.
pub(crate) struct Waiting<'a> {
    waiters: &'a Waiters,
    id: CorrelationId,
    pub(crate) notify: Arc<Notify>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CorrelationId, (Arc<Notify>, usize)>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register(&self, id: CorrelationId) -> Waiting<'_> {
        let mut map = self.lock();
        let entry = map
            .entry(id)
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Waiting {
            waiters: self,
            id,
            notify: Arc::clone(&entry.0),
        }
    }

    pub(crate) fn wake(&self, id: CorrelationId) {
        if let Some((notify, _)) = self.lock().get(&id) {
            notify.notify_waiters();
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn wake_all(&self) {
        for (notify, _) in self.lock().values() {
            notify.notify_waiters();
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        if let Some(entry) = map.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.id);
            }
        }
    }
}
