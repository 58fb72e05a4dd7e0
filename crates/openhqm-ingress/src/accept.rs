//! Accepting a request: admission, idempotency, then store and publish.
//! Shared by the submit API and the passthrough (sidecar) ingress, so both
//! keep the same promise: a 202 (or a wait) only for a request that is stored.

use std::sync::Arc;

use openhqm_core::time::now_ms;
use openhqm_core::{CorrelationId, Envelope, RequestRecord};
use openhqm_queue::{Durability, OutgoingMessage, QueueError};
use openhqm_store::{Claim, KeyClaim, ResultStore};

use crate::idempotency::Keyed;
use crate::{ApiState, Problem};

/// What accepting did.
#[derive(Debug)]
pub(crate) enum Accepted {
    /// Stored and published now.
    New(RequestRecord),
    /// The idempotency key already stands for this request.
    Replayed(RequestRecord),
}

impl Accepted {
    pub(crate) fn record(&self) -> &RequestRecord {
        match self {
            Self::New(r) | Self::Replayed(r) => r,
        }
    }
}

/// Accepts `envelope` (its id and timestamp already set at `now`), published
/// `durability`: [`Durability::Deferred`] only for a caller that waits for the
/// answer and syncs the queue before any `202` (see [`crate::sidecar`]).
///
/// A repeat of an idempotency key is answered before admission control: it
/// adds no work. A keyed request is published before its status record is
/// created, so a concurrent repeat never finds a record for a message that
/// failed to publish.
pub(crate) async fn accept(
    state: &ApiState,
    envelope: Envelope,
    priority: u8,
    keyed: Option<Keyed>,
    now: u64,
    durability: Durability,
) -> Result<Accepted, Problem> {
    let retry_after = state.config.retry_after_secs;
    let id = envelope.correlation_id;
    if let Some(keyed) = &keyed
        && let Some(replay) = claim(state, keyed, id).await?
    {
        return Ok(Accepted::Replayed(replay));
    }
    // From here on, a refusal gives the key back.
    let refuse = async |problem: Problem| {
        if let Some(keyed) = &keyed
            && let Err(e) = state.store.release_key(&keyed.digest, id).await
        {
            tracing::warn!(correlation_id = %id, error = %e, "could not release the idempotency key of a request that was not stored");
        }
        Err(problem)
    };
    if let Err((pending, limit)) = state.admission.reserve() {
        state.metrics_admission_refused();
        return refuse(Problem::overloaded(pending, limit, retry_after)).await;
    }
    let encoded = match envelope.to_json() {
        Ok(e) => e,
        Err(e) => {
            state.admission.unreserve();
            return refuse(Problem::invalid_request(e.to_string())).await;
        }
    };
    let message = OutgoingMessage {
        body: encoded.into(),
        attributes: Default::default(),
        priority,
        durability,
    };
    let record = RequestRecord::pending(id, now);
    let (created, published) = if keyed.is_some() {
        // Run apart from this handler: a client that disconnects between
        // the two writes must not leave a stored message without its record,
        // whose key would later be taken over as stale and the work run twice.
        let (queue, store, pending) = (
            Arc::clone(&state.queue),
            Arc::clone(&state.store),
            record.clone(),
        );
        let both = tokio::spawn(async move {
            let published = queue.publish(message).await;
            let created = match published {
                // Written after the message, so not synced with it: synced
                // before the 202, or a crash could leave the key standing
                // for no record, to be taken over as stale and run twice.
                // A deferred publish is synced (with the store) before any
                // 202 it gets.
                Ok(()) => match create(store.as_ref(), pending, durability).await {
                    Ok(()) if durability == Durability::Full => store.sync().await,
                    other => other,
                },
                Err(_) => Ok(()),
            };
            (created, published)
        });
        both.await.unwrap_or_else(|e| {
            let lost = || format!("accepting the request stopped: {e}");
            (
                Err(openhqm_store::StoreError::Unavailable(lost())),
                Err(QueueError::Unavailable(lost())),
            )
        })
    } else {
        // Both writes start together; for the embedded engine they share one
        // group commit.
        tokio::join!(
            create(state.store.as_ref(), record.clone(), durability),
            state.queue.publish(message)
        )
    };
    if let Err(e) = published {
        state.queue_metrics.publish_error.inc();
        state.admission.unreserve();
        // Unkeyed, the status record was written beside the message: undone,
        // even if its write was not confirmed either (a stalled server may
        // still apply it). Keyed, it is written only after a publish.
        if keyed.is_none() {
            withdraw(state, &record).await;
        }
        if let QueueError::PayloadTooLarge { .. } = e {
            // Refused before anything was stored: the key is free again.
            return refuse(Problem::too_large(state.config.max_body_size)).await;
        }
        // Any other failure may have come after the broker stored the message
        // (a timeout, a dropped connection), so the client is not told that
        // nothing was stored. A key keeps standing for this id: a retry with
        // it finds the request once a worker runs it, or takes the key over
        // when the claim is stale; releasing it now could run it twice.
        tracing::warn!(correlation_id = %id, error = %e, "publish not confirmed; answered 503");
        return Err(Problem::unconfirmed("queue", retry_after));
    }
    state.queue_metrics.publish_ok.inc();
    if let Err(e) = created {
        // The message is stored and will be processed; the worker records
        // the status when it takes it. A 503 here would make the client send it
        // again and the backend run it twice, so the answer is still 202.
        // (Keyed, the record may be written but not synced: the key then
        // stands only until a crash.)
        tracing::warn!(correlation_id = %id, error = %e, "status record not stored or not synced; the worker will record it");
    }
    tracing::debug!(correlation_id = %id, "request accepted");
    Ok(Accepted::New(record))
}

