//! Settling a Redis delivery: each outcome is one Lua script that checks the
//! lease is still ours and then acts, so a settle is all or nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{Shared, duration_ms, redis_error};
use crate::{Nack, QueueError, Settle};

/// The queue's shared state, held by one delivery: counted in
/// [`Shared::held`] until the delivery is dropped, settled or not.
pub(super) struct Held(Arc<Shared>);

impl Held {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        shared.held.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(shared))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::ops::Deref for Held {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The backend half of one delivery.
pub(super) struct RedisSettle {
    pub shared: Held,
    /// The stream entry id (changes on retry, unlike the message id).
    pub entry_id: String,
    /// The entry's delivery count when we got it: our lease token.
    pub deliveries: u64,
    /// The message id.
    pub origin: String,
    /// The attempt this delivery is.
    pub attempt: u32,
}

impl RedisSettle {
    /// Runs `script` with the ownership arguments first, then `extra`.
    /// `Ok(())` if it acted, `LeaseLost` if the entry was no longer ours.
    async fn run(
        &self,
        script: &Script,
        keys: &[&str],
        extra: &[String],
    ) -> Result<(), QueueError> {
        let s = &self.shared;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        invocation
            .arg(&s.config.group)
            .arg(&self.entry_id)
            .arg(&s.config.consumer)
            .arg(self.deliveries);
        for arg in extra {
            invocation.arg(arg);
        }
        let mut conn = s.conn.clone();
        let done: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if done == 1 {
            Ok(())
        } else {
            Err(QueueError::LeaseLost(self.origin.clone()))
        }
    }
}

#[async_trait]
impl Settle for RedisSettle {
    async fn ack(&self) -> Result<(), QueueError> {
        self.run(&self.shared.scripts.ack, &[&self.shared.config.stream], &[])
            .await
    }

    async fn nack(&self, nack: Nack) -> Result<(), QueueError> {
        let s = &self.shared;
        match nack {
            Nack::Retry { delay } | Nack::Release { delay } => {
                let counted = u32::from(matches!(nack, Nack::Retry { .. }));
                let extra = [
                    duration_ms(delay).to_string(),
                    self.attempt.saturating_add(counted).to_string(),
                    self.origin.clone(),
                ];
                self.run(&s.scripts.retry, &[&s.config.stream, &s.delayed], &extra)
                    .await
            }
            Nack::DeadLetter { reason } => {
                let extra = [reason, self.attempt.to_string(), self.origin.clone()];
                let keys = [s.config.stream.as_str(), &s.config.dead_letter_stream];
                self.run(&s.scripts.dead_letter, &keys, &extra).await
            }
        }
    }

    /// Redis measures a lease as idle time since the last claim, against the
    /// one configured lease, so the deadline can be pushed at most one lease
    /// ahead: `by` shorter than the lease sets the idle time to `lease - by`.
    async fn extend(&self, by: Duration) -> Result<(), QueueError> {
        let idle = self.shared.config.lease.saturating_sub(by);
        self.run(
            &self.shared.scripts.extend,
            &[&self.shared.config.stream],
            &[duration_ms(idle).to_string()],
        )
        .await
    }
}
