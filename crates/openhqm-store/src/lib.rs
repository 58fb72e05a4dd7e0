//! The result store: status and result of every request until it expires.
//!
//! Stores enforce the status transition table of
//! [`RequestStatus::can_become`](openhqm_core::RequestStatus::can_become) atomically:
//! a transition is a read-modify-write that no other writer can interleave
//! with, and status and result are written together, so a reader never sees
//! COMPLETED without its result.

#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "redis")]
pub mod redis;
#[doc(hidden)]
pub mod scenarios;
mod waiters;

use std::time::Duration;

use async_trait::async_trait;
use openhqm_core::{CorrelationId, Hold, RequestRecord, RequestStatus, ResultData};

/// Errors from a result store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed.
    #[error("result store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be read.
    #[error("corrupt record for {id}: {reason}")]
    Corrupt {
        /// Whose record.
        id: CorrelationId,
        /// What is wrong with it.
        reason: String,
    },
    /// The store refuses this client's credentials or permissions:
    /// retrying will not help until the configuration changes.
    #[error("result store refused access: {0}")]
    Refused(String),
    /// The store is shut down.
    #[error("result store is closed")]
    Closed,
}

impl StoreError {
    /// Whether the same call might succeed later.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The least time an unfinished request's record is kept after its last
/// change, whatever the configured TTL: a request waiting out a long backlog,
/// or running long, must not read as unknown (404) and reappear when it
/// finishes. (A record whose publish failed is finished at once by the
/// ingress; only if that write fails too does it linger this long.)
pub const UNFINISHED_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a record in `status` lives after its last change: `ttl` once the
/// request is finished, at least [`UNFINISHED_LIFETIME`] before. A CANCELLED
/// record lives as long: its message may still be queued, and the record
/// is what tells the worker that takes it to drop it.
#[must_use]
pub fn lifetime(status: RequestStatus, ttl: Duration) -> Duration {
    if status.is_terminal() && status != RequestStatus::Cancelled {
        ttl
    } else {
        ttl.max(UNFINISHED_LIFETIME)
    }
}

/// A requested status change.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The new status.
    pub to: RequestStatus,
    /// Delivery attempts started so far, if known.
    pub attempts: Option<u32>,
    /// The result or error to keep with the new status (boxed as in
    /// [`RequestRecord`]).
    pub outcome: Option<Box<ResultData>>,
    /// The redrive whose message carries this update (its time, the queue's
    /// `REDRIVEN` attribute): it may also take a failed request back to
    /// PROCESSING ([`RequestStatus::can_be_redriven`]), once per redrive.
    pub redrive: Option<u64>,
    /// For a move to PROCESSING: the delivery taking the request. Refused
    /// while another message's hold lasts.
    pub hold: Option<Hold>,
}

impl Update {
    /// A bare status change.
    #[must_use]
    pub fn to(status: RequestStatus) -> Self {
        Self {
            to: status,
            attempts: None,
            outcome: None,
            redrive: None,
            hold: None,
        }
    }
}

/// What a transition did.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The record now reads as returned.
    Applied(RequestRecord),
    /// The table forbids it; the record is unchanged (e.g. already finished).
    Refused {
        /// The status that stays.
        current: RequestStatus,
    },
    /// A move to PROCESSING while another message's delivery holds the
    /// request; the record is unchanged.
    Held(Hold),
}

/// What an idempotency key stands for: the request it created, and a
/// fingerprint of what was asked, so a reuse with other content is caught.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyClaim {
    /// The request the key created.
    pub correlation_id: CorrelationId,
    /// A digest of the request (method, path, query, body).
    pub fingerprint: String,
}

/// The answer to [`ResultStore::claim_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and now stands for the given claim.
    New,
    /// The key was taken; this is what it stands for.
    Existing(KeyClaim),
}