/// Creates the status record of a message published `durability`: a
/// deferred one's need not be stored before the message is (see
/// [`ResultStore::create_deferred`]).
async fn create(
    store: &dyn ResultStore,
    record: RequestRecord,
    durability: Durability,
) -> Result<(), openhqm_store::StoreError> {
    match durability {
        Durability::Full => store.create(record).await,
        Durability::Deferred => store.create_deferred(record).await,
    }
}

/// Cancels the status record written beside a message whose publish failed
/// or was not confirmed: the client got no id, and if the message was stored
/// after all, a worker drops it as cancelled instead of running a request
/// the client was told to send again. Cancelling only moves PENDING, so a
/// worker that already took the message keeps it.
async fn withdraw(state: &ApiState, pending: &RequestRecord) {
    if let Err(e) = state.store.withdraw(pending).await {
        let id = pending.correlation_id;
        tracing::warn!(correlation_id = %id, error = %e, "could not withdraw the record of a request whose publish failed");
    }
}

/// How long a claim may stand for a request that is not stored before it is
/// taken over: accepting takes milliseconds, so an older claim without a
/// record was left by a process that died between claim and publish.
const STALE_CLAIM_MS: u64 = 30_000;

/// Claims the key for `id`; `Some(record)` if it already stood for a request.
async fn claim(
    state: &ApiState,
    keyed: &Keyed,
    id: CorrelationId,
) -> Result<Option<RequestRecord>, Problem> {
    match claim_once(state, keyed, id).await? {
        Claimed::Stale(old) => {
            tracing::info!(correlation_id = %id, stale = %old, "taking over an idempotency key whose request was never stored");
            if let Err(e) = state.store.release_key(&keyed.digest, old).await {
                tracing::warn!(correlation_id = %id, error = %e, "could not release a stale idempotency key; answered 503");
                return Err(Problem::unavailable(
                    "result store",
                    state.config.retry_after_secs,
                ));
            }
            match claim_once(state, keyed, id).await? {
                Claimed::Free => Ok(None),
                Claimed::Replay(record) => Ok(Some(*record)),
                Claimed::Stale(_) => Err(Problem::idempotency_key_in_use(
                    state.config.retry_after_secs,
                )),
            }
        }
        Claimed::Free => Ok(None),
        Claimed::Replay(record) => Ok(Some(*record)),
    }
}

enum Claimed {
    /// The key is ours now.
    Free,
    /// The key stands for this stored request.
    Replay(Box<RequestRecord>),
    /// The key stands for a request that was never stored.
    Stale(CorrelationId),
}

async fn claim_once(
    state: &ApiState,
    keyed: &Keyed,
    id: CorrelationId,
) -> Result<Claimed, Problem> {
    let retry_after = state.config.retry_after_secs;
    let unavailable = |e: openhqm_store::StoreError| {
        tracing::warn!(correlation_id = %id, error = %e, "idempotency key check failed; answered 503");
        Problem::unavailable("result store", retry_after)
    };
    let claim = KeyClaim {
        correlation_id: id,
        fingerprint: keyed.fingerprint.clone(),
    };
    let ttl = state.config.idempotency.ttl;
    match state
        .store
        .claim_key(&keyed.digest, claim, ttl)
        .await
        .map_err(unavailable)?
    {
        Claim::New => Ok(Claimed::Free),
        Claim::Existing(existing) => {
            match state
                .store
                .get(existing.correlation_id)
                .await
                .map_err(unavailable)?
            {
                Some(_) if existing.fingerprint != keyed.fingerprint => {
                    Err(Problem::idempotency_key_reused())
                }
                Some(record) => {
                    tracing::debug!(correlation_id = %record.correlation_id, "idempotent repeat");
                    Ok(Claimed::Replay(Box::new(record)))
                }
                None => {
                    let age = existing
                        .correlation_id
                        .timestamp_ms()
                        .map_or(u64::MAX, |t| now_ms().saturating_sub(t));
                    if age > STALE_CLAIM_MS {
                        Ok(Claimed::Stale(existing.correlation_id))
                    } else if existing.fingerprint != keyed.fingerprint {
                        // Mid-way or not, it is another request's key.
                        Err(Problem::idempotency_key_reused())
                    } else {
                        // Claimed but not stored yet: the first request is mid-way.
                        Err(Problem::idempotency_key_in_use(retry_after))
                    }
                }
            }
        }
    }
}

/// Refuses a request at once when the listener is at `server.max_pending`,
/// before its body is read: an overloaded listener buffers no bodies it
/// would refuse anyway. A keyed request is let through to be read: its key
/// may stand for a request already accepted, whose repeat adds no work and
/// is answered whatever the load.
pub(crate) fn refuse_early(
    state: &ApiState,
    headers: &axum::http::HeaderMap,
) -> Result<(), Problem> {
    // Only a key that is deduplicated (the caller says who it is) can be a
    // repeat answered without adding work.
    let identified = crate::idempotency::identity(&state.config.idempotency, headers).is_some();
    if headers.contains_key(crate::idempotency::HEADER) && identified {
        return Ok(());
    }
    match state.admission.is_full() {
        Some((pending, limit)) => {
            state.metrics_admission_refused();
            Err(Problem::overloaded(
                pending,
                limit,
                state.config.retry_after_secs,
            ))
        }
        None => Ok(()),
    }
}

/// A new request's id and acceptance time.
pub(crate) fn stamp() -> (CorrelationId, u64) {
    (CorrelationId::new(), now_ms())
}
