//! The conformance suite every queue backend runs.
//!
//! Each scenario is a plain `pub async fn` taking a [`Harness`];
//! [`conformance_tests!`](crate::conformance_tests) expands them into one
//! `#[tokio::test]` per scenario in the backend's test file, so a failure names
//! both the backend and the promise it broke. Scenarios that depend on a
//! capability (priority, FIFO) check [`Capabilities`] and say so when skipped
//! by the capability, which is data, not an opinion of the test.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Delivery, Durability, Nack, OutgoingMessage, QueueBackend, QueueError};

/// What a backend's test file provides to run the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens the queue under test; every call in one harness sees the same
    /// stored messages (a fresh, empty queue per harness).
    async fn open(&self) -> Arc<dyn QueueBackend>;
    /// Closes `queue` as a process exit would (unsettled deliveries are
    /// abandoned) and opens it again.
    async fn restart(&self, queue: Arc<dyn QueueBackend>) -> Arc<dyn QueueBackend>;
    /// The lease the harness configured; kept short so tests run fast.
    fn lease(&self) -> Duration;
}

/// Expands every scenario into a `#[tokio::test]` using the harness built by `$make`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            round_trip_keeps_body_attributes_and_id,
            ack_prevents_redelivery,
            unacked_message_is_redelivered_after_lease,
            extended_lease_is_not_redelivered,
            retry_delay_is_honoured_with_attempt_plus_one,
            release_comes_back_as_the_same_attempt,
            dead_letter_and_redrive,
            concurrent_redrives_move_each_dead_letter_once,
            trimming_deletes_only_dead_letters_older_than_the_cut,
            competing_consumers_each_get_every_message_once,
            single_consumer_sees_publish_order,
            higher_priority_is_delivered_first,
            depth_counts_every_unacknowledged_message,
            restart_recovers_unacknowledged_messages,
            deferred_publishes_are_delivered_and_kept_once_synced,
            oversized_payload_is_rejected,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $make;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

const WAIT: Duration = Duration::from_secs(5);

fn msg(body: &str) -> OutgoingMessage {
    OutgoingMessage::new(Bytes::copy_from_slice(body.as_bytes()))
}

async fn publish(q: &dyn QueueBackend, body: &str) {
    q.publish(msg(body)).await.expect("publish");
}

async fn receive_one(q: &dyn QueueBackend, wait: Duration) -> Option<Delivery> {
    let mut got = q.receive(1, wait).await.expect("receive");
    assert!(got.len() <= 1, "receive(1) returned {} messages", got.len());
    got.pop()
}

async fn expect_one(q: &dyn QueueBackend) -> Delivery {
    receive_one(q, WAIT)
        .await
        .expect("a message within the wait")
}

fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.message().body).into_owned()
}

/// A message comes back with its body, attributes and an id; the id is the
/// same on redelivery.
pub async fn round_trip_keeps_body_attributes_and_id(h: &dyn Harness) {
    let q = h.open().await;
    let mut attributes = BTreeMap::new();
    attributes.insert("content-type".to_owned(), "application/json".to_owned());
    attributes.insert("traceparent".to_owned(), "00-abc-def-01".to_owned());
    let out = OutgoingMessage {
        body: Bytes::from_static(b"{\"hello\":\"world\",\"bytes\":\"\xc3\xa9\"}"),
        attributes: attributes.clone(),
        ..OutgoingMessage::default()
    };
    q.publish(out.clone()).await.expect("publish");
    let d = expect_one(q.as_ref()).await;
    assert_eq!(d.message().body, out.body);
    assert_eq!(d.message().attributes, attributes);
    assert_eq!(d.message().attempt, 1);
    let id = d.message().id.clone();
    assert!(!id.is_empty());
    d.nack(Nack::Retry {
        delay: Duration::ZERO,
    })
    .await
    .expect("nack");
    let again = expect_one(q.as_ref()).await;
    assert_eq!(again.message().id, id, "id is stable across redeliveries");
    assert_eq!(again.message().body, out.body);
    again.ack().await.expect("ack");
}

/// An acknowledged message is never delivered again, even after its lease.
pub async fn ack_prevents_redelivery(h: &dyn Harness) {
    let q = h.open().await;
    publish(q.as_ref(), "once").await;
    expect_one(q.as_ref()).await.ack().await.expect("ack");
    let again = receive_one(q.as_ref(), h.lease() * 3).await;
    assert!(
        again.is_none(),
        "acked message came back: {:?}",
        again.map(|d| body(&d))
    );
    assert_eq!(q.depth().await.expect("depth"), 0);
}

