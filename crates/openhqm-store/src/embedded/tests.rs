use std::time::Duration;

use openhqm_core::{CorrelationId, RequestRecord, RequestStatus, ResultData};
use openhqm_embedded::{EmbeddedDb, Options};

use super::{EmbeddedStore, EmbeddedStoreConfig, expired_keys};
use crate::{ResultStore, Transition, Update};

fn open(dir: &std::path::Path, ttl: Duration) -> (EmbeddedDb, EmbeddedStore) {
    let db = EmbeddedDb::open(dir, &Options::default()).expect("db");
    let config = EmbeddedStoreConfig {
        ttl,
        sweep_interval: Duration::from_millis(50),
    };
    let store = EmbeddedStore::open(db.clone(), &config).expect("store");
    (db, store)
}

/// Closes the store and its database, as a process exiting does, and opens
/// them again (a TTL of 60 s).
async fn restart(
    dir: &std::path::Path,
    db: EmbeddedDb,
    store: EmbeddedStore,
) -> (EmbeddedDb, EmbeddedStore) {
    store.close().await;
    db.close().await;
    drop((store, db));
    open(dir, Duration::from_secs(60))
}

#[tokio::test]
async fn status_and_result_are_written_together_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(60));
    let id = crate::scenarios::taken(&store).await;
    let outcome = ResultData {
        result: Some(serde_json::json!([1, 2])),
        status_code: Some(200),
        ..ResultData::default()
    };
    let done = Update {
        to: RequestStatus::Completed,
        attempts: Some(1),
        outcome: Some(Box::new(outcome.clone())),
        redrive: None,
        hold: None,
    };
    let applied = store.transition(id, done).await.expect("complete");
    assert!(
        matches!(applied, Transition::Applied(ref r) if r.outcome.as_deref() == Some(&outcome))
    );
    // A late duplicate cannot reopen a finished request.
    let late = store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("late");
    assert_eq!(
        late,
        Transition::Refused {
            current: RequestStatus::Completed
        }
    );
    let (db, store) = restart(dir.path(), db, store).await;
    let rec = store
        .get(id)
        .await
        .expect("get")
        .expect("present after reopen");
    assert_eq!(rec.status, RequestStatus::Completed);
    assert_eq!(rec.outcome.as_deref(), Some(&outcome));
    assert_eq!(rec.attempts, 1);
    store.close().await;
    db.close().await;
}

#[tokio::test]
async fn an_unreadable_record_is_replaced_by_the_next_transition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(60));
    for garbage in [&b"{not json"[..], b"\x01"] {
        let id = CorrelationId::new();
        store
            .results
            .insert(id.as_bytes(), garbage)
            .expect("write garbage");
        assert!(store.get(id).await.is_err(), "the damage is visible");
        let applied = store
            .transition(id, Update::to(RequestStatus::Processing))
            .await
            .expect("not refused");
        assert!(matches!(applied, Transition::Applied(_)), "{applied:?}");
        let rec = store.get(id).await.expect("readable").expect("present");
        assert_eq!(rec.status, RequestStatus::Processing);
    }
    store.close().await;
    db.close().await;
}

/// Stores a finished (failed) request: only those expire after the TTL.
async fn store_finished(store: &EmbeddedStore, id: CorrelationId) {
    let now = openhqm_core::time::now_ms();
    store
        .create(RequestRecord::pending(id, now))
        .await
        .expect("create");
    store
        .transition(id, Update::to(RequestStatus::Failed))
        .await
        .expect("fail");
}

#[tokio::test]
async fn records_expire_after_ttl_and_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_millis(300);
    let (db, store) = open(dir.path(), ttl);
    let results = db.keyspace("results").expect("ks");
    let ids: Vec<CorrelationId> = (0..20).map(|_| CorrelationId::new()).collect();
    for id in &ids {
        store_finished(&store, *id).await;
    }
    assert!(store.get(ids[0]).await.expect("get").is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = results.iter().count();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} expired records were never deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store.get(ids[0]).await.expect("get").is_none(),
        "expired record is unknown"
    );
    store.close().await;
    db.close().await;
}

