//! The embedded queue when its storage stops taking writes, or a caller
//! goes away in the middle of one; and what a publish waits for.

use std::sync::Arc;
use std::task::Poll;
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

/// A publish in full (what a 202 waits for) returns only once a sync that
/// covers it is done, and concurrent publishes share their syncs (group
/// commit) instead of taking one each. The syncer is idle here, so every
/// sync counted was asked for by a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_full_publishes_return_after_a_sync_they_share() {
    const N: u64 = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        sync_every: Duration::from_secs(3600),
        ..Options::default()
    };
    let db = EmbeddedDb::open(dir.path(), &options).expect("db");
    let queue = Arc::new(EmbeddedQueue::open(db.clone(), config()).expect("queue"));
    // The writer is held, so every publish below is queued before any of
    // them is committed, however the threads are scheduled.
    let (release, held) = std::sync::mpsc::channel::<()>();
    db.write_detached(move |_| {
        let _ = held.recv();
    })
    .expect("writer running");
    let before = db.syncs();
    let mut publishes = Vec::new();
    for i in 0..N {
        let (queue, db) = (Arc::clone(&queue), db.clone());
        // Reads the sync count the moment its publish returns.
        let mut publish = Box::pin(async move {
            let message = OutgoingMessage::new(format!("m{i}").into_bytes());
            queue.publish(message).await.expect("publish");
            db.syncs()
        });
        // Polled once, its write is handed to the writer.
        let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
        assert!(
            first.is_pending(),
            "publish {i} returned before it was committed"
        );
        publishes.push(tokio::spawn(publish));
    }
    release.send(()).expect("writer waiting");
    for (i, publish) in publishes.into_iter().enumerate() {
        let seen = publish.await.expect("join");
        assert!(seen > before, "publish {i} returned before any sync");
    }
    let syncs = db.syncs() - before;
    assert!(
        (1..N).contains(&syncs),
        "{N} concurrent publishes took {syncs} syncs: they share none"
    );
}

#[tokio::test]
async fn an_undecodable_stored_message_is_dead_lettered_not_a_wedge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
    // What a torn or foreign write would leave: not a message record.
    let ks = db.keyspace("requests").expect("keyspace");
    let garbage = b"\xffnot a record".to_vec();
    let stored = garbage.clone();
    db.write(openhqm_embedded::Wait::Durable, move |ctx| {
        ctx.insert(&ks, &0u64.to_be_bytes(), stored);
    })
    .await
    .expect("write");
    let queue = EmbeddedQueue::open(db.clone(), config()).expect("opens despite the bad record");
    queue
        .publish(OutgoingMessage::new(b"good".to_vec()))
        .await
        .expect("publish");
    let got = queue
        .receive(2, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message().body.as_ref(), b"good");
    // The move is written behind the receive; wait for it to land.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let dead = loop {
        let dead = queue.dead_letters(10).await.expect("dead letters");
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("cannot be decoded"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].message.body.as_ref(), garbage.as_slice());
    // Counted when the move is applied, which listing it proves.
    assert_eq!(queue.dead_letter_depth().await.expect("dlq depth"), 1);
    assert_eq!(
        queue.depth().await.expect("depth"),
        1,
        "only the good one is left"
    );
}

#[tokio::test]
async fn a_lease_cut_short_by_a_crash_counts_and_one_ended_by_close_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reopen = || async {
        let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
        let queue = EmbeddedQueue::open(db.clone(), config()).expect("queue");
        (db, queue)
    };

    let (db, queue) = reopen().await;
    queue
        .publish(OutgoingMessage::new(b"m".to_vec()))
        .await
        .expect("publish");
    assert_eq!(next_attempt(&queue).await, 1);
    // A crash: the process ends with the lease held and nothing settled.
    drop(queue);
    db.close().await;
    drop(db);

    let (db, queue) = reopen().await;
    assert_eq!(next_attempt(&queue).await, 2, "the crashed attempt counts");
    // A clean shutdown with the work abandoned.
    queue.close().await;
    drop(queue);
    db.close().await;
    drop(db);

    let (db, queue) = reopen().await;
    assert_eq!(
        next_attempt(&queue).await,
        2,
        "a shutdown uses up no attempt"
    );
    db.close().await;
}

