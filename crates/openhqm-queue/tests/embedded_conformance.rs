//! The conformance suite against the embedded queue, on a real fjall
//! database in a temporary directory.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_queue::QueueBackend;
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_queue::conformance::Harness;

struct Embedded {
    dir: tempfile::TempDir,
    db: Mutex<Option<EmbeddedDb>>,
}

impl Embedded {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            db: Mutex::new(None),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn open_queue(&self) -> Arc<dyn QueueBackend> {
        let db = EmbeddedDb::open(&self.path(), &Options::default()).expect("open db");
        *self.db.lock().expect("lock") = Some(db.clone());
        let config = EmbeddedQueueConfig {
            name: "conformance".into(),
            dead_letter_name: "conformance-dlq".into(),
            lease: self.lease(),
            max_payload: 64 * 1024,
        };
        Arc::new(EmbeddedQueue::open(db, config).expect("open queue"))
    }
}

#[async_trait]
impl Harness for Embedded {
    async fn open(&self) -> Arc<dyn QueueBackend> {
        self.open_queue()
    }

    async fn restart(&self, queue: Arc<dyn QueueBackend>) -> Arc<dyn QueueBackend> {
        queue.close().await;
        drop(queue);
        let db = self.db.lock().expect("lock").take();
        if let Some(db) = db {
            db.close().await;
        }
        self.open_queue()
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(400)
    }
}

openhqm_queue::conformance_tests!(Embedded::new());
