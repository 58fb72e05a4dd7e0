//! The worker pool on a real embedded queue and store in a temporary
//! directory: the rig of this crate's tests, and of the proxy processor's
//! (`openhqm-upstream/tests/worker.rs` includes this file by path).
#![allow(dead_code)] // each test file uses its own subset

use std::sync::Arc;
use std::time::Duration;

use openhqm_core::{CorrelationId, Envelope, RequestRecord};
use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_metrics::Metrics;
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_queue::{DeadLetter, OutgoingMessage, QueueBackend};
use openhqm_store::ResultStore;
use openhqm_store::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use openhqm_worker::{Processor, WorkerConfig, WorkerPool};
use tokio::sync::watch;

/// How long a request may take to finish before a test fails.
const FINISH_WITHIN: Duration = Duration::from_secs(10);

pub struct Rig {
    _dir: tempfile::TempDir,
    pub db: EmbeddedDb,
    pub queue: Arc<dyn QueueBackend>,
    pub store: Arc<dyn ResultStore>,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    pool: tokio::task::JoinHandle<usize>,
}

/// A running pool of `processor`, its queue's lease `config.lease`.
pub async fn rig(processor: Arc<dyn Processor>, config: WorkerConfig) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
    let qc = EmbeddedQueueConfig {
        name: "requests".into(),
        dead_letter_name: "requests-dlq".into(),
        lease: config.lease,
        max_payload: 1 << 20,
    };
    let queue: Arc<dyn QueueBackend> =
        Arc::new(EmbeddedQueue::open(db.clone(), qc).expect("queue"));
    let sc = EmbeddedStoreConfig {
        ttl: Duration::from_secs(600),
        sweep_interval: Duration::from_secs(60),
    };
    let store: Arc<dyn ResultStore> =
        Arc::new(EmbeddedStore::open(db.clone(), &sc).expect("store"));
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
        metrics,
        stop,
        pool,
    }
}

impl Rig {
    /// Waits until every message is settled (the queue is empty).
    pub async fn wait_drained(&self) {
        let deadline = tokio::time::Instant::now() + FINISH_WITHIN;
        while self.queue.depth().await.expect("depth") > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "messages never settled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stores the PENDING record and publishes `env`, as submit does.
    pub async fn submit_envelope(&self, env: &Envelope) -> CorrelationId {
        let id = env.correlation_id;
        self.store
            .create(RequestRecord::pending(id, openhqm_core::time::now_ms()))
            .await
            .expect("create");
        self.queue
            .publish(OutgoingMessage::new(env.to_json().expect("json")))
            .await
            .expect("publish");
        id
    }

    /// Publishes another message for request `id` (payload `1`), as a
    /// producer's duplicate or an at-least-once redelivery would arrive.
    pub async fn publish_copy(&self, id: CorrelationId) {
        let env = serde_json::json!({"v": 1, "correlation_id": id.to_string(), "payload": 1});
        self.queue
            .publish(OutgoingMessage::new(
                serde_json::to_vec(&env).expect("json"),
            ))
            .await
            .expect("publish");
    }

    pub async fn wait_terminal(&self, id: CorrelationId) -> RequestRecord {
        let deadline = tokio::time::Instant::now() + FINISH_WITHIN;
        loop {
            if let Some(rec) = self.store.get(id).await.expect("get")
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

    /// The dead letters, once there are `n`: a request is FAILED in the
    /// store a moment before its message reaches the dead-letter queue.
    pub async fn dead_letters(&self, n: usize) -> Vec<DeadLetter> {
        let deadline = tokio::time::Instant::now() + FINISH_WITHIN;
        loop {
            let dead = self.queue.dead_letters(n + 1).await.expect("dlq");
            if dead.len() >= n {
                return dead;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} dead letters, not {n}",
                dead.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the pool, leaving the queue and store open to look at; how
    /// many messages it left for redelivery.
    pub async fn stop_workers(&mut self) -> usize {
        self.stop.send(true).expect("stop");
        (&mut self.pool).await.expect("pool")
    }

    /// Stops the pool and closes the database.
    pub async fn stop(mut self) -> usize {
        let abandoned = self.stop_workers().await;
        self.db.close().await;
        abandoned
    }
}