/// At-least-once: a delivery that is never settled comes back after its
/// lease with attempt + 1, and the stale holder can no longer settle it.
pub async fn unacked_message_is_redelivered_after_lease(h: &dyn Harness) {
    let q = h.open().await;
    publish(q.as_ref(), "lost-worker").await;
    let first = expect_one(q.as_ref()).await;
    let started = Instant::now();
    let second = receive_one(q.as_ref(), h.lease() * 4)
        .await
        .expect("redelivered after the lease");
    assert!(
        started.elapsed() + Duration::from_millis(50) >= h.lease(),
        "redelivered before the lease ran out"
    );
    assert_eq!(body(&second), "lost-worker");
    assert_eq!(second.message().id, first.message().id);
    assert_eq!(second.message().attempt, 2);
    let stale = first.ack().await;
    assert!(
        matches!(stale, Err(QueueError::LeaseLost(_))),
        "stale ack: {stale:?}"
    );
    second.ack().await.expect("ack by the current holder");
    assert_eq!(q.depth().await.expect("depth"), 0);
}

/// Extending a lease keeps the message from being handed to anyone else.
pub async fn extended_lease_is_not_redelivered(h: &dyn Harness) {
    let q = h.open().await;
    publish(q.as_ref(), "long-job").await;
    let mut d = expect_one(q.as_ref()).await;
    let until = Instant::now() + h.lease() * 2;
    while Instant::now() < until {
        d.extend(h.lease()).await.expect("extend");
        let other = receive_one(q.as_ref(), h.lease() / 3).await;
        assert!(other.is_none(), "leased message was handed out twice");
    }
    d.ack().await.expect("ack");
}

/// A retry is held for its delay and comes back with attempt + 1.
pub async fn retry_delay_is_honoured_with_attempt_plus_one(h: &dyn Harness) {
    let q = h.open().await;
    publish(q.as_ref(), "flaky").await;
    let d = expect_one(q.as_ref()).await;
    let delay = Duration::from_millis(600);
    let nacked_at = Instant::now();
    d.nack(Nack::Retry { delay }).await.expect("nack");
    assert!(
        receive_one(q.as_ref(), Duration::from_millis(200))
            .await
            .is_none(),
        "came back before its delay"
    );
    let again = expect_one(q.as_ref()).await;
    assert!(
        nacked_at.elapsed() + Duration::from_millis(2) >= delay,
        "came back after {:?}",
        nacked_at.elapsed()
    );
    assert_eq!(again.message().attempt, 2);
    assert_eq!(body(&again), "flaky");
    again.ack().await.expect("ack");
}

/// A release is held for its delay and comes back as the same attempt; a
/// retry after it still counts.
pub async fn release_comes_back_as_the_same_attempt(h: &dyn Harness) {
    let q = h.open().await;
    publish(q.as_ref(), "waiting on a dependency").await;
    let d = expect_one(q.as_ref()).await;
    let delay = Duration::from_millis(300);
    let released_at = Instant::now();
    d.nack(Nack::Release { delay }).await.expect("release");
    let again = expect_one(q.as_ref()).await;
    // Due times are whole wall-clock milliseconds: allow for the rounding.
    let slack = Duration::from_millis(2);
    assert!(
        released_at.elapsed() + slack >= delay,
        "came back before its delay"
    );
    assert_eq!(again.message().attempt, 1);
    again
        .nack(Nack::Retry {
            delay: Duration::ZERO,
        })
        .await
        .expect("retry");
    assert_eq!(expect_one(q.as_ref()).await.message().attempt, 2);
}

/// A dead letter keeps its reason and body, and redrive puts it back with
/// attempt 1, marked as redriven.
pub async fn dead_letter_and_redrive(h: &dyn Harness) {
    let q = h.open().await;
    publish(q.as_ref(), "poison").await;
    let d = expect_one(q.as_ref()).await;
    d.nack(Nack::DeadLetter {
        reason: "cannot parse".into(),
    })
    .await
    .expect("dead-letter");
    assert_eq!(q.depth().await.expect("depth"), 0);
    assert_eq!(q.dead_letter_depth().await.expect("dlq depth"), 1);
    let dead = q.dead_letters(10).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "cannot parse");
    assert_eq!(dead[0].message.body, Bytes::from_static(b"poison"));
    assert!(
        receive_one(q.as_ref(), h.lease() * 2).await.is_none(),
        "dead letter was delivered"
    );
    assert_eq!(q.redrive(10).await.expect("redrive"), 1);
    assert_eq!(q.dead_letter_depth().await.expect("dlq depth"), 0);
    let back = expect_one(q.as_ref()).await;
    assert_eq!(body(&back), "poison");
    assert_eq!(back.message().attempt, 1);
    let at = back.message().attributes.get(crate::REDRIVEN);
    assert!(
        at.and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t > 0),
        "redriven message not marked: {:?}",
        back.message().attributes
    );
    back.ack().await.expect("ack");
}

