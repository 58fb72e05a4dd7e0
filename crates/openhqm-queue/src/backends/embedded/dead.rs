//! The dead-letter keyspace: moves into it, listing, redrive and trimming.
//!
//! Dead letters are keyed by their own sequence, in the order they were
//! dead-lettered. `dead_count` changes only on the writer thread, in commit
//! order: a move counts itself while it is applied, a redrive or trim
//! subtracts what it removed once committed.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use openhqm_embedded::{Slice, Wait, WriteCtx};

use super::record::{self, DeadRecord, StoredRecord};
use super::{Inner, db_error, unavailable};
use crate::{DeadLetter, QueueError, now_ms};

/// Dead letters deleted per writer job when trimming, so a large backlog
/// never makes one long job that holds up every other write.
const TRIM_BATCH: usize = 1024;

/// A dead letter dated further ahead of now than this was stamped by a
/// clock that ran ahead (a VM booted before NTP set it): it is dated by its
/// place instead, so it cannot hold up trimming until that date.
const CLOCK_AHEAD_MS: u64 = 24 * 60 * 60 * 1000;

impl Inner {
    /// The writer job moving message `seq` to the dead-letter keyspace as
    /// `dead`: one atomic batch, so it is never in both or neither.
    pub(crate) fn dead_letter_move(
        self: &Arc<Self>,
        seq: u64,
        dead: DeadRecord,
    ) -> impl FnOnce(&mut WriteCtx<'_>) + Send + 'static {
        let dead_seq = self.next_dead_seq.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(self);
        move |ctx| {
            // Held no more: written below, in order with any sync.
            inner.lock().held.settle(seq);
            ctx.remove(&inner.messages, &record::encode_key(seq));
            ctx.insert(&inner.dead, &record::encode_key(dead_seq), dead.encode());
            // Counted as applied: a commit that fails poisons the engine, and
            // the process stops (see `EmbeddedDb::failed`).
            inner.lock().dead_count += 1;
        }
    }

    /// Dead-letters a stored message that cannot be decoded, keeping its
    /// bytes as the body, so that it neither blocks the queue nor is lost.
    pub(super) fn quarantine(
        self: &Arc<Self>,
        seq: u64,
        raw: &[u8],
        error: &record::CorruptRecord,
    ) {
        tracing::error!(queue = %self.config.name, seq, %error, "stored message cannot be decoded; dead-lettered");
        let dead = DeadRecord {
            dead_lettered_at_ms: now_ms(),
            reason: format!("stored message {seq} cannot be decoded: {error}"),
            record: StoredRecord {
                attempt: 1,
                not_before_ms: 0,
                priority: 0,
                attributes: BTreeMap::new(),
                body: Bytes::copy_from_slice(raw),
            },
        };
        match self.db.write_detached(self.dead_letter_move(seq, dead)) {
            Ok(()) => self.lock().forget(seq),
            // Not moved: it stays leased, and comes back after the lease.
            Err(e) => {
                tracing::warn!(seq, error = %e, "could not dead-letter an undecodable message");
            }
        }
    }

    /// Runs `scan` of storage on the blocking pool: a read may wait on the
    /// disk or on fjall's locks (a flush holds a tree's version lock while it
    /// syncs), and must not hold a runtime thread meanwhile.
    async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        scan: impl FnOnce(&Self) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let inner = Arc::clone(self);
        tokio::task::spawn_blocking(move || scan(&inner))
            .await
            .map_err(|e| unavailable(format!("reading dead letters stopped: {e}")))?
    }

    pub(super) async fn dead_letters(
        self: &Arc<Self>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.off_runtime(move |inner| inner.read_dead_letters(limit))
            .await
    }