#[tokio::test]
async fn expiry_scan_stops_at_records_too_young_to_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(3600));
    store_finished(&store, CorrelationId::new()).await;
    let results = db.keyspace("results").expect("ks");
    let now = openhqm_core::time::now_ms();
    assert!(expired_keys(&results, 3_600_000, now).is_empty());
    // Far in the future everything has expired.
    assert_eq!(expired_keys(&results, 3_600_000, now + 7_200_000).len(), 1);
    store.close().await;
    db.close().await;
}

#[tokio::test]
async fn store_reports_unavailable_when_its_database_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(60));
    db.close().await;
    assert!(store.health().await.is_err());
    assert!(
        store
            .create(RequestRecord::pending(
                CorrelationId::new(),
                openhqm_core::time::now_ms()
            ))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn wait_terminal_is_woken_by_a_finishing_transition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_db, store) = open(dir.path(), Duration::from_secs(60));
    let store = std::sync::Arc::new(store);
    let id = CorrelationId::new();
    store
        .create(RequestRecord::pending(id, openhqm_core::time::now_ms()))
        .await
        .expect("create");
    let none = store
        .wait_terminal(id, Duration::from_millis(50))
        .await
        .expect("wait");
    assert!(none.is_none(), "not terminal yet");
    let waiting = {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move { store.wait_terminal(id, Duration::from_secs(30)).await })
    };
    store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    store
        .transition(id, Update::to(RequestStatus::Failed))
        .await
        .expect("failed");
    let rec = waiting.await.expect("join").expect("wait");
    assert_eq!(rec.map(|r| r.status), Some(RequestStatus::Failed));
}

#[tokio::test]
async fn idempotency_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_db, store) = open(dir.path(), Duration::from_secs(60));
    crate::scenarios::idempotency_keys(&store).await;
}

#[tokio::test]
async fn unfinished_requests_outlive_the_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_millis(200);
    let (_db, store) = open(dir.path(), ttl);
    crate::scenarios::unfinished_requests_outlive_the_ttl(&store, ttl).await;
}

#[tokio::test]
async fn deep_results_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_db, store) = open(dir.path(), Duration::from_secs(60));
    crate::scenarios::deep_results_read_back(&store).await;
}

#[tokio::test]
async fn create_does_not_overwrite_a_later_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_db, store) = open(dir.path(), Duration::from_secs(60));
    crate::scenarios::create_does_not_overwrite(&store).await;
}

#[tokio::test]
async fn expired_idempotency_keys_are_swept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_db, store) = open(dir.path(), Duration::from_secs(60));
    let claim = crate::KeyClaim {
        correlation_id: CorrelationId::new(),
        fingerprint: "f".into(),
    };
    store
        .claim_key("k", claim, Duration::from_millis(50))
        .await
        .expect("claim");
    assert_eq!(store.keys.claims.iter().count(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.keys.claims.iter().count(), 0, "claim swept");
    assert_eq!(store.keys.by_expiry.iter().count(), 0, "index swept");
}

#[tokio::test]
async fn records_of_ids_that_are_not_time_ordered_expire_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(2));
    // UUIDv4 ids, as the earlier implementation's producers queue them:
    // they sort before, among and (mostly) after the v7 ids of now.
    let v4: Vec<CorrelationId> = ["00", "7f", "ff"]
        .iter()
        .map(|head| {
            format!("{head}3e4567-e89b-42d3-a456-426614174000")
                .parse()
                .expect("uuid")
        })
        .collect();
    for id in &v4 {
        store_finished(&store, *id).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // A record still young when those expire: the scan of time-ordered ids
    // stops at it.
    let young = CorrelationId::new();
    store_finished(&store, young).await;
    // The sweeper (every 50 ms here) deletes the others while it lives.
    let results = db.keyspace("results").expect("ks");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<Vec<u8>> = results
            .iter()
            .filter_map(|item| item.key().ok().map(|k| k.to_vec()))
            .collect();
        if left == [young.as_bytes().to_vec()] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} records left, the young one and expired ones never swept",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
    db.close().await;
}

