//! Receiving: move due retries back, take over expired leases, then block
//! for new entries, in slices short enough to notice both in time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::entry::{self, Entry};
use super::settle::Held;
use super::settle::RedisSettle;
use super::{BUSY_BLOCK, MAX_BLOCK, RedisQueue, duration_ms, is_nogroup, redis_error};
use crate::{Delivery, QueueError};

/// Why a malformed entry is dead-lettered.
const NO_PAYLOAD: &str = "malformed stream entry: no `payload` field";

impl RedisQueue {
    pub(super) async fn receive_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(QueueError::Closed);
            }
            let (claimed, next_due) = self.prepare(max - out.len()).await?;
            self.deliver(claimed, &mut out).await;
            // Taken over already: handed out now, not held through a
            // blocking read (whose failure would drop them unrun, to come
            // back after another lease with an attempt used up).
            if !out.is_empty() {
                return Ok(out);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut block = remaining.min(self.poll_slice());
            if let Some(due) = next_due {
                block = block.min(due);
            }
            if self.shared.held.load(Ordering::Acquire) > 0 {
                block = block.min(BUSY_BLOCK);
            }
            let fresh = self.read_new(max - out.len(), block).await?;
            self.deliver(fresh.into_iter().map(|e| (e, 1)).collect(), &mut out)
                .await;
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
        }
    }

    /// How long one blocking read may last: short against the lease, so an
    /// expired lease is taken over soon after it expires.
    fn poll_slice(&self) -> Duration {
        (self.shared.config.lease / 4).clamp(Duration::from_millis(20), MAX_BLOCK)
    }

    /// Runs the prepare script: due retries back onto the stream, expired
    /// leases taken over. Returns the claimed entries with their delivery
    /// counts and how long until the next retry is due.
    async fn prepare(
        &self,
        max: usize,
    ) -> Result<(Vec<(Entry, u64)>, Option<Duration>), QueueError> {
        let s = &self.shared;
        let mut conn = s.conn.clone();
        let cursor = s.lock_cursor().clone();
        let reply: Result<redis::Value, _> = s
            .scripts
            .prepare
            .key(&s.config.stream)
            .key(&s.delayed)
            .arg(&s.config.group)
            .arg(&s.config.consumer)
            .arg(duration_ms(s.config.lease))
            .arg(max)
            .arg(cursor)
            .invoke_async(&mut conn)
            .await;
        match reply {
            Ok(v) => {
                let p = entry::parse_prepare(&v);
                // Resuming where the scan stopped reaches every pending entry
                // even when more are pending than one call examines.
                *s.lock_cursor() = p.cursor;
                Ok((p.claimed, p.next_due_ms.map(Duration::from_millis)))
            }
            Err(e) if is_nogroup(&e) => {
                self.recreate_group().await?;
                Ok((Vec::new(), None))
            }
            Err(e) => Err(redis_error(e)),
        }
    }

    async fn recreate_group(&self) -> Result<(), QueueError> {
        tracing::warn!(stream = %self.shared.config.stream, "consumer group missing (Redis lost its data?); recreating it");
        self.create_group().await
    }

    /// `XREADGROUP ... >` on the blocking connection; `block` zero means do not block.
    async fn read_new(&self, count: usize, block: Duration) -> Result<Vec<Entry>, QueueError> {
        let c = &self.shared.config;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&c.group)
            .arg(&c.consumer)
            .arg("COUNT")
            .arg(count);
        // BLOCK 0 would block forever; a zero slice is a plain read.
        let block_ms = duration_ms(block);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(&c.stream).arg(">");
        let reply: Result<redis::Value, _> = {
            let mut conn = self.shared.blocking.lock().await;
            cmd.query_async(&mut *conn).await
        };
        match reply {
            Ok(v) => Ok(entry::parse_read(&v)),
            Err(e) if is_nogroup(&e) => {
                self.recreate_group().await?;
                Ok(Vec::new())
            }
            Err(e) => Err(redis_error(e)),
        }
    }

    /// Turns entries into deliveries; dead-letters the ones without a body.
    async fn deliver(&self, entries: Vec<(Entry, u64)>, out: &mut Vec<Delivery>) {
        for (entry, deliveries) in entries {
            let settle = RedisSettle {
                shared: Held::new(&self.shared),
                entry_id: entry.id.clone(),
                deliveries,
                origin: entry.origin(),
                attempt: 1,
            };
            match entry.message(deliveries) {
                Some(message) => out.push(Delivery::new(
                    message.clone(),
                    Box::new(RedisSettle {
                        attempt: message.attempt,
                        ..settle
                    }),
                )),
                None => self.dead_letter_malformed(settle, &entry).await,
            }
        }
    }

    async fn dead_letter_malformed(&self, settle: RedisSettle, entry: &Entry) {
        let attempt = entry
            .base_attempt()
            .saturating_add(u32::try_from(settle.deliveries.saturating_sub(1)).unwrap_or(0));
        let delivery = Delivery::new(
            crate::Message {
                id: entry.origin(),
                body: bytes::Bytes::new(),
                attributes: std::collections::BTreeMap::new(),
                attempt,
            },
            Box::new(RedisSettle { attempt, ..settle }),
        );
        tracing::warn!(entry = %entry.id, stream = %self.shared.config.stream, "{NO_PAYLOAD}; dead-lettering it");
        let reason = NO_PAYLOAD.to_owned();
        if let Err(e) = delivery.nack(crate::Nack::DeadLetter { reason }).await {
            // Still pending: it is taken over after the lease and tried again.
            tracing::warn!(entry = %entry.id, error = %e, "dead-lettering a malformed entry failed");
        }
    }
}