/// Where request status and results live. Object safe.
#[async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// Records a newly accepted request (status PENDING).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if it was not stored.
    async fn create(&self, record: RequestRecord) -> Result<(), StoreError>;

    /// Records a request whose message is published deferred (its caller
    /// waits for the answer): it need not be stored until the next
    /// [`sync`](Self::sync) or [`close`](Self::close), and a crash before
    /// then loses it (a worker that takes its message after a restart
    /// records the request anew). The embedded store holds it in memory;
    /// the default stores it as [`create`](Self::create) does.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if it was not recorded.
    async fn create_deferred(&self, record: RequestRecord) -> Result<(), StoreError> {
        self.create(record).await
    }

    /// Makes every write made before this call durable (on the embedded
    /// engine: synced, as a message published in full is). For a record
    /// written apart from its message (an idempotent request's, after the
    /// publish): a `202` must not outlive it in a crash, or the key would
    /// stand for no request. The default suits stores whose writes are as
    /// durable as they get once confirmed (Redis).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if it cannot be confirmed.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The record, or `None` if unknown or expired.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the store cannot answer (never `None` for that).
    async fn get(&self, id: CorrelationId) -> Result<Option<RequestRecord>, StoreError>;

    /// Changes status (and result) if the transition table allows it. A
    /// missing record (expired, or written by a producer that bypassed the
    /// API) is created with the new status (by the embedded store, which
    /// keeps PROCESSING in memory, only once it leaves PROCESSING).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if nothing was written.
    async fn transition(&self, id: CorrelationId, update: Update)
    -> Result<Transition, StoreError>;

    /// Cancels `pending`, the record this process just created, if it still
    /// reads exactly so: its publish was not confirmed, and if the message
    /// landed after all a worker must drop it. A record a worker already
    /// moved is left alone. Stores whose writes travel on a connection
    /// (Redis) send it as one atomic command behind the `create`, so it
    /// lands before a worker can read the record even when the server
    /// stalled and answers none of them in time.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if it could not be sent or confirmed.
    async fn withdraw(&self, pending: &RequestRecord) -> Result<(), StoreError> {
        let cancel = Update::to(RequestStatus::Cancelled);
        self.transition(pending.correlation_id, cancel)
            .await
            .map(drop)
    }

    /// Waits until the request reaches a terminal status, without polling:
    /// stores wake waiters when a transition to a terminal status is written,
    /// in this process or (for shared stores) any other. Returns the record
    /// once it is terminal (at once if it already is), or `None` if it is not
    /// terminal when `timeout` runs out.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the store cannot answer.
    async fn wait_terminal(
        &self,
        id: CorrelationId,
        timeout: Duration,
    ) -> Result<Option<RequestRecord>, StoreError>;

    /// Takes an idempotency key for `claim` unless it is already taken,
    /// atomically: of two concurrent claims exactly one gets
    /// [`Claim::New`]. The key is an opaque digest chosen by the caller
    /// (scope and key together); it expires after `ttl`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the store cannot answer.
    async fn claim_key(
        &self,
        key: &str,
        claim: KeyClaim,
        ttl: Duration,
    ) -> Result<Claim, StoreError>;

    /// Frees a key taken for `id` (its request could not be stored), so a
    /// retry of the same request can proceed. A key now held for another
    /// request is left alone.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the store cannot answer.
    async fn release_key(&self, key: &str, id: CorrelationId) -> Result<(), StoreError>;

    /// Proves the store can write right now.
    ///
    /// # Errors
    /// Why it cannot.
    async fn health(&self) -> Result<(), StoreError>;

    /// Stops background work.
    async fn close(&self);
}

/// Applies `update` to `current` per the transition table; shared by every
/// backend so that they agree exactly.
#[must_use]
pub fn apply_update(
    id: CorrelationId,
    current: Option<RequestRecord>,
    update: Update,
    now_ms: u64,
) -> Transition {
    let mut record = match current {
        Some(rec) if !(rec.status.can_become(update.to) || reopens(&rec, &update)) => {
            return Transition::Refused {
                current: rec.status,
            };
        }
        Some(rec) => {
            if let Some(hold) = held_by_another(&rec, &update, now_ms) {
                return Transition::Held(hold.clone());
            }
            rec
        }
        None => {
            let submitted = id
                .timestamp_ms()
                .filter(|ts| *ts <= now_ms)
                .unwrap_or(now_ms);
            RequestRecord::pending(id, submitted)
        }
    };
    record.status = update.to;
    record.updated_at_ms = now_ms;
    if let Some(attempts) = update.attempts {
        record.attempts = attempts;
    }
    match update.outcome {
        Some(outcome) => record.outcome = Some(outcome),
        // A cancelled request has no answer: an earlier attempt's outcome
        // (kept while it waited for a retry) is not its result.
        None if update.to == RequestStatus::Cancelled => record.outcome = None,
        None => {}
    }
    if update.redrive.is_some() {
        record.redriven_at_ms = update.redrive;
    }
    record.held_by = update
        .hold
        .filter(|_| update.to == RequestStatus::Processing);
    Transition::Applied(record)
}

/// The hold of another message's delivery, still processing the request
/// `update` would take.
fn held_by_another<'a>(
    current: &'a RequestRecord,
    update: &Update,
    now_ms: u64,
) -> Option<&'a Hold> {
    let (held, taking) = (current.held_by.as_ref()?, update.hold.as_ref()?);
    (current.status == RequestStatus::Processing
        && update.to == RequestStatus::Processing
        && held.message_id != taking.message_id
        && held.until_ms > now_ms)
        .then_some(held)
}

