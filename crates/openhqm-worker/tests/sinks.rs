//! Completion sinks in the worker pool, against the real embedded queue and
//! store: the reply queue gets every finished request, a redelivered finished
//! request is reported again before it is acked, and a failing sink holds the
//! delivery until it succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use openhqm_core::{
    Backoff, CorrelationId, Envelope, RequestRecord, RequestStatus, ResultData, SubmitRequest,
};
use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_metrics::Metrics;
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_queue::{Message, OutgoingMessage, QueueBackend};
use openhqm_store::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use openhqm_store::{ResultStore, Update};
use openhqm_worker::{
    CompletionSink, DemoProcessor, ReplyQueueSink, SinkError, WorkerConfig, WorkerPool,
};
use serde_json::{Value, json};
use tokio::sync::watch;

struct Rig {
    _dir: tempfile::TempDir,
    db: EmbeddedDb,
    queue: Arc<dyn QueueBackend>,
    replies: Arc<dyn QueueBackend>,
    store: Arc<dyn ResultStore>,
    metrics: Arc<Metrics>,
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        count: 4,
        batch_size: 16,
        timeout: Duration::from_secs(30),
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(50),
            max_retries: 0,
        },
        lease: Duration::from_secs(2),
        drain: Duration::from_secs(5),
        unavailable_backoff: Duration::from_millis(30),
    }
}

fn open_queue(db: &EmbeddedDb, name: &str) -> Arc<dyn QueueBackend> {
    let qc = EmbeddedQueueConfig {
        name: name.into(),
        dead_letter_name: format!("{name}-dlq"),
        lease: Duration::from_secs(2),
        max_payload: 1 << 20,
    };
    Arc::new(EmbeddedQueue::open(db.clone(), qc).expect("queue"))
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
    let sc = EmbeddedStoreConfig {
        ttl: Duration::from_secs(600),
        sweep_interval: Duration::from_secs(60),
    };
    let store: Arc<dyn ResultStore> =
        Arc::new(EmbeddedStore::open(db.clone(), &sc).expect("store"));
    Rig {
        queue: open_queue(&db, "requests"),
        replies: open_queue(&db, "responses"),
        _dir: dir,
        db,
        store,
        metrics: Metrics::new(),
    }
}

impl Rig {
    fn reply_sink(&self) -> Arc<ReplyQueueSink> {
        Arc::new(ReplyQueueSink::new(
            Arc::clone(&self.replies),
            self.metrics.queue("responses"),
        ))
    }

    fn start(
        &self,
        sinks: Vec<Arc<dyn CompletionSink>>,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<usize>) {
        let pool = WorkerPool::new(
            Arc::clone(&self.queue),
            Arc::clone(&self.store),
            Arc::new(DemoProcessor),
            worker_config(),
            (self.metrics.worker(), self.metrics.queue("requests")),
        )
        .with_sinks(sinks);
        let (stop, stopped) = watch::channel(false);
        (stop, tokio::spawn(pool.run(stopped)))
    }

    fn envelope(id: CorrelationId, body: Value) -> Envelope {
        let req: SubmitRequest = serde_json::from_value(body).expect("submit body");
        Envelope::from_submit(id, req, "now")
    }

    async fn submit(&self, body: Value) -> CorrelationId {
        let id = CorrelationId::new();
        self.store
            .create(RequestRecord::pending(id, openhqm_core::time::now_ms()))
            .await
            .expect("create");
        self.publish(&Self::envelope(id, body)).await;
        id
    }

    async fn publish(&self, env: &Envelope) {
        self.queue
            .publish(OutgoingMessage::new(env.to_json().expect("json")))
            .await
            .expect("publish");
    }

