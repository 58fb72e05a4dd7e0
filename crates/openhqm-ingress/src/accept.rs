//! Accepting a request: admission, idempotency, then store and publish.
//! Shared by the submit API and the passthrough (sidecar) ingress, so both
//! keep the same promise: a 202 (or a wait) only for a request that is stored.

use openhqm_core::time::now_ms;
use openhqm_core::{CorrelationId, Envelope, RequestRecord};
use openhqm_queue::{OutgoingMessage, QueueError};
use openhqm_store::{Claim, KeyClaim};

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

/// Accepts `envelope` (its id and timestamp already set at `now`).
pub(crate) async fn accept(
    state: &ApiState,
    mut envelope: Envelope,
    priority: u8,
    keyed: Option<Keyed>,
    now: u64,
) -> Result<Accepted, Problem> {
    let retry_after = state.config.retry_after_secs;
    if let Err((pending, limit)) = state.admission.check() {
        state.metrics_admission_refused();
        return Err(Problem::overloaded(pending, limit, retry_after));
    }
    let id = envelope.correlation_id;
    if let Some(keyed) = &keyed {
        if let Some(replay) = claim(state, keyed, id).await? {
            return Ok(Accepted::Replayed(replay));
        }
        envelope.idempotency_key = Some(keyed.key.clone());
    }
    let encoded = envelope
        .to_json()
        .map_err(|e| Problem::invalid_request(e.to_string()))?;
    let message = OutgoingMessage {
        body: encoded.into(),
        attributes: Default::default(),
        priority,
    };
    let record = RequestRecord::pending(id, now);
    // Both writes start together; for the embedded engine they share one group commit.
    let (created, published) = tokio::join!(
        state.store.create(record.clone()),
        state.queue.publish(message)
    );
    if let Err(e) = published {
        state.queue_metrics.publish_error.inc();
        if let Some(keyed) = &keyed
            && let Err(e) = state.store.release_key(&keyed.digest, id).await
        {
            tracing::warn!(correlation_id = %id, error = %e, "could not release the idempotency key of a request that was not stored");
        }
        return Err(match e {
            QueueError::PayloadTooLarge { .. } => Problem::too_large(state.config.max_body_size),
            other => {
                tracing::warn!(correlation_id = %id, error = %other, "publish failed; answered 503");
                Problem::unavailable("queue", retry_after)
            }
        });
    }
    state.queue_metrics.publish_ok.inc();
    state.admission.accepted();
    if let Err(e) = created {
        // The message is stored and will be processed (the worker recreates the
        // status), but the client cannot follow it yet: say so with a 503.
        tracing::warn!(correlation_id = %id, error = %e, "status record not stored; answered 503");
        return Err(Problem::unavailable("result store", retry_after));
    }
    tracing::debug!(correlation_id = %id, "request accepted");
    Ok(Accepted::New(record))
}

/// Claims the key for `id`; `Some(record)` if it already stood for a request.
async fn claim(
    state: &ApiState,
    keyed: &Keyed,
    id: CorrelationId,
) -> Result<Option<RequestRecord>, Problem> {
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
        Claim::New => Ok(None),
        Claim::Existing(existing) if existing.fingerprint != keyed.fingerprint => {
            Err(Problem::idempotency_key_reused())
        }
        Claim::Existing(existing) => {
            match state
                .store
                .get(existing.correlation_id)
                .await
                .map_err(unavailable)?
            {
                Some(record) => {
                    tracing::debug!(correlation_id = %record.correlation_id, "idempotent repeat");
                    Ok(Some(record))
                }
                // Claimed but not stored yet: the first request is mid-way.
                None => Err(Problem::idempotency_key_in_use(retry_after)),
            }
        }
    }
}

/// A new request's id and acceptance time.
pub(crate) fn stamp() -> (CorrelationId, u64) {
    (CorrelationId::new(), now_ms())
}