fn take(message_id: &str, attempts: u32) -> Update {
    Update {
        to: RequestStatus::Processing,
        attempts: Some(attempts),
        outcome: None,
        redrive: None,
        hold: Some(openhqm_core::Hold {
            message_id: message_id.into(),
            until_ms: openhqm_core::time::now_ms() + 60_000,
        }),
    }
}

#[tokio::test]
async fn processing_is_kept_in_memory_and_a_restart_finds_the_request_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(60));
    let id = CorrelationId::new();
    store
        .create(RequestRecord::pending(id, openhqm_core::time::now_ms()))
        .await
        .expect("create");
    let taken = store.transition(id, take("m1", 1)).await.expect("take");
    assert!(matches!(taken, Transition::Applied(ref r) if r.status == RequestStatus::Processing));
    // Readers and the next transition see PROCESSING and its hold.
    let read = store.get(id).await.expect("get").expect("present");
    assert_eq!(read.status, RequestStatus::Processing);
    assert_eq!(read.held_by.map(|h| h.message_id), Some("m1".into()));
    let other = store.transition(id, take("m2", 1)).await.expect("other");
    assert!(matches!(other, Transition::Held(ref h) if h.message_id == "m1"));
    // A retry is written, and leaves PROCESSING behind.
    let retry = Update {
        to: RequestStatus::Pending,
        attempts: Some(1),
        outcome: None,
        redrive: None,
        hold: None,
    };
    let retried = store.transition(id, retry).await.expect("retry");
    assert!(matches!(retried, Transition::Applied(ref r) if r.status == RequestStatus::Pending));
    assert_eq!(
        store.get(id).await.expect("get").map(|r| r.status),
        Some(RequestStatus::Pending)
    );
    // Taken again, then the process dies (the store and database closed
    // without another transition).
    store
        .transition(id, take("m1", 2))
        .await
        .expect("take again");
    let (db, store) = restart(dir.path(), db, store).await;
    let rec = store
        .get(id)
        .await
        .expect("get")
        .expect("present after reopen");
    assert_eq!(
        rec.status,
        RequestStatus::Pending,
        "never stuck at PROCESSING"
    );
    assert_eq!(rec.attempts, 1, "the retry's write survives");
    assert!(rec.held_by.is_none(), "no hold outlives its process");
    // Any delivery takes it at once: no dead worker's hold to wait out.
    let again = store
        .transition(id, take("m2", 3))
        .await
        .expect("redelivered");
    assert!(matches!(again, Transition::Applied(ref r) if r.attempts == 3));
    store.close().await;
    db.close().await;
}

#[tokio::test]
async fn create_does_not_write_under_a_request_being_processed() {
    // A foreign message has no record until a worker takes it; a stray
    // message naming the same id, recorded FAILED, must not land under it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(60));
    let id = CorrelationId::new();
    store.transition(id, take("m1", 1)).await.expect("take");
    let stray = RequestRecord {
        status: RequestStatus::Failed,
        ..RequestRecord::pending(id, openhqm_core::time::now_ms())
    };
    store.create(stray).await.expect("create");
    let read = store.get(id).await.expect("get").expect("present");
    assert_eq!(read.status, RequestStatus::Processing);
    let (db, store) = restart(dir.path(), db, store).await;
    assert!(
        store.get(id).await.expect("get").is_none(),
        "nothing written under it"
    );
    let again = store
        .transition(id, take("m1", 2))
        .await
        .expect("redelivered");
    assert!(matches!(again, Transition::Applied(_)));
    store.close().await;
    db.close().await;
}

/// Stops the store and its database without `close`, as a crash does (the
/// writes already made are kept, as the OS would keep them), and reopens.
async fn crash(
    dir: &std::path::Path,
    db: EmbeddedDb,
    store: EmbeddedStore,
) -> (EmbeddedDb, EmbeddedStore) {
    let sweeper = store.sweeper.lock().expect("sweeper").take();
    if let Some(sweeper) = sweeper {
        sweeper.abort();
        let _ = sweeper.await;
    }
    db.close().await;
    drop((store, db));
    open(dir, Duration::from_secs(60))
}

async fn complete(store: &EmbeddedStore, id: CorrelationId) {
    store.transition(id, take("m9", 1)).await.expect("take");
    let done = store
        .transition(id, Update::to(RequestStatus::Completed))
        .await
        .expect("complete");
    assert!(matches!(done, Transition::Applied(_)));
}