/// The attempt of the next delivery, left unsettled.
async fn next_attempt(queue: &EmbeddedQueue) -> u32 {
    let got = queue
        .receive(1, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    got[0].message().attempt
}

#[tokio::test]
async fn a_damaged_dead_letter_hides_no_other_and_blocks_no_redrive() {
    let (_dir, db, queue) = queue().await;
    damage_dead_letter(&db, 0).await;
    // Opened again, the queue numbers new dead letters after the damaged one.
    queue.close().await;
    let queue = EmbeddedQueue::open(db.clone(), config()).expect("queue");
    dead_lettered(&queue, b"m").await;
    assert_eq!(queue.dead_letter_depth().await.expect("depth"), 2);
    // A limit of one counts readable letters only: the damaged one ahead
    // of it takes no place.
    let dead = queue.dead_letters(1).await.expect("listing still works");
    assert_eq!(dead.len(), 1, "the readable one is listed");
    assert_eq!(dead[0].message.body.as_ref(), b"m");
    assert_eq!(queue.redrive(1).await.expect("redrive still works"), 1);
    let again = queue
        .receive(1, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(again[0].message().body.as_ref(), b"m");
}

/// Publishes `body`, takes it and dead-letters it.
async fn dead_lettered(queue: &EmbeddedQueue, body: &[u8]) {
    published_and_taken(queue, body)
        .await
        .nack(Nack::DeadLetter {
            reason: "bad".into(),
        })
        .await
        .expect("dead-letter");
}

/// The wall clock's next millisecond (epoch ms), once it has begun: later
/// than every dead letter so far, and no later than any to come.
async fn next_millisecond() -> u64 {
    let now = || {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        u64::try_from(since.as_millis()).expect("ms fit u64")
    };
    let start = now();
    loop {
        let t = now();
        if t > start {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Stores an unreadable record as dead letter number `seq`.
async fn damage_dead_letter(db: &EmbeddedDb, seq: u64) {
    let dlq = db.keyspace("requests-dlq").expect("keyspace");
    db.write(openhqm_embedded::Wait::Durable, move |ctx| {
        ctx.insert(&dlq, &seq.to_be_bytes(), b"\xffdamaged".to_vec());
    })
    .await
    .expect("write");
}

/// An unreadable dead letter has no date: trimming goes by its place, and
/// deletes it with a readable expired one after it, never before.
#[tokio::test]
async fn trimming_dates_a_damaged_dead_letter_by_its_place() {
    let (_dir, db, mut queue) = queue().await;
    for (body, damaged) in [(&b"old-1"[..], 1), (b"old-2", 3)] {
        dead_lettered(&queue, body).await;
        damage_dead_letter(&db, damaged).await;
        queue.close().await;
        queue = EmbeddedQueue::open(db.clone(), config()).expect("queue");
    }
    let cut = next_millisecond().await;
    dead_lettered(&queue, b"new").await;
    assert_eq!(queue.dead_letter_depth().await.expect("depth"), 5);

    // old-1, the damaged one after it, old-2; not the damaged one before "new".
    assert_eq!(queue.trim_dead_letters(cut).await.expect("trim"), 3);
    assert_eq!(queue.dead_letter_depth().await.expect("depth"), 2);
    let left = queue.dead_letters(10).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message.body.as_ref(), b"new");
    assert_eq!(
        queue.trim_dead_letters(u64::MAX).await.expect("trim all"),
        2
    );
    assert_eq!(queue.dead_letter_depth().await.expect("depth"), 0);
}

/// Re-dates dead letter number `seq` to `at_ms` (the record's bytes 1..9).
async fn date_dead_letter(db: &EmbeddedDb, seq: u64, at_ms: u64) {
    let dlq = db.keyspace("requests-dlq").expect("keyspace");
    db.write(openhqm_embedded::Wait::Durable, move |ctx| {
        let key = seq.to_be_bytes();
        let mut raw = ctx.get(&dlq, &key).expect("read").expect("stored").to_vec();
        raw[1..9].copy_from_slice(&at_ms.to_be_bytes());
        ctx.insert(&dlq, &key, raw);
    })
    .await
    .expect("write");
}

/// A dead letter stamped by a clock far ahead is dated by its place, like
/// an unreadable one: it does not hold up trimming until that date.
#[tokio::test]
async fn a_dead_letter_dated_far_ahead_does_not_hold_up_trimming() {
    let (_dir, db, queue) = queue().await;
    for body in [&b"old-1"[..], b"ahead", b"old-2"] {
        dead_lettered(&queue, body).await;
    }
    let year_ahead = next_millisecond().await + 365 * 24 * 3600 * 1000;
    date_dead_letter(&db, 1, year_ahead).await;
    let cut = next_millisecond().await;
    dead_lettered(&queue, b"new").await;

    assert_eq!(queue.trim_dead_letters(cut).await.expect("trim"), 3);
    let left = queue.dead_letters(10).await.expect("list");
    let bodies: Vec<&[u8]> = left.iter().map(|d| d.message.body.as_ref()).collect();
    assert_eq!(bodies, [&b"new"[..]]);
}

/// Trimming a backlog larger than one writer job takes several, each
/// resuming where the last one stopped, and counts what it deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_a_large_backlog_takes_several_jobs() {
    let (_dir, _db, queue) = queue().await;
    let queue = std::sync::Arc::new(queue);
    let n = 2500;
    let publishes: Vec<_> = (0..n)
        .map(|i| {
            let queue = std::sync::Arc::clone(&queue);
            tokio::spawn(async move {
                queue
                    .publish(OutgoingMessage::new(format!("m{i}").into_bytes()))
                    .await
            })
        })
        .collect();
    for p in publishes {
        p.await.expect("join").expect("publish");
    }
    let mut dead = 0;
    while dead < n {
        for d in queue
            .receive(500, Duration::from_secs(1))
            .await
            .expect("receive")
        {
            d.nack(Nack::DeadLetter {
                reason: "bad".into(),
            })
            .await
            .expect("dead-letter");
            dead += 1;
        }
    }
    assert_eq!(queue.dead_letter_depth().await.expect("depth"), n);
    assert_eq!(queue.trim_dead_letters(u64::MAX).await.expect("trim"), n);
    assert_eq!(queue.dead_letter_depth().await.expect("depth"), 0);
    assert!(queue.dead_letters(10).await.expect("list").is_empty());
}
