//! The worker pool against the real embedded queue and store.

mod rig;

use rig::{Rig, rig};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use openhqm_core::{
    Backoff, CorrelationId, Envelope, Failure, FailureKind, LastResponse, RequestRecord,
    RequestStatus, SubmitRequest,
};
use openhqm_queue::OutgoingMessage;
use openhqm_store::ResultStore;
use openhqm_worker::{DemoProcessor, Output, Processor, Request, WorkerConfig};
use serde_json::{Value, json};

fn config(count: usize, max_retries: u32) -> WorkerConfig {
    WorkerConfig {
        count,
        batch_size: 16,
        timeout: Duration::from_secs(30),
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(50),
            max_retries,
        },
        lease: Duration::from_secs(2),
        drain: Duration::from_secs(5),
        unavailable_backoff: Duration::from_millis(50),
    }
}

impl Rig {
    /// Submits `body` as the API would take it.
    async fn submit(&self, body: Value) -> CorrelationId {
        let req: SubmitRequest = serde_json::from_value(body).expect("submit body");
        self.submit_envelope(&Envelope::from_submit(CorrelationId::new(), req, "now"))
            .await
    }
}

/// Fails the first `fail_times` attempts of every request, then echoes.
struct Flaky {
    fail_times: u32,
    kind: FailureKind,
    calls: AtomicU32,
}