    /// Takes `n` replies off the reply queue (acking them).
    async fn replies(&self, n: usize) -> Vec<Message> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while out.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "got {out:?}");
            for d in self
                .replies
                .receive(n - out.len(), Duration::from_millis(200))
                .await
                .expect("receive")
            {
                out.push(d.message().clone());
                d.ack().await.expect("ack");
            }
        }
        out
    }

    async fn drained(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.queue.depth().await.expect("depth") > 0 {
            assert!(tokio::time::Instant::now() < deadline, "request not acked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the dead-letter queue holds `n`: a request is FAILED in
    /// the store a moment before its message gets there.
    async fn dead_lettered(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.queue.dead_letter_depth().await.expect("dlq depth") < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never dead-lettered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn check_reply(reply: &Message, record: &RequestRecord) {
    assert_eq!(
        reply.attributes.get("correlation_id"),
        Some(&record.correlation_id.to_string())
    );
    assert_eq!(
        reply.attributes.get("status").map(String::as_str),
        Some(record.status.as_str())
    );
    let body: Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(body, record.response_body());
}

#[tokio::test]
async fn the_reply_queue_gets_every_finished_request_with_its_correlation_id() {
    let rig = rig();
    let (stop, pool) = rig.start(vec![rig.reply_sink()]);
    let ok = rig
        .submit(json!({"payload": {"operation": "uppercase", "data": "hi"}}))
        .await;
    let failed = rig
        .submit(json!({"payload": {"operation": "fail", "permanent": true}}))
        .await;
    let replies = rig.replies(2).await;
    for reply in &replies {
        let id: CorrelationId = reply.attributes["correlation_id"].parse().expect("id");
        let record = rig.store.get(id).await.expect("get").expect("record");
        check_reply(reply, &record);
    }
    let by_id = |id: CorrelationId| {
        replies
            .iter()
            .find(|r| r.attributes["correlation_id"] == id.to_string())
            .map(|r| serde_json::from_slice::<Value>(&r.body).expect("json"))
            .expect("reply")
    };
    assert_eq!(by_id(ok)["status"], "COMPLETED");
    assert_eq!(by_id(ok)["result"]["output"], "HI");
    assert_eq!(by_id(failed)["status"], "FAILED");
    rig.drained().await;
    stop.send(true).expect("stop");
    pool.await.expect("pool");
    rig.db.close().await;
}

#[tokio::test]
async fn a_redelivered_finished_request_is_reported_again_before_its_ack() {
    // The worker died after storing COMPLETED and before the sinks ran (or
    // before acking): the message comes back and finds the request finished.
    let rig = rig();
    let id = CorrelationId::new();
    rig.store
        .create(RequestRecord::pending(id, openhqm_core::time::now_ms()))
        .await
        .expect("create");
    for update in [
        Update {
            to: RequestStatus::Processing,
            attempts: Some(1),
            outcome: None,
            redrive: None,
            hold: None,
        },
        Update {
            to: RequestStatus::Completed,
            attempts: Some(1),
            outcome: Some(Box::new(ResultData {
                result: Some(json!({"stored": true})),
                completed_at_ms: Some(1),
                ..ResultData::default()
            })),
            redrive: None,
            hold: None,
        },
    ] {
        rig.store.transition(id, update).await.expect("transition");
    }
    rig.publish(&Rig::envelope(
        id,
        json!({"payload": {"operation": "echo"}}),
    ))
    .await;
    let (stop, pool) = rig.start(vec![rig.reply_sink()]);
    let replies = rig.replies(1).await;
    let record = rig.store.get(id).await.expect("get").expect("record");
    assert_eq!(
        record.outcome.as_ref().and_then(|o| o.result.clone()),
        Some(json!({"stored": true})),
        "not processed again"
    );
    check_reply(&replies[0], &record);
    rig.drained().await;
    assert_eq!(rig.queue.dead_letter_depth().await.expect("dlq"), 0);
    stop.send(true).expect("stop");
    pool.await.expect("pool");
    rig.db.close().await;
}

/// Fails its first `fail_times` calls, then hands over to the reply queue.
struct FailingFirst {
    fail_times: u32,
    calls: AtomicU32,
    inner: Arc<ReplyQueueSink>,
}

#[async_trait]
impl CompletionSink for FailingFirst {
    fn name(&self) -> &'static str {
        "failing_first"
    }

    async fn finished(&self, envelope: &Envelope, record: &RequestRecord) -> Result<(), SinkError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_times {
            return Err(SinkError {
                sink: "failing_first",
                message: "not now".into(),
                retryable: true,
            });
        }
        self.inner.finished(envelope, record).await
    }
}

#[tokio::test]
async fn a_failing_sink_holds_the_delivery_until_it_takes_the_request() {
    let rig = rig();
    let sink = Arc::new(FailingFirst {
        fail_times: 2,
        calls: AtomicU32::new(0),
        inner: rig.reply_sink(),
    });
    let (stop, pool) = rig.start(vec![Arc::clone(&sink) as Arc<dyn CompletionSink>]);
    let id = rig
        .submit(json!({"payload": {"operation": "reverse", "data": "ab"}}))
        .await;
    let replies = rig.replies(1).await;
    rig.drained().await;
    assert_eq!(sink.calls.load(Ordering::SeqCst), 3);
    let record = rig.store.get(id).await.expect("get").expect("record");
    assert_eq!(record.status, RequestStatus::Completed);
    assert_eq!(
        record.attempts, 1,
        "processed once; only the sink was retried"
    );
    check_reply(&replies[0], &record);
    assert!(
        rig.metrics
            .render()
            .contains("openhqm_worker_errors_total{kind=\"sink\"} 2")
    );
    stop.send(true).expect("stop");
    pool.await.expect("pool");
    rig.db.close().await;
}

#[tokio::test]
async fn a_failed_request_whose_sink_failed_is_still_dead_lettered() {
    let rig = rig();
    let sink = Arc::new(FailingFirst {
        fail_times: 1,
        calls: AtomicU32::new(0),
        inner: rig.reply_sink(),
    });
    let (stop, pool) = rig.start(vec![Arc::clone(&sink) as Arc<dyn CompletionSink>]);
    let id = rig
        .submit(
            json!({"payload": {"operation": "fail", "permanent": true, "error": "no such order"}}),
        )
        .await;
    let replies = rig.replies(1).await;
    let record = rig.store.get(id).await.expect("get").expect("record");
    assert_eq!(record.status, RequestStatus::Failed);
    check_reply(&replies[0], &record);
    // The redelivery that reported it must settle it as its first delivery
    // would have: in the dead-letter queue, with the reason, for redrive.
    rig.dead_lettered(1).await;
    rig.drained().await;
    assert_eq!(sink.calls.load(Ordering::SeqCst), 2);
    let dead = rig.queue.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("no such order"),
        "{}",
        dead[0].reason
    );
    stop.send(true).expect("stop");
    pool.await.expect("pool");
    rig.db.close().await;
}

#[tokio::test]
async fn a_redelivered_failed_request_is_dead_lettered_without_sinks_too() {
    // The worker died after storing FAILED and before the dead-letter move.
    let rig = rig();
    let id = rig
        .submit(json!({"payload": {"operation": "echo", "data": 1}}))
        .await;
    let failed = Update {
        to: RequestStatus::Failed,
        attempts: Some(4),
        outcome: Some(Box::new(ResultData {
            error: Some("backend said no".into()),
            ..ResultData::default()
        })),
        redrive: None,
        hold: None,
    };
    rig.store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    rig.store.transition(id, failed).await.expect("failed");
    let (stop, pool) = rig.start(Vec::new());
    rig.dead_lettered(1).await;
    rig.drained().await;
    let dead = rig.queue.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead[0].reason, "backend said no");
    let record = rig.store.get(id).await.expect("get").expect("record");
    assert_eq!(record.status, RequestStatus::Failed, "not processed again");
    assert!(
        rig.metrics
            .render()
            .contains("openhqm_queue_dlq_total{queue=\"requests\",status=\"FAILED\"} 1"),
        "{}",
        rig.metrics.render()
    );
    stop.send(true).expect("stop");
    pool.await.expect("pool");
    rig.db.close().await;
}

