//! The embedded queue when its storage stops taking writes.

use std::time::Duration;

use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_queue::{Nack, OutgoingMessage, QueueBackend};

async fn queue() -> (tempfile::TempDir, EmbeddedDb, EmbeddedQueue) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
    let config = EmbeddedQueueConfig {
        name: "requests".into(),
        dead_letter_name: "requests-dlq".into(),
        lease: Duration::from_secs(60),
        max_payload: 1 << 20,
    };
    let queue = EmbeddedQueue::open(db.clone(), config).expect("queue");
    (dir, db, queue)
}

#[tokio::test]
async fn a_nack_that_cannot_be_written_leaves_the_message_waiting() {
    for nack in [
        Nack::Retry {
            delay: Duration::ZERO,
        },
        Nack::DeadLetter {
            reason: "bad".into(),
        },
    ] {
        let (_dir, db, queue) = queue().await;
        queue
            .publish(OutgoingMessage::new(b"m".to_vec()))
            .await
            .expect("publish");
        let first = queue
            .receive(1, Duration::from_secs(1))
            .await
            .expect("receive")
            .pop()
            .expect("a delivery");
        db.close().await; // writes fail from here on
        first.nack(nack.clone()).await.expect_err("the write fails");
        assert_eq!(queue.depth().await.expect("depth"), 1, "{nack:?}");
        let again = queue
            .receive(1, Duration::from_secs(1))
            .await
            .expect("receive");
        assert_eq!(again.len(), 1, "{nack:?}: the message is handed out again");
        assert_eq!(again[0].message().body.as_ref(), b"m");
    }
}
