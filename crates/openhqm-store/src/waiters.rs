//! Waiters for a terminal status, by id: one [`Notify`] per id however many
//! callers wait on it, so a completion wakes only the callers waiting for
//! that request (a shared broadcast would wake every waiter for every
//! completion, which costs O(waiters) per request under a sync load).
//!
//! A store that has the finished record in hand ([`Waiters::finish`]) leaves
//! it with the waiters, so they need not read it back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openhqm_core::{CorrelationId, RequestRecord};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::StoreError;

/// How soon a read that failed with a retryable error is tried again while
/// waiting (a reconnecting Redis connection, say).
const READ_RETRY: Duration = Duration::from_millis(100);

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
    notify: Arc<Notify>,
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

    /// Waits up to `timeout` for `id` to reach a terminal status: the
    /// store's `wait_terminal`. `read` reads the record from the store; it
    /// runs once registered, so a completion between the read and the wait
    /// still wakes this waiter, and again after each wake-up. `None` when
    /// the time runs out first.
    pub(crate) async fn wait_terminal<F, R>(
        &self,
        id: CorrelationId,
        timeout: Duration,
        read: F,
    ) -> Result<Option<RequestRecord>, StoreError>
    where
        // A plain closure returning a future, not an async closure: the
        // latter's future cannot be proven `Send` for the store traits.
        F: Fn() -> R,
        R: Future<Output = Result<Option<RequestRecord>, StoreError>>,
    {
        let waiting = self.register(id);
        let deadline = Instant::now() + timeout;
        loop {
            let notified = waiting.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let record = match waiting.finished() {
                Some(handed_over) => Some(handed_over),
                None => match read().await {
                    Ok(record) => record,
                    // A missed wake-up while the store was unreachable is
                    // covered by reading again shortly.
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tracing::debug!(%id, error = %e, "result store read failed while waiting; retrying");
                        tokio::time::sleep_until((Instant::now() + READ_RETRY).min(deadline)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            if let Some(record) = record
                && record.status.is_terminal()
            {
                return Ok(Some(record));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
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
    /// The terminal record, if the store handed it over. The only waiter
    /// takes it (it answers with it at once); one registered later reads
    /// the store, where the record is by then.
    fn finished(&self) -> Option<RequestRecord> {
        let mut map = self.waiters.lock();
        let entry = map.get_mut(&self.id)?;
        if entry.count == 1 {
            entry.finished.take()
        } else {
            entry.finished.clone()
        }
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
        // Two waiters: each reads a copy, so the record stays until reopened.
        let (waiting, other) = (waiters.register(id), waiters.register(id));
        let failed = RequestRecord {
            status: RequestStatus::Failed,
            ..RequestRecord::pending(id, 1)
        };
        waiters.finish(&failed);
        for w in [&waiting, &other] {
            assert_eq!(w.finished().map(|r| r.status), Some(RequestStatus::Failed));
        }
        waiters.reopen(id);
        assert!(waiting.finished().is_none());
        assert!(other.finished().is_none());
    }

    #[tokio::test]
    async fn a_sole_waiter_answers_with_the_handed_over_record() {
        let waiters = Waiters::default();
        let id = CorrelationId::new();
        let done = RequestRecord {
            status: RequestStatus::Completed,
            ..RequestRecord::pending(id, 1)
        };
        let wait = waiters.wait_terminal(id, Duration::from_secs(5), || async {
            Ok(Some(RequestRecord::pending(id, 1)))
        });
        tokio::pin!(wait);
        // Registered and reading PENDING: not answered yet.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        waiters.finish(&done);
        let got = wait.await.expect("no error").expect("answered");
        assert_eq!(got.status, RequestStatus::Completed);
        // Its registration is gone, and the record with it.
        assert!(waiters.lock().is_empty());
    }
}