/// Fails only its `fail_on`-th call (1-based), then hands over.
struct FailingCall {
    fail_on: u32,
    calls: AtomicU32,
    inner: Arc<ReplyQueueSink>,
}

#[async_trait]
impl CompletionSink for FailingCall {
    fn name(&self) -> &'static str {
        "failing_call"
    }

    async fn finished(&self, envelope: &Envelope, record: &RequestRecord) -> Result<(), SinkError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_on {
            return Err(SinkError {
                sink: "failing_call",
                message: "not now".into(),
                retryable: true,
            });
        }
        self.inner.finished(envelope, record).await
    }
}

#[tokio::test]
async fn a_redrive_reopens_a_request_once_however_often_its_message_comes_back() {
    let rig = rig();
    // The sink fails when told about the redriven run's FAILED, so that
    // message comes back still marked as a redrive.
    let sink = Arc::new(FailingCall {
        fail_on: 2,
        calls: AtomicU32::new(0),
        inner: rig.reply_sink(),
    });
    let (stop, pool) = rig.start(vec![Arc::clone(&sink) as Arc<dyn CompletionSink>]);
    let id = rig
        .submit(json!({"payload": {"operation": "fail", "permanent": true}}))
        .await;
    rig.dead_lettered(1).await;
    assert_eq!(rig.queue.redrive(10).await.expect("redrive"), 1);
    rig.dead_lettered(1).await;
    rig.drained().await;
    assert_eq!(sink.calls.load(Ordering::SeqCst), 3);
    let record = rig.store.get(id).await.expect("get").expect("record");
    assert_eq!(record.status, RequestStatus::Failed);
    assert!(record.redriven_at_ms.is_some());
    let metrics = rig.metrics.render();
    assert!(
        metrics.contains("openhqm_worker_processing_duration_seconds_count{outcome=\"failed\"} 2"),
        "processed once, and once more for the redrive only: {metrics}"
    );
    stop.send(true).expect("stop");
    pool.await.expect("pool");
    rig.db.close().await;
}

/// Can never take a request, as a reply queue cannot take a reply larger
/// than its messages may be.
struct NeverFits {
    calls: AtomicU32,
}

#[async_trait]
impl CompletionSink for NeverFits {
    fn name(&self) -> &'static str {
        "never_fits"
    }

    async fn finished(&self, _: &Envelope, _: &RequestRecord) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(SinkError {
            sink: "never_fits",
            message: "payload too large".into(),
            retryable: false,
        })
    }
}

#[tokio::test]
async fn a_sink_that_can_never_take_a_request_does_not_hold_its_message() {
    let rig = rig();
    let sink = Arc::new(NeverFits {
        calls: AtomicU32::new(0),
    });
    let (stop, pool) = rig.start(vec![Arc::clone(&sink) as Arc<dyn CompletionSink>]);
    let id = rig.submit(json!({"payload": {"operation": "echo"}})).await;
    rig.drained().await;
    let record = rig.store.get(id).await.expect("get").expect("record");
    assert_eq!(record.status, RequestStatus::Completed);
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        1,
        "told once; the message was settled, not redelivered"
    );
    assert_eq!(rig.queue.dead_letter_depth().await.expect("dlq"), 0);
    stop.send(true).expect("stop");
    pool.await.expect("pool");
    rig.db.close().await;
}