/// Redrives that race each other move every dead letter back exactly once.
pub async fn concurrent_redrives_move_each_dead_letter_once(h: &dyn Harness) {
    let q = h.open().await;
    let n = 20;
    for i in 0..n {
        publish(q.as_ref(), &format!("d{i}")).await;
    }
    for _ in 0..n {
        expect_one(q.as_ref())
            .await
            .nack(Nack::DeadLetter {
                reason: "given up".into(),
            })
            .await
            .expect("dead-letter");
    }
    let (a, b, c, d) = tokio::join!(q.redrive(n), q.redrive(n), q.redrive(n), q.redrive(n));
    let moved: u64 = [a, b, c, d].into_iter().map(|r| r.expect("redrive")).sum();
    assert_eq!(moved, n as u64, "moved in all");
    assert_eq!(q.dead_letter_depth().await.expect("dlq depth"), 0);
    let mut seen = HashSet::new();
    while let Some(d) = receive_one(q.as_ref(), Duration::from_millis(300)).await {
        assert!(seen.insert(body(&d)), "{} redriven twice", body(&d));
        d.ack().await.expect("ack");
    }
    assert_eq!(seen.len(), n);
}

/// Trimming deletes exactly the dead letters older than the cut, and the
/// count follows across a restart; a redriven message is no longer one.
pub async fn trimming_deletes_only_dead_letters_older_than_the_cut(h: &dyn Harness) {
    let q = h.open().await;
    let dead_letter = async |q: &dyn QueueBackend, body: &str| {
        publish(q, body).await;
        expect_one(q)
            .await
            .nack(Nack::DeadLetter {
                reason: "given up".into(),
            })
            .await
            .expect("dead-letter");
    };
    dead_letter(q.as_ref(), "old-1").await;
    dead_letter(q.as_ref(), "old-2").await;
    // Not synchronisation: a margin between clock readings either side of
    // the cut, whichever clock (ours, or the broker's) dates a dead letter.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = crate::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    dead_letter(q.as_ref(), "new").await;

    assert_eq!(q.trim_dead_letters(cut).await.expect("trim"), 2);
    assert_eq!(q.trim_dead_letters(cut).await.expect("trim again"), 0);
    assert_eq!(q.dead_letter_depth().await.expect("dlq depth"), 1);
    let left = q.dead_letters(10).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message.body, Bytes::from_static(b"new"));

    let q = h.restart(q).await;
    assert_eq!(
        q.dead_letter_depth()
            .await
            .expect("dlq depth after restart"),
        1
    );
    assert_eq!(q.redrive(10).await.expect("redrive"), 1);
    assert_eq!(
        q.trim_dead_letters(crate::now_ms() + 1_000)
            .await
            .expect("trim all"),
        0,
        "a redriven message is no dead letter"
    );
    let back = expect_one(q.as_ref()).await;
    assert_eq!(body(&back), "new");
    back.ack().await.expect("ack");
}

/// Several consumers share the work: each message is delivered exactly once
/// while every consumer acks.
pub async fn competing_consumers_each_get_every_message_once(h: &dyn Harness) {
    let q = h.open().await;
    let n = 300;
    for i in 0..n {
        publish(q.as_ref(), &format!("m{i}")).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let batch = q
                    .receive(7, Duration::from_millis(300))
                    .await
                    .expect("receive");
                if batch.is_empty() {
                    return seen;
                }
                for d in batch {
                    seen.push(body(&d));
                    d.ack().await.expect("ack");
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("consumer"));
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), n, "deliveries");
    assert_eq!(unique.len(), n, "distinct messages");
    assert_eq!(q.depth().await.expect("depth"), 0);
}

/// Backends that promise FIFO hand a single consumer messages in publish order.
pub async fn single_consumer_sees_publish_order(h: &dyn Harness) {
    let q = h.open().await;
    if !q.capabilities().fifo {
        return; // capability not promised: nothing to check
    }
    for i in 0..50 {
        publish(q.as_ref(), &format!("{i:03}")).await;
    }
    for i in 0..50 {
        let d = expect_one(q.as_ref()).await;
        assert_eq!(body(&d), format!("{i:03}"));
        d.ack().await.expect("ack");
    }
}

