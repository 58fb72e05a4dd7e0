//! The embedded durable queue: the default backend, needing no service.
//!
//! # How our semantics map onto it
//! - **Storage.** Each message is one key in a fjall keyspace, keyed by a
//!   process-wide sequence number (big-endian, so keys are appended, never
//!   scattered). The value holds the attempt number, the time before which it
//!   must not be delivered, its priority, attributes and body (see [`record`]).
//!   A publish returns only once its group commit is durable. A
//!   [`Durability::Deferred`](crate::Durability) one is held in memory
//!   instead ([`held`]: its caller waits, and most are answered before a
//!   write would matter), up to a budget past which it is written and
//!   handed to the OS; [`sync`](QueueBackend::sync) writes what is held and
//!   syncs the journal, which holds every earlier write, and so does a
//!   clean shutdown ([`close`](QueueBackend::close)).
//! - **Dispatch.** Which messages are waiting, delayed or leased is kept in
//!   memory and rebuilt from the keyspace on open. Waiting messages are handed
//!   out by priority, FIFO within a priority.
//! - **Leases.** A delivery holds a lease in memory, on the monotonic clock
//!   (a wall-clock step expires none); when it runs out the message goes
//!   back in line with attempt + 1. A process that dies loses all
//!   leases, so after a restart every unacknowledged message is waiting again.
//! - **Settling.** Ack deletes the key; a retry rewrites it with attempt + 1
//!   and a due time (the delay is held by the queue, not by a sleeping task);
//!   a release rewrites only the due time; a dead letter moves it to the
//!   dead-letter keyspace with its reason, in one atomic batch. A nack waits
//!   until its write is applied; an ack does not wait at all. Neither waits
//!   for a sync: a crash before the next sync can only cause a redelivery. A
//!   nack whose write fails puts the message back in line.
//! - **Undecodable records** (a torn or foreign write) are dead-lettered with
//!   their bytes as the body when taken; they never stop the queue opening
//!   or wedge the head of the line.
//! - **Depth** counts every stored message: waiting, delayed and leased.
//! - **Storage stays bounded**: acknowledged and dead-lettered messages are
//!   deleted from the queue, dead letters past their retention are trimmed
//!   (their keys follow the order of dead-lettering), and fjall's compaction
//!   reclaims the space.

mod dead;
mod held;
mod record;
mod settle;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use openhqm_embedded::{DbError, EmbeddedDb, Keyspace, Wait};
use tokio::sync::Notify;

use crate::{
    Capabilities, DeadLetter, Delivery, Durability, OutgoingMessage, QueueBackend, QueueError,
    now_ms,
};
use record::StoredRecord;
use state::{Now, State};

/// Settings of one embedded queue.
#[derive(Debug, Clone)]
pub struct EmbeddedQueueConfig {
    /// Queue name: the keyspace of waiting messages.
    pub name: String,
    /// The keyspace of dead letters.
    pub dead_letter_name: String,
    /// How long a delivery is held before it is handed out again.
    pub lease: Duration,
    /// Largest body accepted.
    pub max_payload: usize,
}

/// The embedded queue. Share it as `Arc<dyn QueueBackend>`.
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    db: EmbeddedDb,
    messages: Keyspace,
    dead: Keyspace,
    state: std::sync::Mutex<State>,
    notify: Notify,
    next_seq: AtomicU64,
    next_dead_seq: AtomicU64,
    /// Held by whatever removes dead letters (redrive, trim) from its scan
    /// to its commit: moves only add keys, so what the scan found is still
    /// there, and the writer job deletes it without reading it again.
    removing_dead: tokio::sync::Mutex<()>,
    config: EmbeddedQueueConfig,
    /// Zero of the monotonic clock that leases run on.
    epoch: Instant,
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn db_error(e: DbError) -> QueueError {
    match e {
        DbError::Closed => QueueError::Closed,
        other => unavailable(other),
    }
}

impl EmbeddedQueue {
    /// Opens the queue in `db`, recovering every stored message.
    ///
    /// A stored message that cannot be decoded does not stop the queue: it
    /// waits like any other and is dead-lettered, bytes and all, when it is
    /// taken.
    ///
    /// # Errors
    /// If the keyspaces cannot be opened or read.
    pub fn open(db: EmbeddedDb, config: EmbeddedQueueConfig) -> Result<Self, QueueError> {
        let messages = db.keyspace(&config.name).map_err(db_error)?;
        let dead = db.keyspace(&config.dead_letter_name).map_err(db_error)?;
        let mut state = State::default();
        let now = now_ms();
        let mut next_seq = 0;
        for item in messages.iter() {
            let (key, value) = item.into_inner().map_err(unavailable)?;
            let seq = record::decode_key(&key).map_err(unavailable)?;
            match StoredRecord::decode(&value) {
                Ok(rec) => state.restore(seq, rec.priority, rec.not_before_ms, now),
                Err(e) => {
                    tracing::warn!(queue = %config.name, seq, error = %e, "undecodable stored message; it will be dead-lettered");
                    state.push_ready(seq, 0);
                }
            }
            next_seq = seq + 1;
        }
        let mut next_dead_seq = 0;
        for item in dead.iter() {
            let key = item.key().map_err(unavailable)?;
            next_dead_seq = record::decode_key(&key).map_err(unavailable)? + 1;
            state.dead_count += 1;
        }
        tracing::info!(
            queue = %config.name,
            recovered = state.depth(),
            dead_letters = state.dead_count,
            "embedded queue opened"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                messages,
                dead,
                state: std::sync::Mutex::new(state),
                notify: Notify::new(),
                next_seq: AtomicU64::new(next_seq),
                next_dead_seq: AtomicU64::new(next_dead_seq),
                removing_dead: tokio::sync::Mutex::new(()),
                config,
                epoch: Instant::now(),
            }),
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Storage is the source of truth: a panic while holding the lock cannot
        // lose a message, so a poisoned lock is used as is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Now, on both clocks of [`State`].
    fn now(&self) -> Now {
        Now {
            wall_ms: now_ms(),
            mono_ms: duration_ms(self.epoch.elapsed()),
        }
    }