/// A PENDING record submitted a minute ago: transitions keep that time.
fn pending(id: CorrelationId) -> RequestRecord {
    RequestRecord::pending(id, openhqm_core::time::now_ms() - 60_000)
}

async fn submitted_at(store: &EmbeddedStore, id: CorrelationId) -> u64 {
    let record = store.get(id).await.expect("get").expect("present");
    record.submitted_at_ms
}

async fn status(store: &EmbeddedStore, id: CorrelationId) -> Option<RequestStatus> {
    store.get(id).await.expect("get").map(|r| r.status)
}

#[tokio::test]
async fn a_deferred_record_is_held_until_a_sync_or_its_first_written_transition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(60));
    let [taken, waiting, cancelled] = [(); 3].map(|()| CorrelationId::new());
    for id in [taken, waiting, cancelled] {
        store.create_deferred(pending(id)).await.expect("create");
        assert_eq!(status(&store, id).await, Some(RequestStatus::Pending));
    }
    let submitted = submitted_at(&store, taken).await;
    store.transition(taken, take("m1", 1)).await.expect("take");
    assert_eq!(status(&store, taken).await, Some(RequestStatus::Processing));
    assert_eq!(
        submitted_at(&store, taken).await,
        submitted,
        "taken from the held record"
    );
    let cancel = store
        .transition(cancelled, Update::to(RequestStatus::Cancelled))
        .await
        .expect("cancel");
    assert!(matches!(cancel, Transition::Applied(_)));
    assert_eq!(store.held.len(), 2, "the cancel was written: held no more");
    // A crash loses what was held, as the queue loses their messages.
    let (db, store) = crash(dir.path(), db, store).await;
    assert_eq!(status(&store, taken).await, None);
    assert_eq!(status(&store, waiting).await, None);
    assert_eq!(
        status(&store, cancelled).await,
        Some(RequestStatus::Cancelled)
    );

    // A sync writes them: as they were before any worker took them.
    let [taken, waiting] = [(); 2].map(|()| CorrelationId::new());
    for id in [taken, waiting] {
        store.create_deferred(pending(id)).await.expect("create");
    }
    store.transition(taken, take("m1", 1)).await.expect("take");
    store.sync().await.expect("sync");
    assert_eq!(store.held.len(), 0);
    assert_eq!(status(&store, taken).await, Some(RequestStatus::Processing));
    let (db, store) = crash(dir.path(), db, store).await;
    assert_eq!(status(&store, taken).await, Some(RequestStatus::Pending));
    assert_eq!(status(&store, waiting).await, Some(RequestStatus::Pending));

    // So does a clean shutdown; a finished request's outcome is never
    // overwritten by its held PENDING.
    let [finished, waiting] = [(); 2].map(|()| CorrelationId::new());
    for id in [finished, waiting] {
        store.create_deferred(pending(id)).await.expect("create");
    }
    complete(&store, finished).await;
    let (db, store) = restart(dir.path(), db, store).await;
    assert_eq!(
        status(&store, finished).await,
        Some(RequestStatus::Completed)
    );
    assert_eq!(status(&store, waiting).await, Some(RequestStatus::Pending));
    store.close().await;
    db.close().await;
}

#[tokio::test]
async fn a_deferred_record_made_after_a_worker_took_the_request_is_not_held() {
    // A keyed request is published before its record is made: a worker may
    // take it first, and PENDING must not come back under it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = open(dir.path(), Duration::from_secs(60));
    let (taken, finished) = (CorrelationId::new(), CorrelationId::new());
    store.transition(taken, take("m1", 1)).await.expect("take");
    store.create_deferred(pending(taken)).await.expect("create");
    complete(&store, finished).await;
    store
        .create_deferred(pending(finished))
        .await
        .expect("create");
    assert_eq!(store.held.len(), 0);
    assert_eq!(status(&store, taken).await, Some(RequestStatus::Processing));
    assert_eq!(
        status(&store, finished).await,
        Some(RequestStatus::Completed)
    );
    store.close().await;
    db.close().await;
}