/// Backends with priority support hand out higher priorities first.
pub async fn higher_priority_is_delivered_first(h: &dyn Harness) {
    let q = h.open().await;
    if !q.capabilities().priority {
        return; // capability not promised: nothing to check
    }
    for (b, priority) in [("low", 0), ("high", 9), ("mid", 5)] {
        q.publish(OutgoingMessage { priority, ..msg(b) })
            .await
            .expect("publish");
    }
    let order: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let d = expect_one(q.as_ref()).await;
            v.push(body(&d));
            d.ack().await.expect("ack");
        }
        v
    };
    assert_eq!(order, ["high", "mid", "low"]);
}

/// Depth counts waiting, delayed and leased messages until they are acked.
pub async fn depth_counts_every_unacknowledged_message(h: &dyn Harness) {
    let q = h.open().await;
    for b in ["a", "b", "c"] {
        publish(q.as_ref(), b).await;
    }
    assert_eq!(q.depth().await.expect("depth"), 3);
    let d = expect_one(q.as_ref()).await;
    assert_eq!(
        q.depth().await.expect("depth"),
        3,
        "a leased message still counts"
    );
    d.nack(Nack::Retry {
        delay: Duration::from_secs(30),
    })
    .await
    .expect("nack");
    assert_eq!(
        q.depth().await.expect("depth"),
        3,
        "a delayed message still counts"
    );
    expect_one(q.as_ref()).await.ack().await.expect("ack");
    assert_eq!(q.depth().await.expect("depth"), 2);
}

/// After a restart every unacknowledged message is there, in-flight ones
/// included; acknowledged ones are gone; dead letters are kept.
pub async fn restart_recovers_unacknowledged_messages(h: &dyn Harness) {
    let q = h.open().await;
    for i in 0..6 {
        publish(q.as_ref(), &format!("r{i}")).await;
    }
    let acked = expect_one(q.as_ref()).await;
    assert_eq!(body(&acked), "r0");
    acked.ack().await.expect("ack");
    let dead = expect_one(q.as_ref()).await;
    dead.nack(Nack::DeadLetter {
        reason: "bad".into(),
    })
    .await
    .expect("dlq");
    let in_flight = expect_one(q.as_ref()).await; // abandoned by the "crash"
    let in_flight_body = body(&in_flight);
    drop(in_flight);
    let q = h.restart(q).await;
    assert_eq!(q.depth().await.expect("depth"), 4);
    assert_eq!(q.dead_letter_depth().await.expect("dlq depth"), 1);
    let mut bodies = HashSet::new();
    for _ in 0..4 {
        let d = expect_one(q.as_ref()).await;
        bodies.insert(body(&d));
        d.ack().await.expect("ack");
    }
    assert!(bodies.contains(&in_flight_body));
    assert_eq!(
        bodies,
        ["r2", "r3", "r4", "r5"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    );
}

/// A deferred publish is delivered like any other, and `sync` confirms it:
/// it is kept across a (clean) restart. What a sync adds against a power
/// loss is each engine's own test (the embedded one counts its syncs).
pub async fn deferred_publishes_are_delivered_and_kept_once_synced(h: &dyn Harness) {
    let q = h.open().await;
    let deferred = |body: &str| OutgoingMessage {
        durability: Durability::Deferred,
        ..msg(body)
    };
    q.publish(deferred("d1")).await.expect("publish");
    let d = expect_one(q.as_ref()).await;
    assert_eq!(body(&d), "d1");
    d.ack().await.expect("ack");
    q.publish(deferred("d2")).await.expect("publish");
    q.sync().await.expect("sync");
    let q = h.restart(q).await;
    let d = expect_one(q.as_ref()).await;
    assert_eq!(body(&d), "d2");
    d.ack().await.expect("ack");
    assert_eq!(q.depth().await.expect("depth"), 0);
}

/// A body over the backend's limit is refused and nothing is stored.
pub async fn oversized_payload_is_rejected(h: &dyn Harness) {
    let q = h.open().await;
    let limit = q.capabilities().max_payload;
    let big = OutgoingMessage::new(vec![b'x'; limit + 1]);
    let err = q
        .publish(big)
        .await
        .expect_err("oversized publish must fail");
    assert!(matches!(err, QueueError::PayloadTooLarge { .. }), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(q.depth().await.expect("depth"), 0);
    q.publish(OutgoingMessage::new(vec![b'x'; limit]))
        .await
        .expect("a body at the limit fits");
}