    /// Leases up to `max` due messages and loads them; also returns how long
    /// until the next delayed message or lease falls due.
    fn take(self: &Arc<Self>, max: usize) -> Result<(Vec<Delivery>, Option<Duration>), QueueError> {
        let now = self.now();
        let lease_ms = duration_ms(self.config.lease);
        let (taken, next_due, expired) = {
            let mut state = self.lock();
            if state.closed {
                return Err(QueueError::Closed);
            }
            let expired = state.promote(now);
            let taken = state.lease(max, now.mono_ms + lease_ms);
            (taken, state.next_due(now), expired)
        };
        for (seq, attempt) in expired {
            self.persist_attempt(seq, attempt);
        }
        let mut out = Vec::with_capacity(taken.len());
        let mut interrupted = Vec::with_capacity(taken.len());
        let mut taken = taken.into_iter();
        while let Some((seq, token)) = taken.next() {
            {
                let mut state = self.lock();
                if let Some(mut rec) = state.held.get(seq).cloned() {
                    // Not written, so no attempt to record either: a crash
                    // loses the message itself.
                    rec.attempt = state.note_attempt(seq, token, rec.attempt);
                    drop(state);
                    let message = rec.to_message(seq);
                    let handle = settle::Handle::new(Arc::clone(self), seq, token, rec);
                    out.push(Delivery::new(message, Box::new(handle)));
                    continue;
                }
            }
            let raw = match self.messages.get(record::encode_key(seq)) {
                Ok(Some(raw)) => raw,
                Ok(None) => {
                    self.lock().forget(seq);
                    continue;
                }
                Err(e) => {
                    // Storage cannot be read: give this lease and the rest
                    // back untouched, and hand out what was loaded.
                    let mut state = self.lock();
                    for (seq, token) in std::iter::once((seq, token)).chain(taken) {
                        state.give_back(seq, token);
                    }
                    drop(state);
                    if out.is_empty() {
                        return Err(unavailable(e));
                    }
                    break;
                }
            };
            match StoredRecord::decode(&raw) {
                Ok(mut rec) => {
                    rec.attempt = self.lock().note_attempt(seq, token, rec.attempt);
                    let message = rec.to_message(seq);
                    let next = StoredRecord {
                        attempt: rec.attempt.saturating_add(1),
                        ..rec.clone()
                    };
                    interrupted.push((record::encode_key(seq), next.encode()));
                    let handle = settle::Handle::new(Arc::clone(self), seq, token, rec);
                    out.push(Delivery::new(message, Box::new(handle)));
                }
                Err(e) => self.quarantine(seq, &raw, &e),
            }
        }
        self.persist_interrupted(interrupted);
        Ok((out, next_due))
    }

