//! The embedded result store, in the same fjall database as the embedded queue.
//!
//! Records are keyed by the correlation id's 16 bytes; OpenHQM's ids are
//! UUIDv7, so keys arrive in time order and expiry can scan from the oldest
//! (an outside producer's UUIDv4 is swept too; see [`expired_keys`]).
//! A value is `[expires_at_ms u64 BE][record JSON]`; every write moves the
//! expiry to `updated_at` + its [`lifetime`] (the TTL once finished), reads
//! treat an expired record as absent, and a sweeper deletes expired records
//! so storage stays bounded.
//!
//! Transitions run on the database's single writer thread, which makes their
//! read-modify-write atomic. `create` and `transition` wait until the write
//! is applied, not synced: in the API path the queue publish that follows in
//! the same group commit makes both durable together.
//!
//! Idempotency keys live in their own keyspace as `[expires_at_ms][claim
//! JSON]`, with an index keyed `[expires_at_ms][key]` so the sweeper finds
//! expired keys from the oldest without scanning the live ones.
//!
//! Waiters for a terminal status register by id; a transition to a terminal
//! status wakes that id's waiters only.
//!
//! PROCESSING is never written: a record in that status lives in memory
//! ([`Overlay`]) over its stored one until the next transition, which is
//! written. One process owns the database, so every reader and every holder
//! of a request is here to see it, and a move that would be lost in a crash
//! is one a crash undoes anyway: the message is redelivered, and meanwhile
//! the request reads as it did before it was taken (PENDING; or FAILED or
//! TIMEOUT for a redrive, as between the redrive and a worker taking it).
//! It saves one of the three writes of every request.
//!
//! A deferred request's PENDING record ([`ResultStore::create_deferred`]) is
//! held in memory too ([`held`]), until its first written transition or a
//! sync: a caller waiting for its answer often costs one write, its outcome.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openhqm_core::time::now_ms;
use openhqm_core::{CorrelationId, RequestRecord, RequestStatus};
use openhqm_embedded::{DbError, EmbeddedDb, Keyspace, Wait};
use tokio::task::JoinHandle;

use crate::waiters::Waiters;
use crate::{Claim, KeyClaim, ResultStore, StoreError, Transition, Update, apply_update, lifetime};
use held::Held;
use overlay::Overlay;

mod held;
mod overlay;

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStoreConfig {
    /// How long a record lives after its last change.
    pub ttl: Duration,
    /// How often expired records are deleted.
    pub sweep_interval: Duration,
}

/// The embedded result store.
pub struct EmbeddedStore {
    db: EmbeddedDb,
    results: Keyspace,
    keys: IdempotencyKeys,
    ttl_ms: u64,
    /// Callers of [`ResultStore::wait_terminal`], by id.
    waiters: Arc<Waiters>,
    /// Records in PROCESSING, and written ones until committed.
    overlay: Arc<Overlay>,
    /// Deferred requests' PENDING records, not written yet.
    held: Arc<Held>,
    sweeper: std::sync::Mutex<Option<JoinHandle<()>>>,
}

