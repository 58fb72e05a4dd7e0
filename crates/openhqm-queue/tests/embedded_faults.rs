//! The embedded queue when its storage stops taking writes, or a caller
//! goes away in the middle of one.

use std::time::Duration;

use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_queue::{Delivery, Nack, OutgoingMessage, QueueBackend};

fn config() -> EmbeddedQueueConfig {
    EmbeddedQueueConfig {
        name: "requests".into(),
        dead_letter_name: "requests-dlq".into(),
        lease: Duration::from_secs(60),
        max_payload: 1 << 20,
    }
}

async fn queue() -> (tempfile::TempDir, EmbeddedDb, EmbeddedQueue) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
    let queue = EmbeddedQueue::open(db.clone(), config()).expect("queue");
    (dir, db, queue)
}

/// Publishes `body` and takes it back as one delivery.
async fn published_and_taken(queue: &EmbeddedQueue, body: &[u8]) -> Delivery {
    queue
        .publish(OutgoingMessage::new(body.to_vec()))
        .await
        .expect("publish");
    queue
        .receive(1, Duration::from_secs(1))
        .await
        .expect("receive")
        .pop()
        .expect("a delivery")
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
        let first = published_and_taken(&queue, b"m").await;
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

#[tokio::test]
async fn a_publish_whose_caller_went_away_mid_write_is_still_delivered() {
    let (_dir, db, queue) = queue().await;
    // The writer is held in a job of its own until released, so the publish
    // below cannot commit before its caller goes away, however the threads
    // are scheduled.
    let (release, held) = std::sync::mpsc::channel::<()>();
    db.write_detached(move |_| {
        let _ = held.recv();
    })
    .expect("writer running");
    // Polled once (the write is handed to the writer), then dropped, as a
    // handler is when its client disconnects.
    let mut publish = queue.publish(OutgoingMessage::new(b"orphan".to_vec()));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(publish.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "cut off before it committed");
    drop(publish);
    release.send(()).expect("writer waiting");
    let got = queue
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1, "the stored message is receivable");
    assert_eq!(got[0].message().body.as_ref(), b"orphan");
}