    /// Stores each leased message as its next attempt, so that if the
    /// process dies during this one, the redelivery after a restart counts
    /// it: a message that kills its worker every time runs out of attempts
    /// instead of crashing workers forever. Flushed to the OS with its group,
    /// not synced: a crashing process is what it guards against (a power
    /// loss may cost the count, and a re-run is the at-least-once price),
    /// and a sync here would put a second fsync on every message's path. Not
    /// waited for: it is ordered before every settle, which writes the
    /// attempt it means, and a clean shutdown puts the attempts of abandoned
    /// work back (`close`).
    fn persist_interrupted(&self, records: Vec<([u8; 8], Vec<u8>)>) {
        if records.is_empty() {
            return;
        }
        let ks = self.messages.clone();
        let written = self.db.write_detached_flushed(move |ctx| {
            for (key, value) in records {
                ctx.insert(&ks, &key, value);
            }
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not record the attempts of leased messages");
        }
    }

    /// Writes every held message and syncs: what a sync promises covers them.
    /// Marked written inside the job, so a settle that comes after it deletes
    /// the key in a later group; they stay readable in memory until the commit.
    async fn write_held(self: &Arc<Self>) -> Result<(), QueueError> {
        let (inner, after) = (Arc::clone(self), Arc::clone(self));
        self.db
            .write_then(
                Wait::Durable,
                move |ctx| {
                    let written = inner.lock().held.mark_for_sync();
                    written
                        .into_iter()
                        .map(|(seq, rec)| {
                            ctx.insert(&inner.messages, &record::encode_key(seq), rec.encode());
                            seq
                        })
                        .collect::<Vec<u64>>()
                },
                move |seqs| after.lock().held.committed(&seqs),
            )
            .await
            .map_err(db_error)
    }

    /// A lease ran out: the next delivery counts as a new attempt, also after a restart.
    fn persist_attempt(&self, seq: u64, attempt: u32) {
        let ks = self.messages.clone();
        let result = self.db.write_detached(move |ctx| {
            let key = record::encode_key(seq);
            if let Ok(Some(raw)) = ctx.get(&ks, &key)
                && let Ok(mut rec) = StoredRecord::decode(&raw)
            {
                rec.attempt = rec.attempt.max(attempt);
                ctx.insert(&ks, &key, rec.encode());
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, seq, "could not record the attempt of an expired lease");
        }
    }
}

#[async_trait]
impl QueueBackend for EmbeddedQueue {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delayed_delivery: true,
            native_dead_letter: true,
            priority: true,
            fifo: true,
            max_payload: self.inner.config.max_payload,
        }
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<(), QueueError> {
        let limit = self.inner.config.max_payload;
        if message.body.len() > limit {
            return Err(QueueError::PayloadTooLarge {
                size: message.body.len(),
                limit,
            });
        }
        let message_durability = message.durability;
        let mut rec = StoredRecord::new(message);
        let priority = rec.priority;
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        if message_durability == Durability::Deferred {
            let mut state = self.inner.lock();
            // After `close`, nothing would write it: written now.
            if !state.closed {
                match state.held.hold(seq, rec) {
                    Ok(()) => {
                        state.push_ready(seq, priority);
                        drop(state);
                        self.inner.notify.notify_waiters();
                        return Ok(());
                    }
                    Err(over_budget) => rec = over_budget,
                }
            }
        }
        let ks = self.inner.messages.clone();
        let value = rec.encode();
        let inner = Arc::clone(&self.inner);
        self.inner
            .db
            .write_then(
                match message_durability {
                    Durability::Full => Wait::Durable,
                    Durability::Deferred => Wait::Flushed,
                },
                move |ctx| ctx.insert(&ks, &record::encode_key(seq), value),
                move |()| {
                    inner.lock().push_ready(seq, priority);
                    inner.notify.notify_waiters();
                },
            )
            .await
            .map_err(db_error)
    }

    async fn sync(&self) -> Result<(), QueueError> {
        self.inner.write_held().await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (taken, next_due) = self.inner.take(max.max(1))?;
            if !taken.is_empty() {
                return Ok(taken);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake = deadline;
            if let Some(until_due) = next_due {
                wake = wake.min(now + until_due.max(Duration::from_millis(1)));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        Ok(self.inner.lock().depth())
    }

    async fn dead_letter_depth(&self) -> Result<u64, QueueError> {
        Ok(self.inner.lock().dead_count)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(limit).await
    }

    async fn redrive(&self, limit: usize) -> Result<u64, QueueError> {
        self.inner.redrive(limit).await
    }

    async fn trim_dead_letters(&self, before_ms: u64) -> Result<u64, QueueError> {
        self.inner.trim_dead_letters(before_ms).await
    }

    async fn health(&self) -> Result<(), QueueError> {
        if self.inner.lock().closed {
            return Err(QueueError::Closed);
        }
        self.inner.db.probe().await.map_err(db_error)
    }

    /// Stops handing out messages. Work abandoned by the shutdown gets back
    /// the attempt it was delivered as: a shutdown is not a crash, and must
    /// not use up a message's attempts.
    async fn close(&self) {
        let abandoned = {
            let mut state = self.inner.lock();
            state.closed = true;
            state.leased_attempts()
        };
        self.inner.notify.notify_waiters();
        // Held messages whose callers went away, or that a worker still
        // runs, wait for the next start like any other.
        if let Err(e) = self.inner.write_held().await {
            tracing::warn!(error = %e, "could not write the held messages at shutdown");
        }
        if abandoned.is_empty() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let restored = self
            .inner
            .db
            .write(Wait::Durable, move |ctx| {
                for (seq, token, attempt) in abandoned {
                    // Settled meanwhile: its own write says what it means.
                    if !inner.lock().holds(seq, token) {
                        continue;
                    }
                    let key = record::encode_key(seq);
                    if let Ok(Some(raw)) = ctx.get(&inner.messages, &key)
                        && let Ok(mut rec) = StoredRecord::decode(&raw)
                    {
                        rec.attempt = attempt;
                        ctx.insert(&inner.messages, &key, rec.encode());
                    }
                }
            })
            .await;
        if let Err(e) = restored {
            tracing::warn!(error = %e, "could not restore the attempts of abandoned messages");
        }
    }
}