/// Whether `update` is a redrive reopening `current`: a failed request, not
/// yet reopened by this redrive.
fn reopens(current: &RequestRecord, update: &Update) -> bool {
    update.to == RequestStatus::Processing
        && current.status.can_be_redriven()
        && update.redrive.is_some()
        && update.redrive != current.redriven_at_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use RequestStatus::*;

    #[test]
    fn another_message_waits_for_a_hold_the_same_one_takes_over() {
        let id = CorrelationId::new();
        let take = |message: &str| Update {
            hold: Some(Hold {
                message_id: message.into(),
                until_ms: 100,
            }),
            ..Update::to(Processing)
        };
        let Transition::Applied(held) = apply_update(id, None, take("a"), 10) else {
            panic!("a new request is taken");
        };
        assert_eq!(
            held.held_by.as_ref().map(|h| h.message_id.as_str()),
            Some("a")
        );
        assert_eq!(
            apply_update(id, Some(held.clone()), take("b"), 50),
            Transition::Held(Hold {
                message_id: "a".into(),
                until_ms: 100
            })
        );
        // Its own redelivery (its worker died), or anyone once the hold lapsed.
        assert!(matches!(
            apply_update(id, Some(held.clone()), take("a"), 50),
            Transition::Applied(_)
        ));
        assert!(matches!(
            apply_update(id, Some(held.clone()), take("b"), 100),
            Transition::Applied(_)
        ));
        let Transition::Applied(done) = apply_update(id, Some(held), Update::to(Completed), 60)
        else {
            panic!("the holder finishes");
        };
        assert_eq!(done.held_by, None);
    }

    #[test]
    fn a_cancelled_request_keeps_no_earlier_attempts_outcome() {
        let id = CorrelationId::new();
        let waiting_for_retry = RequestRecord {
            outcome: Some(Box::new(ResultData {
                status_code: Some(429),
                error: Some("backend answered 429".into()),
                ..ResultData::default()
            })),
            ..RequestRecord::pending(id, 1)
        };
        let Transition::Applied(cancelled) =
            apply_update(id, Some(waiting_for_retry), Update::to(Cancelled), 10)
        else {
            panic!("PENDING -> CANCELLED is legal");
        };
        assert_eq!(cancelled.outcome, None);
        assert!(cancelled.response_body()["status_code"].is_null());
    }

    fn check(current: Option<RequestStatus>, to: RequestStatus, applied: bool) {
        let id = CorrelationId::new();
        let rec = current.map(|st| RequestRecord {
            status: st,
            ..RequestRecord::pending(id, 1)
        });
        let got = apply_update(id, rec, Update::to(to), 10);
        match got {
            Transition::Applied(r) => {
                assert!(applied, "{current:?} -> {to} should be refused");
                assert_eq!(r.status, to);
                assert_eq!(r.updated_at_ms, 10);
            }
            Transition::Refused { current: c } => {
                assert!(!applied, "{current:?} -> {to} should apply");
                assert_eq!(Some(c), current);
            }
            Transition::Held(h) => panic!("{current:?} -> {to}: held by {h:?} with no hold"),
        }
    }

    #[test]
    fn updates_follow_the_table_and_missing_records_accept_anything() {
        check(Some(Pending), Processing, true);
        check(Some(Processing), Completed, true);
        check(Some(Completed), Processing, false);
        check(Some(Failed), Completed, false);
        check(Some(Pending), Completed, false);
        check(None, Completed, true);
        check(None, Processing, true);
    }

    #[test]
    fn only_a_redrive_reopens_and_only_a_failed_request_once() {
        let id = CorrelationId::new();
        let applied = |from: RequestStatus, to: RequestStatus, redrive: Option<u64>| {
            let rec = RequestRecord {
                status: from,
                redriven_at_ms: Some(5),
                ..RequestRecord::pending(id, 1)
            };
            let update = Update {
                redrive,
                ..Update::to(to)
            };
            matches!(
                apply_update(id, Some(rec), update, 10),
                Transition::Applied(_)
            )
        };
        for from in [Failed, Timeout] {
            assert!(applied(from, Processing, Some(7)), "{from} redriven");
            assert!(!applied(from, Processing, None), "{from} redelivered");
            assert!(
                !applied(from, Processing, Some(5)),
                "{from} reopened twice by one redrive"
            );
            assert!(
                !applied(from, Completed, Some(7)),
                "{from} straight to COMPLETED"
            );
        }
        for from in [Completed, Cancelled] {
            assert!(!applied(from, Processing, Some(7)), "{from} redriven");
        }
        // The ordinary table still holds for a redrive's update.
        assert!(applied(Pending, Processing, Some(7)));
        let failed = RequestRecord {
            status: Failed,
            ..RequestRecord::pending(id, 1)
        };
        let update = Update {
            redrive: Some(7),
            hold: None,
            ..Update::to(Processing)
        };
        let reopened = apply_update(id, Some(failed), update, 10);
        assert!(
            matches!(reopened, Transition::Applied(ref r) if r.redriven_at_ms == Some(7)),
            "{reopened:?}"
        );
    }
}
