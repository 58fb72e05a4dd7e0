//! The proxy processor under the real worker pool, embedded queue and store:
//! how the pool settles what the forwarder reports.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use common::*;
use openhqm_core::{Backoff, CorrelationId, Envelope, RequestRecord, RequestStatus};
use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_metrics::Metrics;
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_queue::{OutgoingMessage, QueueBackend};
use openhqm_store::ResultStore;
use openhqm_store::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use openhqm_upstream::{CircuitBreakerConfig, EndpointConfig};
use openhqm_worker::{Processor, WorkerConfig, WorkerPool};
use tokio::sync::watch;

struct Rig {
    _dir: tempfile::TempDir,
    db: EmbeddedDb,
    queue: Arc<dyn QueueBackend>,
    store: Arc<dyn ResultStore>,
    stop: watch::Sender<bool>,
    pool: tokio::task::JoinHandle<usize>,
}

async fn rig(processor: Arc<dyn Processor>, backoff: Backoff) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path(), &Options::default()).unwrap();
    let lease = Duration::from_secs(5);
    let qc = EmbeddedQueueConfig {
        name: "requests".into(),
        dead_letter_name: "requests-dlq".into(),
        lease,
        max_payload: 1 << 20,
    };
    let queue: Arc<dyn QueueBackend> = Arc::new(EmbeddedQueue::open(db.clone(), qc).unwrap());
    let sc = EmbeddedStoreConfig {
        ttl: Duration::from_secs(600),
        sweep_interval: Duration::from_secs(60),
    };
    let store: Arc<dyn ResultStore> = Arc::new(EmbeddedStore::open(db.clone(), &sc).unwrap());
    let config = WorkerConfig {
        count: 2,
        batch_size: 4,
        timeout: Duration::from_secs(10),
        backoff,
        lease,
        drain: Duration::from_secs(5),
        unavailable_backoff: Duration::from_millis(50),
    };
    let metrics = Metrics::new();
    let pool = WorkerPool::new(
        Arc::clone(&queue),
        Arc::clone(&store),
        processor,
        config,
        (metrics.worker(), metrics.queue("requests")),
    );
    let (stop, stopped) = watch::channel(false);
    let pool = tokio::spawn(pool.run(stopped));
    Rig {
        _dir: dir,
        db,
        queue,
        store,
        stop,
        pool,
    }
}

impl Rig {
    async fn submit(&self, env: &Envelope) -> CorrelationId {
        let id = env.correlation_id;
        let now = openhqm_core::time::now_ms();
        self.store
            .create(RequestRecord::pending(id, now))
            .await
            .unwrap();
        let body = env.to_json().unwrap();
        self.queue
            .publish(OutgoingMessage::new(body))
            .await
            .unwrap();
        id
    }

    async fn wait_terminal(&self, id: CorrelationId, within: Duration) -> RequestRecord {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(rec) = self.store.get(id).await.unwrap()
                && rec.status.is_terminal()
            {
                return rec;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never finished"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.pool.await.unwrap();
        self.db.close().await;
    }
}

/// A backend answering 500 to its first `failures` requests, then 200.
async fn recovering(failures: u32) -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let router = Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let status = if n <= failures { 500 } else { 200 };
            answer(
                status,
                &[("content-type", "application/json")],
                format!("{{\"call\":{n}}}"),
            )
        }
    });
    (url(serve(router).await), calls)
}

#[tokio::test]
async fn an_open_breaker_holds_the_request_without_using_up_its_retries() {
    let (backend, calls) = recovering(2).await;
    let mut e = EndpointConfig::with_url(backend);
    e.circuit_breaker = Some(CircuitBreakerConfig {
        failure_threshold: 2,
        open_seconds: 1,
        half_open_max: 1,
    });
    // Three attempts, retried within a fifth of a second: without the breaker
    // holding the message, the third would hit the open breaker and fail.
    e.max_retries = Some(2);
    let processor = Arc::new(processor(&config(e)));
    let backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
        max_retries: 2,
    };
    let rig = rig(processor, backoff).await;
    let id = rig.submit(&envelope("{}", &[])).await;
    let rec = rig.wait_terminal(id, Duration::from_secs(10)).await;
    let outcome = rec.outcome.clone().unwrap();
    assert_eq!(rec.status, RequestStatus::Completed, "{:?}", outcome.error);
    assert_eq!(outcome.status_code, Some(200));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "500, 500, then the trial");
    assert_eq!(
        rec.attempts, 3,
        "the waits for the breaker were no attempts"
    );
    assert!(rig.queue.dead_letters(1).await.unwrap().is_empty());
    rig.stop().await;
}
