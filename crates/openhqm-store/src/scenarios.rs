//! Scenarios every result store must pass, run by each backend's tests
//! (the store's counterpart of the queue's conformance suite).

use std::time::Duration;

use openhqm_core::CorrelationId;

use openhqm_core::{RequestRecord, RequestStatus};

use crate::{Claim, KeyClaim, ResultStore, Update};

fn claim(fingerprint: &str) -> KeyClaim {
    KeyClaim {
        correlation_id: CorrelationId::new(),
        fingerprint: fingerprint.to_owned(),
    }
}

/// Idempotency keys: the first claim wins (also among concurrent ones), a
/// later one reads the winner, a release by anyone but the holder changes
/// nothing, a release by the holder frees the key, and keys expire.
///
/// # Panics
/// When the store breaks one of those rules.
pub async fn idempotency_keys(store: &dyn ResultStore) {
    let ttl = Duration::from_secs(60);
    let key = format!("scope:{}", CorrelationId::new());
    let racers = concurrent_claims(store, &key, ttl).await;
    assert_eq!(
        racers.iter().filter(|c| **c == Claim::New).count(),
        1,
        "exactly one of concurrent claims wins: {racers:?}"
    );
    let seen: Vec<&KeyClaim> = racers
        .iter()
        .filter_map(|c| match c {
            Claim::Existing(k) => Some(k),
            Claim::New => None,
        })
        .collect();
    let winner = seen[0].clone();
    assert!(
        seen.iter().all(|k| **k == winner),
        "every loser reads the one winner, not another loser: {racers:?}"
    );
    assert_eq!(
        store
            .claim_key(&key, claim("fp-b"), ttl)
            .await
            .expect("claim"),
        Claim::Existing(winner.clone())
    );

    store
        .release_key(&key, CorrelationId::new())
        .await
        .expect("release by a stranger");
    assert_eq!(
        store
            .claim_key(&key, claim("fp-c"), ttl)
            .await
            .expect("claim"),
        Claim::Existing(winner.clone()),
        "a stranger cannot free the key"
    );
    store
        .release_key(&key, winner.correlation_id)
        .await
        .expect("release by the holder");
    assert_eq!(
        store
            .claim_key(&key, claim("fp-d"), ttl)
            .await
            .expect("claim"),
        Claim::New,
        "a released key is free"
    );

    let short = format!("scope:{}", CorrelationId::new());
    let brief = Duration::from_millis(200);
    assert_eq!(
        store
            .claim_key(&short, claim("x"), brief)
            .await
            .expect("claim"),
        Claim::New
    );
    tokio::time::sleep(brief + Duration::from_millis(100)).await;
    assert_eq!(
        store
            .claim_key(&short, claim("y"), brief)
            .await
            .expect("claim"),
        Claim::New,
        "an expired key is free again"
    );
}

/// Eight concurrent claims of one key, each for its own request.
async fn concurrent_claims(store: &dyn ResultStore, key: &str, ttl: Duration) -> Vec<Claim> {
    let claims = (0..8).map(|_| store.claim_key(key, claim("fp-a"), ttl));
    futures::future::join_all(claims)
        .await
        .into_iter()
        .map(|c| c.expect("claim"))
        .collect()
}

/// `create` never overwrites a record a worker already moved on (create and
/// publish run concurrently, so a worker can get there first).
///
/// # Panics
/// When the store overwrites it.
pub async fn create_does_not_overwrite(store: &dyn ResultStore) {
    let id = CorrelationId::new();
    store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("a worker got there first");
    store
        .create(RequestRecord::pending(id, 1))
        .await
        .expect("create");
    let record = store.get(id).await.expect("get").expect("record");
    assert_eq!(record.status, RequestStatus::Processing);
}

/// A new request, accepted now and taken by a worker (PROCESSING).
///
/// # Panics
/// When the store refuses either step.
pub async fn taken(store: &dyn ResultStore) -> CorrelationId {
    let id = CorrelationId::new();
    store
        .create(RequestRecord::pending(id, openhqm_core::time::now_ms()))
        .await
        .expect("create");
    store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    id
}

/// A result as deep as a processor or a backend's JSON answer can make it
/// (as deep as serde_json parses) is read back: the record around it adds
/// levels, and a record written but never readable would answer 503 until
/// it expired.
///
/// # Panics
/// When the finished record cannot be read back whole.
pub async fn deep_results_read_back(store: &dyn ResultStore) {
    let depth = openhqm_core::envelope::MAX_PAYLOAD_DEPTH;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let result: serde_json::Value = serde_json::from_str(&deep).expect("parses at the limit");
    let id = taken(store).await;
    let mut done = Update::to(RequestStatus::Completed);
    done.outcome = Some(Box::new(openhqm_core::ResultData {
        result: Some(serde_json::json!({ "output": result.clone() })),
        ..Default::default()
    }));
    store.transition(id, done).await.expect("completed");
    let record = store.get(id).await.expect("readable").expect("record");
    assert_eq!(record.status, RequestStatus::Completed);
    let kept = record.outcome.and_then(|o| o.result);
    assert_eq!(kept, Some(serde_json::json!({ "output": result })));
}

/// A record outlives `ttl` while its request is unfinished (PENDING, then
/// PROCESSING), and expires `ttl` after it finishes. `store` must have been
/// opened with `ttl`, short (well under a second).
///
/// # Panics
/// When an unfinished request's record expires, or a finished one never does.
pub async fn unfinished_requests_outlive_the_ttl(store: &dyn ResultStore, ttl: Duration) {
    let id = CorrelationId::new();
    let now = openhqm_core::time::now_ms();
    store
        .create(RequestRecord::pending(id, now))
        .await
        .expect("create");
    tokio::time::sleep(ttl * 3).await;
    let record = store.get(id).await.expect("get");
    assert_eq!(
        record.map(|r| r.status),
        Some(RequestStatus::Pending),
        "a request still queued after the TTL must keep its status"
    );
    store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    tokio::time::sleep(ttl * 3).await;
    let record = store.get(id).await.expect("get");
    assert_eq!(
        record.map(|r| r.status),
        Some(RequestStatus::Processing),
        "a request still running after the TTL must keep its status"
    );
    // Cancelled while queued: the record outlives the TTL too, since the
    // message is still there and a worker must find it cancelled.
    let cancelled = CorrelationId::new();
    store
        .create(RequestRecord::pending(cancelled, now))
        .await
        .expect("create");
    store
        .transition(cancelled, Update::to(RequestStatus::Cancelled))
        .await
        .expect("cancel");
    store
        .transition(id, Update::to(RequestStatus::Completed))
        .await
        .expect("completed");
    assert!(store.get(id).await.expect("get").is_some(), "fresh result");
    let deadline = tokio::time::Instant::now() + ttl * 20;
    while store.get(id).await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a finished request's record never expired"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    let record = store.get(cancelled).await.expect("get");
    assert_eq!(
        record.map(|r| r.status),
        Some(RequestStatus::Cancelled),
        "a cancelled request's record must outlive the TTL"
    );
}