impl Flaky {
    fn new(fail_times: u32, kind: FailureKind) -> Arc<Self> {
        Arc::new(Self {
            fail_times,
            kind,
            calls: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl Processor for Flaky {
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if request.attempt <= self.fail_times {
            return Err(Failure::new(
                self.kind,
                format!("attempt {} failed", request.attempt),
            ));
        }
        Ok(Output::json(json!({"attempt": request.attempt})))
    }
}

#[tokio::test]
async fn demo_request_completes_with_its_result() {
    let rig = rig(Arc::new(DemoProcessor), config(4, 3)).await;
    let id = rig
        .submit(json!({"payload": {"operation": "uppercase", "data": "hello"}}))
        .await;
    let rec = rig.wait_terminal(id).await;
    assert_eq!(rec.status, RequestStatus::Completed);
    let outcome = rec.outcome.expect("outcome");
    assert_eq!(
        outcome.result,
        Some(json!({"operation": "uppercase", "output": "HELLO"}))
    );
    assert!(outcome.processing_time_ms.is_some() && outcome.completed_at_ms.is_some());
    assert_eq!(
        rig.queue.depth().await.expect("depth"),
        0,
        "completed message is acked"
    );
    rig.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_until_success() {
    let flaky = Flaky::new(2, FailureKind::Transient);
    let rig = rig(Arc::clone(&flaky) as Arc<dyn Processor>, config(4, 3)).await;
    let id = rig.submit(json!({"payload": 1})).await;
    let rec = rig.wait_terminal(id).await;
    assert_eq!(rec.status, RequestStatus::Completed);
    assert_eq!(rec.attempts, 3);
    assert_eq!(
        rec.outcome.and_then(|o| o.result),
        Some(json!({"attempt": 3}))
    );
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    rig.stop().await;
}

#[tokio::test]
async fn exhausted_retries_fail_the_request_and_dead_letter_it() {
    let flaky = Flaky::new(u32::MAX, FailureKind::Transient);
    let rig = rig(Arc::clone(&flaky) as Arc<dyn Processor>, config(4, 2)).await;
    let id = rig.submit(json!({"payload": 1})).await;
    let rec = rig.wait_terminal(id).await;
    assert_eq!(rec.status, RequestStatus::Failed);
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        3,
        "1 attempt + 2 retries"
    );
    let error = rec.outcome.and_then(|o| o.error).expect("error kept");
    assert!(error.contains("attempt 3 failed"), "{error}");
    let dead = rig.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("attempt 3 failed"),
        "{}",
        dead[0].reason
    );
    rig.stop().await;
}

/// A backend that always answers 503, with a retry budget of its own.
struct Overloaded {
    calls: AtomicU32,
}

#[async_trait]
impl Processor for Overloaded {
    async fn process(&self, _request: &Request<'_>) -> Result<Output, Failure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut failure = Failure::new(FailureKind::Transient, "backend answered 503");
        failure.response = Some(Box::new(LastResponse {
            status_code: 503,
            headers: serde_json::Map::from_iter([("x-why".into(), json!("busy"))]),
            body: json!({"error": "overloaded"}),
            raw_body: None,
            raw_headers: None,
        }));
        Err(failure)
    }

    fn max_retries(&self, envelope: &Envelope) -> Option<u32> {
        (envelope.metadata.endpoint.as_deref() == Some("strict")).then_some(1)
    }
}

#[tokio::test]
async fn processor_retry_budget_overrides_the_pool_and_the_last_answer_is_kept() {
    let overloaded = Arc::new(Overloaded {
        calls: AtomicU32::new(0),
    });
    let rig = rig(Arc::clone(&overloaded) as Arc<dyn Processor>, config(4, 5)).await;
    let id = rig
        .submit(json!({"payload": 1, "metadata": {"endpoint": "strict"}}))
        .await;
    let rec = rig.wait_terminal(id).await;
    assert_eq!(rec.status, RequestStatus::Failed);
    assert_eq!(
        overloaded.calls.load(Ordering::SeqCst),
        2,
        "1 attempt + 1 retry, not 5"
    );
    let outcome = rec.outcome.expect("outcome");
    assert_eq!(outcome.status_code, Some(503));
    assert_eq!(outcome.result, Some(json!({"error": "overloaded"})));
    assert_eq!(outcome.headers.expect("headers")["x-why"], "busy");
    assert!(outcome.error.expect("error").contains("503"));
    rig.stop().await;
}

#[tokio::test]
async fn permanent_failure_is_not_retried() {
    let rig = rig(Arc::new(DemoProcessor), config(4, 3)).await;
    let id = rig
        .submit(json!({"payload": {"operation": "no-such-op"}}))
        .await;
    let rec = rig.wait_terminal(id).await;
    assert_eq!(rec.status, RequestStatus::Failed);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rig.dead_letters(1).await.len(), 1);
    rig.stop().await;
}

#[tokio::test]
async fn attempt_past_its_timeout_ends_as_timeout() {
    let rig = rig(Arc::new(DemoProcessor), config(4, 1)).await;
    let id = rig
        .submit(json!({"payload": {"operation": "sleep", "ms": 5000}, "metadata": {"timeout": 1}}))
        .await;
    let rec = rig.wait_terminal(id).await;
    assert_eq!(rec.status, RequestStatus::Timeout);
    assert_eq!(
        rec.attempts, 2,
        "a timed-out attempt is retried like a transient failure"
    );
    assert!(
        rec.outcome
            .and_then(|o| o.error)
            .is_some_and(|e| e.contains("timeout"))
    );
    rig.stop().await;
}

#[tokio::test]
async fn undecodable_message_is_dead_lettered_not_redelivered_forever() {
    let rig = rig(Arc::new(DemoProcessor), config(4, 3)).await;
    rig.queue
        .publish(OutgoingMessage::new(&b"{not json"[..]))
        .await
        .expect("publish");
    let dead = rig.dead_letters(1).await;
    assert!(
        dead[0].reason.starts_with("malformed envelope"),
        "{}",
        dead[0].reason
    );
    assert_eq!(rig.queue.depth().await.expect("depth"), 0);
    rig.stop().await;
}

#[tokio::test]
async fn an_undecodable_message_that_names_its_request_fails_it_with_the_reason() {
    let rig = rig(Arc::new(DemoProcessor), config(4, 3)).await;
    let id = CorrelationId::new();
    // A producer's envelope with a field that does not decode.
    let body =
        format!(r#"{{"correlation_id":"{id}","payload":1,"metadata":{{"priority":"high"}}}}"#);
    rig.queue
        .publish(OutgoingMessage::new(body.into_bytes()))
        .await
        .expect("publish");
    let rec = rig.wait_terminal(id).await;
    assert_eq!(rec.status, RequestStatus::Failed);
    let outcome = rec.outcome.expect("outcome");
    let error = outcome.error.unwrap_or_default();
    assert!(error.starts_with("malformed envelope"), "{error}");
    assert!(outcome.completed_at_ms.is_some());
    rig.dead_letters(1).await;

    // One naming a request that exists does not touch it.
    let live = CorrelationId::new();
    rig.store
        .create(RequestRecord::pending(live, openhqm_core::time::now_ms()))
        .await
        .expect("create");
    let stray =
        format!(r#"{{"correlation_id":"{live}","payload":1,"metadata":{{"priority":"high"}}}}"#);
    rig.queue
        .publish(OutgoingMessage::new(stray.into_bytes()))
        .await
        .expect("publish");
    rig.dead_letters(2).await;
    let rec = rig.store.get(live).await.expect("get").expect("record");
    assert_eq!(
        rec.status,
        RequestStatus::Pending,
        "the live request is untouched"
    );
    rig.stop().await;
}

#[tokio::test]
async fn duplicate_delivery_of_a_finished_request_is_not_processed_again() {
    let flaky = Flaky::new(0, FailureKind::Transient);
    let rig = rig(Arc::clone(&flaky) as Arc<dyn Processor>, config(4, 3)).await;
    let id = rig.submit(json!({"payload": 1})).await;
    rig.wait_terminal(id).await;
    // The same envelope again, as an at-least-once broker may deliver it.
    rig.publish_copy(id).await;
    rig.wait_drained().await;
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    rig.stop().await;
}

/// Runs until the test opens its gate, counting its calls.
struct Gated {
    calls: AtomicU32,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl Processor for Gated {
    async fn process(&self, _: &Request<'_>) -> Result<Output, Failure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _open = self.gate.acquire().await.expect("gate");
        Ok(Output::json(json!("done")))
    }
}

#[tokio::test]
async fn a_duplicate_arriving_while_the_request_runs_waits_and_is_not_run_again() {
    let slow = Arc::new(Gated {
        calls: AtomicU32::new(0),
        gate: tokio::sync::Semaphore::new(0),
    });
    let rig = rig(Arc::clone(&slow) as Arc<dyn Processor>, config(4, 3)).await;
    let id = rig.submit(json!({"payload": 1})).await;
    // A producer's second copy, a separate message, while the first runs.
    rig.publish_copy(id).await;
    // The first run goes on until the copy has been put back.
    let held = rig.metrics.worker().held;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while held.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy was never put back (calls: {})",
            slow.calls.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    slow.gate.add_permits(10);
    assert_eq!(rig.wait_terminal(id).await.status, RequestStatus::Completed);
    rig.wait_drained().await;
    assert_eq!(slow.calls.load(Ordering::SeqCst), 1, "run twice");
    let record = rig.store.get(id).await.expect("store").expect("record");
    assert_eq!(record.held_by, None, "a finished request is held by no one");
    rig.stop().await;
}

/// Records the highest number of concurrent attempts.
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

#[async_trait]
impl Processor for Gauge {
    async fn process(&self, _: &Request<'_>) -> Result<Output, Failure> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(Output::json(Value::Null))
    }
}

#[tokio::test]
async fn pool_runs_count_messages_concurrently_and_never_more() {
    let gauge = Arc::new(Gauge {
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    });
    let rig = rig(Arc::clone(&gauge) as Arc<dyn Processor>, config(8, 0)).await;
    let mut ids = Vec::new();
    for _ in 0..80 {
        ids.push(rig.submit(json!({"payload": null})).await);
    }
    for id in ids {
        assert_eq!(rig.wait_terminal(id).await.status, RequestStatus::Completed);
    }
    assert_eq!(gauge.max.load(Ordering::SeqCst), 8);
    rig.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_work_within_the_drain() {
    let mut rig = rig(Arc::new(DemoProcessor), config(4, 3)).await;
    let id = rig
        .submit(json!({"payload": {"operation": "sleep", "ms": 300}}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rig.store.get(id).await.expect("get").map(|r| r.status) != Some(RequestStatus::Processing)
    {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(rig.stop_workers().await, 0, "nothing abandoned");
    let rec = rig.store.get(id).await.expect("get").expect("record");
    assert_eq!(
        rec.status,
        RequestStatus::Completed,
        "in-flight work finished during the drain"
    );
    rig.db.close().await;
}

#[tokio::test]
async fn work_past_the_drain_is_left_for_redelivery_not_failed() {
    let mut cfg = config(4, 3);
    cfg.drain = Duration::from_millis(100);
    let mut rig = rig(Arc::new(DemoProcessor), cfg).await;
    let id = rig
        .submit(json!({"payload": {"operation": "sleep", "ms": 10000}}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rig.store.get(id).await.expect("get").map(|r| r.status) != Some(RequestStatus::Processing)
    {
        assert!(tokio::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let abandoned = rig.stop_workers().await;
    let (queue, store) = (&rig.queue, &rig.store);
    assert_eq!(abandoned, 1);
    assert_eq!(
        queue.depth().await.expect("depth"),
        1,
        "message stays on the queue"
    );
    assert_eq!(queue.dead_letter_depth().await.expect("dlq"), 0);
    let rec = store.get(id).await.expect("get").expect("record");
    assert!(
        !rec.status.is_terminal(),
        "shutdown must not finish the request: {}",
        rec.status
    );
    let again = queue
        .receive(1, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(again.len(), 1, "released at once, not after its lease");
    assert_eq!(
        again[0].message().attempt,
        1,
        "a shutdown uses up no attempt"
    );
    rig.db.close().await;
}

/// Fails its first call for good, then succeeds: a backend fixed after the fact.
struct FixedLater {
    calls: AtomicU32,
}

#[async_trait]
impl Processor for FixedLater {
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Failure::new(FailureKind::Permanent, "backend broken"));
        }
        Ok(Output::json(json!({"attempt": request.attempt})))
    }
}

#[tokio::test]
async fn a_redriven_dead_letter_reopens_its_failed_request_and_runs_again() {
    let processor = Arc::new(FixedLater {
        calls: AtomicU32::new(0),
    });
    let rig = rig(Arc::clone(&processor) as Arc<dyn Processor>, config(4, 0)).await;
    let id = rig.submit(json!({"payload": 1})).await;
    assert_eq!(rig.wait_terminal(id).await.status, RequestStatus::Failed);
    assert_eq!(rig.dead_letters(1).await.len(), 1);

    assert_eq!(rig.queue.redrive(10).await.expect("redrive"), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rec = loop {
        let rec = rig.store.get(id).await.expect("get").expect("record");
        if rec.status == RequestStatus::Completed {
            break rec;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redrive never ran: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        rec.outcome.and_then(|o| o.result),
        Some(json!({"attempt": 1}))
    );
    assert_eq!(processor.calls.load(Ordering::SeqCst), 2);
    assert_eq!(rig.queue.dead_letter_depth().await.expect("dlq"), 0);
    rig.stop().await;
}

/// On its first call, does what a holder whose lease ran out does when its
/// own attempt fails: puts the request back to PENDING; then succeeds.
struct OvertakenByStaleHolder {
    store: std::sync::OnceLock<Arc<dyn ResultStore>>,
    calls: AtomicU32,
}

#[async_trait]
impl Processor for OvertakenByStaleHolder {
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let store = self.store.get().expect("store set");
            let id = request.envelope.correlation_id;
            let back = openhqm_store::Update::to(RequestStatus::Pending);
            store.transition(id, back).await.expect("stale retry");
        }
        Ok(Output::json(json!({"attempt": request.attempt})))
    }
}

#[tokio::test]
async fn an_outcome_refused_by_an_unfinished_request_is_retried_not_acked() {
    let processor = Arc::new(OvertakenByStaleHolder {
        store: std::sync::OnceLock::new(),
        calls: AtomicU32::new(0),
    });
    let rig = rig(Arc::clone(&processor) as Arc<dyn Processor>, config(4, 3)).await;
    let _ = processor.store.set(Arc::clone(&rig.store));
    let id = rig.submit(json!({"payload": 1})).await;
    let done = rig.wait_terminal(id).await;
    assert_eq!(done.status, RequestStatus::Completed);
    assert_eq!(processor.calls.load(Ordering::SeqCst), 2);
    // Put back without counting: the budget is for the processor's failures.
    assert_eq!(done.attempts, 1);
    rig.stop().await;
}

#[tokio::test]
async fn a_message_delivered_past_its_attempts_is_dead_lettered_not_run_again() {
    let flaky = Flaky::new(0, FailureKind::Transient);
    let rig = rig(Arc::clone(&flaky) as Arc<dyn Processor>, config(4, 2)).await;
    // Delivered as attempt 4 with max_retries 2: what a queue hands out once
    // three attempts died with their worker (Redis counts every delivery; the
    // embedded queue stores each leased message as its next attempt).
    let id = rig
        .submit(json!({"payload": 1, "metadata": {"retry_count": 3}}))
        .await;
    let done = rig.wait_terminal(id).await;
    assert_eq!(done.status, RequestStatus::Failed);
    assert_eq!(done.attempts, 3);
    let error = done.outcome.and_then(|o| o.error).unwrap_or_default();
    assert!(
        error.contains("3 were made before it was queued (metadata.retry_count)"),
        "the reason says where the attempts went: {error}"
    );
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        0,
        "not run a fourth time"
    );
    let dead = rig.dead_letters(1).await;
    assert!(
        dead[0].reason.contains("without an outcome"),
        "{}",
        dead[0].reason
    );
    rig.stop().await;
}

/// Does what a duplicate delivery that finished first leaves behind: the
/// request COMPLETED. Then fails for good, as a backend that deduplicates
/// answers the second call (409).
struct CompletedByADuplicate {
    store: std::sync::OnceLock<Arc<dyn ResultStore>>,
}

#[async_trait]
impl Processor for CompletedByADuplicate {
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure> {
        let store = self.store.get().expect("store set");
        let id = request.envelope.correlation_id;
        store
            .transition(id, openhqm_store::Update::to(RequestStatus::Completed))
            .await
            .expect("the duplicate's outcome");
        Err(Failure::new(FailureKind::Permanent, "409 already done"))
    }
}

#[tokio::test]
async fn a_failure_after_a_duplicate_completed_the_request_is_acked_not_dead_lettered() {
    let processor = Arc::new(CompletedByADuplicate {
        store: std::sync::OnceLock::new(),
    });
    let rig = rig(Arc::clone(&processor) as Arc<dyn Processor>, config(4, 0)).await;
    let _ = processor.store.set(Arc::clone(&rig.store));
    let id = rig.submit(json!({"payload": 1})).await;
    assert_eq!(rig.wait_terminal(id).await.status, RequestStatus::Completed);
    rig.wait_drained().await;
    assert_eq!(rig.queue.dead_letter_depth().await.expect("dlq"), 0);
    assert_eq!(
        rig.store
            .get(id)
            .await
            .expect("get")
            .expect("record")
            .status,
        RequestStatus::Completed
    );
    rig.stop().await;
}

/// Cannot start its first `times` attempts (a full local limit), then echoes.
struct BusyAtFirst {
    times: u32,
    calls: AtomicU32,
}

#[async_trait]
impl Processor for BusyAtFirst {
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.times {
            return Err(Failure::new(FailureKind::Busy, "at the concurrency limit"));
        }
        Ok(Output::json(json!({"attempt": request.attempt})))
    }
}

#[tokio::test]
async fn an_attempt_that_could_not_start_is_put_back_not_counted() {
    let busy = Arc::new(BusyAtFirst {
        times: 5,
        calls: AtomicU32::new(0),
    });
    // One retry allowed, five times busy: only uncounted put-backs let it
    // complete.
    let rig = rig(Arc::clone(&busy) as Arc<dyn Processor>, config(4, 1)).await;
    let id = rig.submit(json!({"payload": 1})).await;
    let done = rig.wait_terminal(id).await;
    assert_eq!(done.status, RequestStatus::Completed);
    assert_eq!(done.attempts, 1, "the put-backs were not attempts");
    assert_eq!(busy.calls.load(Ordering::SeqCst), 6);
    assert_eq!(
        done.outcome.and_then(|o| o.result),
        Some(json!({"attempt": 1}))
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_redrive_counts_attempts_from_zero_whatever_retry_count_said() {
    // Fails the first attempt after the redrive, then succeeds: the retry
    // in between must count from the redrive too.
    let flaky = Flaky::new(1, FailureKind::Transient);
    let rig = rig(Arc::clone(&flaky) as Arc<dyn Processor>, config(4, 1)).await;
    // Five attempts made before it was queued, two allowed: dead-lettered unrun.
    let id = rig
        .submit(json!({"payload": 1, "metadata": {"retry_count": 5}}))
        .await;
    assert_eq!(rig.wait_terminal(id).await.status, RequestStatus::Failed);
    assert_eq!(rig.dead_letters(1).await.len(), 1);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 0);

    assert_eq!(rig.queue.redrive(10).await.expect("redrive"), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rec = loop {
        let rec = rig.store.get(id).await.expect("get").expect("record");
        if rec.status == RequestStatus::Completed {
            break rec;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redrive never ran: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(rec.attempts, 2);
    assert_eq!(
        rec.outcome.and_then(|o| o.result),
        Some(json!({"attempt": 2}))
    );
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    assert_eq!(rig.queue.dead_letter_depth().await.expect("dlq"), 0);
    rig.stop().await;
}