fn db_error(e: DbError) -> StoreError {
    match e {
        DbError::Closed => StoreError::Closed,
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// `[expires_at_ms][record JSON]`, the record living its [`lifetime`] under `ttl_ms`.
fn encode(record: &RequestRecord, ttl_ms: u64) -> Vec<u8> {
    let ttl = Duration::from_millis(ttl_ms);
    let lifetime_ms = u64::try_from(lifetime(record.status, ttl).as_millis()).unwrap_or(u64::MAX);
    let expires_at_ms = record.updated_at_ms.saturating_add(lifetime_ms);
    let mut out = expires_at_ms.to_be_bytes().to_vec();
    // Serializing our own record type cannot fail.
    serde_json::to_writer(&mut out, record).unwrap_or_default();
    out
}

/// Decodes a value; `Ok(None)` if it has expired by `now_ms`.
fn decode(id: CorrelationId, raw: &[u8], now_ms: u64) -> Result<Option<RequestRecord>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { id, reason };
    let (head, json) = raw
        .split_at_checked(8)
        .ok_or_else(|| corrupt("truncated".into()))?;
    let expires = u64::from_be_bytes(head.try_into().map_err(|_| corrupt("truncated".into()))?);
    if expires <= now_ms {
        return Ok(None);
    }
    RequestRecord::from_stored(json)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

impl EmbeddedStore {
    /// Opens the store in `db` and starts its sweeper on the current runtime.
    ///
    /// # Errors
    /// If the keyspace cannot be opened.
    pub fn open(db: EmbeddedDb, config: &EmbeddedStoreConfig) -> Result<Self, StoreError> {
        let results = db.hot_keyspace("results").map_err(db_error)?;
        let keys = IdempotencyKeys {
            claims: db.hot_keyspace("idempotency").map_err(db_error)?,
            by_expiry: db.keyspace("idempotency_expiry").map_err(db_error)?,
        };
        let ttl_ms = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
        let sweeper = tokio::spawn(sweep_forever(
            db.clone(),
            results.clone(),
            keys.clone(),
            ttl_ms,
            config.sweep_interval,
        ));
        Ok(Self {
            db,
            results,
            keys,
            ttl_ms,
            waiters: Arc::default(),
            overlay: Arc::default(),
            held: Arc::default(),
            sweeper: std::sync::Mutex::new(Some(sweeper)),
        })
    }

    /// Writes `record` unless one exists: a worker may already have taken the
    /// message (PROCESSING) or written a later status (create and publish run
    /// concurrently), which PENDING must not overwrite.
    async fn put_new(&self, id: CorrelationId, record: RequestRecord) -> Result<(), StoreError> {
        let value = encode(&record, self.ttl_ms);
        let ks = self.results.clone();
        let overlay = Arc::clone(&self.overlay);
        self.db
            .write(Wait::Applied, move |ctx| {
                if overlay.current(id).is_some() {
                    return Ok(());
                }
                match ctx.get(&ks, id.as_bytes()) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => {
                        ctx.insert(&ks, id.as_bytes(), value);
                        Ok(())
                    }
                    Err(e) => Err(StoreError::Unavailable(e.to_string())),
                }
            })
            .await
            .map_err(db_error)?
    }
}

/// Keys of records expired at `now_ms`.
///
/// A record expires `ttl` after its last update, so none created in the last
/// `ttl` can have expired: since v7 keys sort by creation time, the scan stops
/// at the first of those and only walks the old end of the keyspace.
///
/// Ids that are not time-ordered (an outside producer's UUIDv4 on a Redis
/// queue) sort anywhere. Those below the horizon are met by that scan; a
/// second scan walks all keys above the current time, where no v7 id of
/// ours can be and almost every other id is. The few in between are met
/// once the horizon passes them.
pub fn expired_keys(results: &Keyspace, ttl_ms: u64, now_ms: u64) -> Vec<[u8; 16]> {
    let horizon = now_ms.saturating_sub(ttl_ms);
    let mut expired = Vec::new();
    // `false` once the scan should stop.
    let mut collect = |key: &[u8], value: &[u8], stop_young: bool| {
        let Ok(bytes) = <[u8; 16]>::try_from(key) else {
            return true;
        };
        // Only a v7 id sorts by its time (v1 and v6 carry one too, but
        // elsewhere in the key).
        let id = CorrelationId::from_bytes(bytes);
        if stop_young && id.is_time_ordered() && id.timestamp_ms().is_some_and(|ts| ts > horizon) {
            return false;
        }
        if expires_at(value).is_some_and(|e| e <= now_ms) {
            expired.push(bytes);
        }
        true
    };
    let above = above_v7_ids_of(now_ms);
    for item in results.range(..above) {
        let Ok((key, value)) = item.into_inner() else {
            break;
        };
        if !collect(&key, &value, true) {
            break;
        }
    }
    for item in results.range(above..) {
        let Ok((key, value)) = item.into_inner() else {
            break;
        };
        collect(&key, &value, false);
    }
    expired
}

/// The smallest key above every v7 id created up to `now_ms`: a v7 id starts
/// with its 48-bit millisecond timestamp.
fn above_v7_ids_of(now_ms: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..6].copy_from_slice(&(now_ms + 1).to_be_bytes()[2..]);
    key
}