    fn read_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut out = Vec::new();
        // Damaged records are skipped without counting against `limit`.
        for item in self.dead.iter() {
            if out.len() == limit {
                break;
            }
            let (key, value) = item.into_inner().map_err(unavailable)?;
            let decoded =
                record::decode_key(&key).and_then(|seq| Ok((seq, DeadRecord::decode(&value)?)));
            match decoded {
                Ok((seq, dead)) => out.push(dead.into_dead_letter(seq)),
                // One damaged record must not hide every other one.
                Err(e) => tracing::warn!(error = %e, "skipped an unreadable dead letter"),
            }
        }
        Ok(out)
    }

    pub(super) async fn redrive(self: &Arc<Self>, limit: usize) -> Result<u64, QueueError> {
        let _removing = self.removing_dead.lock().await;
        let moves = self
            .off_runtime(move |inner| inner.redrive_moves(limit, now_ms()))
            .await?;
        let (job, then) = (Arc::clone(self), Arc::clone(self));
        self.db
            .write_then(
                Wait::Durable,
                move |ctx| {
                    let mut placed = Vec::with_capacity(moves.len());
                    for (dead_key, seq, rec) in moves {
                        ctx.remove(&job.dead, &dead_key);
                        ctx.insert(&job.messages, &record::encode_key(seq), rec.encode());
                        placed.push((seq, rec.priority));
                    }
                    placed
                },
                move |placed: Vec<(u64, u8)>| {
                    let moved = placed.len() as u64;
                    let mut state = then.lock();
                    for (seq, priority) in placed {
                        state.push_ready(seq, priority);
                    }
                    state.dead_count = state.dead_count.saturating_sub(moved);
                    drop(state);
                    then.notify.notify_waiters();
                    moved
                },
            )
            .await
            .map_err(db_error)
    }

    /// The oldest `limit` readable dead letters, each with the key it leaves
    /// and the queue sequence and record (a fresh first attempt, marked as
    /// redriven at `redriven_at`) it goes back as.
    fn redrive_moves(
        &self,
        limit: usize,
        redriven_at: u64,
    ) -> Result<Vec<(Slice, u64, StoredRecord)>, QueueError> {
        let mut moves = Vec::new();
        // Damaged records stay, and are not counted against `limit`: a head
        // of them must not stop every later letter from being redriven.
        for item in self.dead.iter() {
            if moves.len() == limit {
                break;
            }
            let (key, value) = item.into_inner().map_err(unavailable)?;
            let mut rec = match DeadRecord::decode(&value) {
                Ok(dead) => dead.record,
                // Left where it is: redriving it would only dead-letter it again.
                Err(e) => {
                    tracing::warn!(error = %e, "an unreadable dead letter stays dead-lettered");
                    continue;
                }
            };
            rec.attempt = 1;
            rec.not_before_ms = 0;
            rec.attributes
                .insert(crate::REDRIVEN.to_owned(), redriven_at.to_string());
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            moves.push((key, seq, rec));
        }
        Ok(moves)
    }

    pub(super) async fn trim_dead_letters(
        self: &Arc<Self>,
        before_ms: u64,
    ) -> Result<u64, QueueError> {
        if self.lock().dead_count == 0 {
            // Nothing to scan: the usual case costs no read and no thread.
            return Ok(0);
        }
        let mut trimmed = 0;
        let mut after = None;
        loop {
            let removing = self.removing_dead.lock().await;
            let start = after.take();
            let (expired, more) = self
                .off_runtime(move |inner| inner.expired_dead_letters(before_ms, start))
                .await?;
            let Some(last) = expired.last().cloned() else {
                return Ok(trimmed);
            };
            let (job, then) = (Arc::clone(self), Arc::clone(self));
            trimmed += self
                .db
                .write_then(
                    // A crash before the next sync brings some back, to be trimmed again.
                    Wait::Applied,
                    move |ctx| {
                        for key in &expired {
                            ctx.remove(&job.dead, key);
                        }
                        expired.len() as u64
                    },
                    move |removed: u64| {
                        let mut state = then.lock();
                        state.dead_count = state.dead_count.saturating_sub(removed);
                        removed
                    },
                )
                .await
                .map_err(db_error)?;
            drop(removing);
            if !more {
                return Ok(trimmed);
            }
            after = Some(last);
        }
    }

    /// Keys of the oldest dead letters (after key `after`, if given)
    /// dead-lettered before `before_ms`, at most [`TRIM_BATCH`], and whether
    /// more may follow. Keys follow the order of dead-lettering, so the scan
    /// stops at the first younger one (a wall clock set back can hold up
    /// trimming until it catches up; it never deletes a younger one). A
    /// record that is unreadable, or dated more than [`CLOCK_AHEAD_MS`]
    /// ahead, is dated by its place: it goes only with a readable expired
    /// one after it.
    fn expired_dead_letters(
        &self,
        before_ms: u64,
        after: Option<Slice>,
    ) -> Result<(Vec<Slice>, bool), QueueError> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let clock_ahead = now_ms().saturating_add(CLOCK_AHEAD_MS);
        let mut expired = Vec::new();
        let mut undated = Vec::new();
        for item in self.dead.range::<Slice, _>((start, Bound::Unbounded)) {
            let (key, value) = item.into_inner().map_err(unavailable)?;
            match DeadRecord::dead_lettered_at(&value) {
                Ok(at) if at > clock_ahead => undated.push(key),
                Ok(at) if at >= before_ms => return Ok((expired, false)),
                Ok(_) => {
                    expired.append(&mut undated);
                    expired.push(key);
                    if expired.len() >= TRIM_BATCH {
                        return Ok((expired, true));
                    }
                }
                Err(_) => undated.push(key),
            }
        }
        Ok((expired, false))
    }
}
