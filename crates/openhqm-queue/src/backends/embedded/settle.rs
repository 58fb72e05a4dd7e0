//! Settling embedded deliveries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openhqm_embedded::Wait;

use super::held::Settled;
use super::record::{self, DeadRecord, StoredRecord};
use super::{Inner, db_error, duration_ms, now_ms};
use crate::{Nack, QueueError, Settle};

pub(crate) struct Handle {
    inner: Arc<Inner>,
    seq: u64,
    token: u64,
    record: StoredRecord,
}

impl Handle {
    pub fn new(inner: Arc<Inner>, seq: u64, token: u64, record: StoredRecord) -> Self {
        Self {
            inner,
            seq,
            token,
            record,
        }
    }

    fn lease_lost(&self) -> QueueError {
        QueueError::LeaseLost(self.seq.to_string())
    }

    /// Ends the lease, or says it was lost.
    fn release(&self) -> Result<u8, QueueError> {
        let mut state = self.inner.lock();
        state
            .release(self.seq, self.token)
            .ok_or_else(|| self.lease_lost())
    }
}

#[async_trait]
impl Settle for Handle {
    async fn ack(&self) -> Result<(), QueueError> {
        let settled = {
            let mut state = self.inner.lock();
            state
                .release(self.seq, self.token)
                .ok_or_else(|| self.lease_lost())?;
            state.held.settle(self.seq)
        };
        // A held message that was never written has nothing to delete.
        if settled == Settled::Unwritten {
            return Ok(());
        }
        let (ks, key) = (self.inner.messages.clone(), record::encode_key(self.seq));
        // Not waited for: the message already left the in-memory state, so it
        // cannot be handed out again by this process, and the delete is
        // ordered before any later write. Losing it in a crash only means a
        // redelivery, which at-least-once allows and the worker deduplicates.
        self.inner
            .db
            .write_detached(move |ctx| ctx.remove(&ks, &key))
            .map_err(db_error)
    }

    async fn nack(&self, nack: Nack) -> Result<(), QueueError> {
        // A held message stays held until the write below is applied, on
        // the writer thread: a sync (a 202) between the two must still
        // find it somewhere, held or written.
        let priority = self.release()?;
        let key = record::encode_key(self.seq);
        match nack {
            Nack::Retry { delay } | Nack::Release { delay } => {
                let due = now_ms() + duration_ms(delay);
                let mut rec = self.record.clone();
                if matches!(nack, Nack::Retry { .. }) {
                    rec.attempt += 1;
                }
                rec.not_before_ms = due;
                let (inner, seq) = (Arc::clone(&self.inner), self.seq);
                let written = self
                    .inner
                    .db
                    .write(Wait::Applied, move |ctx| {
                        inner.lock().held.settle(seq);
                        ctx.insert(&inner.messages, &key, rec.encode());
                    })
                    .await;
                // Failed or not, the message waits out its delay: storage
                // still holds it, with or without the new attempt (a held
                // one's failed write poisons the engine and stops the process).
                self.inner.lock().push_delayed(self.seq, priority, due);
                self.inner.notify.notify_waiters();
                written.map_err(db_error)?;
            }
            Nack::DeadLetter { reason } => {
                let dead = DeadRecord {
                    dead_lettered_at_ms: now_ms(),
                    reason,
                    record: self.record.clone(),
                };
                let moved = self
                    .inner
                    .db
                    .write(Wait::Applied, self.inner.dead_letter_move(self.seq, dead))
                    .await;
                if let Err(e) = moved {
                    // The move is atomic, so the message is still stored:
                    // it waits again rather than sit unseen until a restart.
                    self.inner.lock().push_ready(self.seq, priority);
                    self.inner.notify.notify_waiters();
                    return Err(db_error(e));
                }
            }
        }
        Ok(())
    }

    async fn extend(&self, by: Duration) -> Result<(), QueueError> {
        let deadline = self.inner.now().mono_ms + duration_ms(by);
        if self.inner.lock().extend(self.seq, self.token, deadline) {
            Ok(())
        } else {
            Err(QueueError::LeaseLost(self.seq.to_string()))
        }
    }
}