fn expires_at(value: &[u8]) -> Option<u64> {
    value.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

/// The idempotency keyspaces: claims by key, and the expiry index.
#[derive(Clone)]
struct IdempotencyKeys {
    claims: Keyspace,
    by_expiry: Keyspace,
}

fn expiry_key(expires_at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = expires_at_ms.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// Index entries of idempotency keys expired at `now_ms`, oldest first.
fn expired_claims(by_expiry: &Keyspace, now_ms: u64) -> Vec<Vec<u8>> {
    let mut expired = Vec::new();
    for item in by_expiry.iter() {
        let Ok(key) = item.key() else { break };
        if expires_at(&key).is_none_or(|e| e > now_ms) {
            break;
        }
        expired.push(key.to_vec());
    }
    expired
}

async fn sweep_keys(db: &EmbeddedDb, keys: &IdempotencyKeys) -> Result<(), DbError> {
    let index = keys.by_expiry.clone();
    let Ok(expired) = tokio::task::spawn_blocking(move || expired_claims(&index, now_ms())).await
    else {
        return Ok(());
    };
    if expired.is_empty() {
        return Ok(());
    }
    let keys = keys.clone();
    db.write(Wait::Applied, move |ctx| {
        for entry in expired {
            ctx.remove(&keys.by_expiry, &entry);
            let key = &entry[8..];
            // The claim itself goes only if this index entry is still its own.
            let same = ctx
                .get(&keys.claims, key)
                .ok()
                .flatten()
                .is_some_and(|v| v.get(..8) == entry.get(..8));
            if same {
                ctx.remove(&keys.claims, key);
            }
        }
    })
    .await
}

async fn sweep_forever(
    db: EmbeddedDb,
    results: Keyspace,
    keys: IdempotencyKeys,
    ttl_ms: u64,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep_keys(&db, &keys).await {
            Ok(()) => {}
            Err(DbError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "expiring idempotency keys failed"),
        }
        let ks = results.clone();
        let Ok(expired) =
            tokio::task::spawn_blocking(move || expired_keys(&ks, ttl_ms, now_ms())).await
        else {
            continue;
        };
        if expired.is_empty() {
            continue;
        }
        let count = expired.len();
        let ks = results.clone();
        let now = now_ms();
        // Re-check inside the writer: a record may have been updated since the scan.
        let result = db
            .write(Wait::Applied, move |ctx| {
                for key in expired {
                    let still_expired = ctx
                        .get(&ks, &key)
                        .ok()
                        .flatten()
                        .is_some_and(|v| expires_at(&v).is_some_and(|e| e <= now));
                    if still_expired {
                        ctx.remove(&ks, &key);
                    }
                }
            })
            .await;
        match result {
            Ok(()) => tracing::debug!(count, "expired results deleted"),
            Err(DbError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "expiring results failed"),
        }
    }
}

#[async_trait]
impl ResultStore for EmbeddedStore {
    async fn create(&self, record: RequestRecord) -> Result<(), StoreError> {
        self.put_new(record.correlation_id, record).await
    }

    async fn create_deferred(&self, record: RequestRecord) -> Result<(), StoreError> {
        let id = record.correlation_id;
        // A worker may have taken the message already (a keyed request is
        // published first): then PENDING is not its state any more.
        let mut unreadable = None;
        self.held.hold(record, || {
            self.overlay.visible(id).is_some()
                || self
                    .results
                    .get(id.as_bytes())
                    .map_err(|e| unreadable = Some(e))
                    .is_ok_and(|raw| raw.is_some())
        });
        match unreadable {
            Some(e) => Err(StoreError::Unavailable(e.to_string())),
            None => Ok(()),
        }
    }

    /// Writes the held PENDING records (those with no stored state yet), then syncs.
    async fn sync(&self) -> Result<(), StoreError> {
        let (ks, ttl_ms) = (self.results.clone(), self.ttl_ms);
        let (held, after) = (Arc::clone(&self.held), Arc::clone(&self.held));
        self.db
            .write_then(
                Wait::Durable,
                move |ctx| {
                    let records = held.mark_for_sync();
                    let mut ids = Vec::with_capacity(records.len());
                    let mut unreadable = None;
                    for record in records {
                        let id = record.correlation_id;
                        match ctx.get(&ks, id.as_bytes()) {
                            // Written since: a newer state than PENDING.
                            Ok(Some(_)) => ids.push(id),
                            Ok(None) => {
                                ctx.insert(&ks, id.as_bytes(), encode(&record, ttl_ms));
                                ids.push(id);
                            }
                            Err(e) => {
                                // Held still, and the sync is not confirmed.
                                held.unmark(id);
                                unreadable = Some(StoreError::Unavailable(e.to_string()));
                            }
                        }
                    }
                    (ids, unreadable)
                },
                move |(ids, unreadable)| {
                    after.committed(&ids);
                    unreadable.map_or(Ok(()), Err)
                },
            )
            .await
            .map_err(db_error)?
    }

    async fn get(&self, id: CorrelationId) -> Result<Option<RequestRecord>, StoreError> {
        if let Some(record) = self.overlay.visible(id) {
            return Ok(Some(record));
        }
        // Looked up before storage: a held record leaves only once the write
        // that replaces it is committed, so one of the two has it.
        let held = self.held.get(id);
        let raw = self
            .results
            .get(id.as_bytes())
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        match raw {
            Some(raw) => decode(id, &raw, now_ms()),
            None => Ok(held),
        }
    }

    async fn transition(
        &self,
        id: CorrelationId,
        update: Update,
    ) -> Result<Transition, StoreError> {
        let ks = self.results.clone();
        let ttl_ms = self.ttl_ms;
        let reopening = update.redrive.is_some();
        let waiters = Arc::clone(&self.waiters);
        let (overlay, after_commit) = (Arc::clone(&self.overlay), Arc::clone(&self.overlay));
        let (held, replaced) = (Arc::clone(&self.held), Arc::clone(&self.held));
        self.db
            .write_then(
                Wait::Applied,
                move |ctx| {
                    let now = now_ms();
                    let stored = match overlay.current(id) {
                        Some(record) => Ok(Some(record)),
                        None => ctx.get(&ks, id.as_bytes()).map(|raw| match raw {
                            // An unreadable record (a downgrade, a damaged
                            // value) is replaced: refusing would leave its
                            // message to be redelivered, never settled, for
                            // as long as it stays.
                            Some(raw) => decode(id, &raw, now).unwrap_or_else(|e| {
                                tracing::warn!(correlation_id = %id, error = %e, "unreadable result record replaced");
                                None
                            }),
                            // Never written: its held PENDING record, if deferred.
                            None => held.get(id),
                        }),
                    };
                    let current = stored.map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    let outcome = apply_update(id, current, update, now);
                    if let Transition::Applied(record) = &outcome {
                        if record.status == RequestStatus::Processing {
                            overlay.set(record.clone());
                        } else {
                            ctx.insert(&ks, id.as_bytes(), encode(record, ttl_ms));
                            overlay.supersede(id);
                        }
                    }
                    Ok(outcome)
                },
                move |outcome: Result<Transition, StoreError>| {
                    // On the writer thread: a finished request's waiters are
                    // woken even if this caller is gone.
                    if let Ok(Transition::Applied(record)) = &outcome {
                        if record.status != RequestStatus::Processing {
                            after_commit.committed(id);
                            replaced.replaced(id);
                        }
                        if record.status.is_terminal() {
                            waiters.finish(record);
                        } else if reopening {
                            waiters.reopen(id);
                        }
                    }
                    outcome
                },
            )
            .await
            .map_err(db_error)?
    }

    async fn wait_terminal(
        &self,
        id: CorrelationId,
        timeout: Duration,
    ) -> Result<Option<RequestRecord>, StoreError> {
        self.waiters
            .wait_terminal(id, timeout, || self.get(id))
            .await
    }

    async fn claim_key(
        &self,
        key: &str,
        claim: KeyClaim,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let keys = self.keys.clone();
        let key = key.as_bytes().to_vec();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.db
            .write(Wait::Applied, move |ctx| {
                let now = now_ms();
                let current = ctx
                    .get(&keys.claims, &key)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                if let Some(raw) = current
                    && expires_at(&raw).is_some_and(|e| e > now)
                {
                    let existing =
                        serde_json::from_slice::<KeyClaim>(raw.get(8..).unwrap_or_default())
                            .map_err(|e| {
                                StoreError::Unavailable(format!("corrupt idempotency key: {e}"))
                            })?;
                    return Ok(Claim::Existing(existing));
                }
                let expires = now.saturating_add(ttl_ms);
                let mut value = expires.to_be_bytes().to_vec();
                serde_json::to_writer(&mut value, &claim).unwrap_or_default();
                ctx.insert(&keys.claims, &key, value);
                ctx.insert(&keys.by_expiry, &expiry_key(expires, &key), Vec::new());
                Ok(Claim::New)
            })
            .await
            .map_err(db_error)?
    }

    async fn release_key(&self, key: &str, id: CorrelationId) -> Result<(), StoreError> {
        let keys = self.keys.clone();
        let key = key.as_bytes().to_vec();
        self.db
            .write(Wait::Applied, move |ctx| {
                let Ok(Some(raw)) = ctx.get(&keys.claims, &key) else {
                    return;
                };
                let ours = serde_json::from_slice::<KeyClaim>(raw.get(8..).unwrap_or_default())
                    .is_ok_and(|c| c.correlation_id == id);
                if ours {
                    ctx.remove(&keys.claims, &key);
                    if let Some(expires) = expires_at(&raw) {
                        ctx.remove(&keys.by_expiry, &expiry_key(expires, &key));
                    }
                }
            })
            .await
            .map_err(db_error)
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.db.probe().await.map_err(db_error)
    }

    async fn close(&self) {
        let sweeper = self
            .sweeper
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        // The queue writes its held messages at shutdown; their records too.
        if let Err(e) = ResultStore::sync(self).await {
            tracing::warn!(error = %e, "could not write the held records at shutdown");
        }
    }
}

#[cfg(test)]
mod tests;
