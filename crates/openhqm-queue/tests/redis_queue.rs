//! Redis-specific behaviour beyond the conformance suite: the wire format
//! external producers use, malformed entries, takeover between consumers,
//! and Redis going away.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openhqm_queue::backends::redis::{RedisQueue, RedisQueueConfig};
use openhqm_queue::{
    ConsumeConfig, Delivery, Nack, OutgoingMessage, QueueBackend, QueueError, consume,
};
use openhqm_redis_testkit::RedisServer;

const LEASE: Duration = Duration::from_millis(500);

fn config(server: &RedisServer, consumer: &str) -> RedisQueueConfig {
    RedisQueueConfig {
        url: server.url(),
        stream: "openhqm-requests".into(),
        group: "openhqm-workers".into(),
        consumer: consumer.into(),
        dead_letter_stream: "openhqm-dlq".into(),
        lease: LEASE,
        max_payload: 64 * 1024,
        trim_older_than: None,
    }
}

async fn open(server: &RedisServer, consumer: &str) -> RedisQueue {
    RedisQueue::open(config(server, consumer))
        .await
        .expect("open redis queue")
}

/// A plain command on a connection of the test's own, as an outside producer would.
async fn raw(server: &RedisServer, cmd: &redis::Cmd) -> redis::Value {
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    cmd.query_async(&mut conn).await.expect("raw command")
}

/// `XADD openhqm-requests * field value ...`, as an outside producer writes.
async fn xadd(server: &RedisServer, fields: &[&str]) {
    raw(
        server,
        redis::cmd("XADD")
            .arg("openhqm-requests")
            .arg("*")
            .arg(fields),
    )
    .await;
}

/// The one delivery `q` gets within `within`; fails naming `what`.
async fn take_one(q: &RedisQueue, within: Duration, what: &str) -> Delivery {
    q.receive(1, within)
        .await
        .expect("receive")
        .pop()
        .unwrap_or_else(|| panic!("no delivery: {what}"))
}

/// Waits until `check` holds, failing after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn external_producer_entry_is_received_as_is() {
    let server = RedisServer::start();
    let q = open(&server, "a").await;
    let envelope = r#"{"correlation_id":"0192f6e4-7b1a-7c3e-9a4b-1234567890ab","payload":{"operation":"echo"},"headers":{},"timestamp":"2025-01-01T00:00:00Z","metadata":{}}"#;
    xadd(&server, &["payload", envelope]).await;
    let d = take_one(&q, Duration::from_secs(5), "the external entry").await;
    assert_eq!(d.message().body.as_ref(), envelope.as_bytes());
    assert_eq!(d.message().attempt, 1);
    assert!(d.message().attributes.is_empty());
    d.ack().await.expect("ack");
    assert_eq!(q.depth().await.expect("depth"), 0);
}

#[tokio::test]
async fn producer_fields_are_attributes_and_survive_a_retry() {
    let server = RedisServer::start();
    let q = open(&server, "a").await;
    xadd(
        &server,
        &[
            "ce_id",
            "A-1",
            "payload",
            "{}",
            "content-type",
            "application/json",
            "attr:ce_id",
            "wins",
        ],
    )
    .await;
    let d = take_one(&q, Duration::from_secs(5), "the producer's entry").await;
    let want: std::collections::BTreeMap<String, String> =
        [("ce_id", "wins"), ("content-type", "application/json")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    assert_eq!(d.message().attributes, want);
    let nack = openhqm_queue::Nack::Retry {
        delay: Duration::ZERO,
    };
    d.nack(nack).await.expect("retry");
    let d = take_one(&q, Duration::from_secs(5), "the retried entry").await;
    assert_eq!(d.message().attempt, 2);
    assert_eq!(
        d.message().attributes,
        want,
        "attempt and origin stay internal"
    );
    d.ack().await.expect("ack");
}

#[tokio::test]
async fn entries_written_before_the_group_existed_are_consumed() {
    let server = RedisServer::start();
    xadd(&server, &["payload", "early"]).await;
    let q = open(&server, "a").await;
    let d = take_one(&q, Duration::from_secs(5), "the early entry").await;
    assert_eq!(d.message().body.as_ref(), b"early");
    d.ack().await.expect("ack");
}

#[tokio::test]
async fn entry_without_payload_is_dead_lettered_with_a_reason() {
    let server = RedisServer::start();
    let q = open(&server, "a").await;
    xadd(&server, &["body", "not the field we read"]).await;
    q.publish(OutgoingMessage::new("good"))
        .await
        .expect("publish");
    let got = q
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1, "only the well-formed entry is delivered");
    assert_eq!(got[0].message().body.as_ref(), b"good");
    assert_eq!(q.dead_letter_depth().await.expect("dlq depth"), 1);
    let dead = q.dead_letters(10).await.expect("dead letters");
    assert!(dead[0].reason.contains("payload"), "{}", dead[0].reason);
    for d in got {
        d.ack().await.expect("ack");
    }
    assert_eq!(q.depth().await.expect("depth"), 0, "nothing left pending");
}

/// One message, held by consumer a and then taken over by b after the lease.
struct TakenOver {
    b: RedisQueue,
    held: Delivery,
    taken: Delivery,
    /// How long b waited for it.
    waited: Duration,
}

async fn take_over(server: &RedisServer) -> TakenOver {
    let a = open(server, "consumer-a").await;
    let b = open(server, "consumer-b").await;
    a.publish(OutgoingMessage::new("job"))
        .await
        .expect("publish");
    let held = take_one(&a, Duration::from_secs(5), "a gets it").await;
    let asked = Instant::now();
    let taken = take_one(&b, LEASE * 4, "b takes it over after the lease").await;
    TakenOver {
        b,
        held,
        taken,
        waited: asked.elapsed(),
    }
}

#[tokio::test]
async fn another_consumer_takes_over_after_the_lease_with_attempt_two() {
    let server = RedisServer::start();
    let TakenOver {
        b,
        held,
        taken,
        waited,
    } = take_over(&server).await;
    assert_eq!(held.message().attempt, 1);
    assert!(waited + Duration::from_millis(50) >= LEASE, "{waited:?}");
    assert_eq!(taken.message().attempt, 2);
    assert_eq!(taken.message().id, held.message().id);
    let stale = held.ack().await;
    assert!(
        matches!(stale, Err(QueueError::LeaseLost(_))),
        "a's stale ack must not settle b's delivery: {stale:?}"
    );
    assert_eq!(b.depth().await.expect("depth"), 1, "still b's to settle");
    taken.ack().await.expect("b acks");
    assert_eq!(b.depth().await.expect("depth"), 0);
}

#[tokio::test]
async fn stale_retry_after_takeover_is_refused_and_changes_nothing() {
    let server = RedisServer::start();
    let TakenOver { b, held, taken, .. } = take_over(&server).await;
    let stale = held
        .nack(openhqm_queue::Nack::Retry {
            delay: Duration::ZERO,
        })
        .await;
    assert!(matches!(stale, Err(QueueError::LeaseLost(_))), "{stale:?}");
    let delayed: u64 = redis::from_redis_value(
        raw(&server, redis::cmd("ZCARD").arg("openhqm-requests:delayed")).await,
    )
    .expect("zcard");
    assert_eq!(delayed, 0, "the stale retry scheduled nothing");
    assert_eq!(b.depth().await.expect("depth"), 1);
    assert_eq!(b.dead_letter_depth().await.expect("dlq"), 0);
    taken.ack().await.expect("b acks");
}

/// Redis's clock in ms, which due times of retries are scored by.
async fn redis_now_ms(server: &RedisServer) -> u64 {
    let (secs, micros): (u64, u64) =
        redis::from_redis_value(raw(server, &redis::cmd("TIME")).await).expect("TIME");
    secs * 1000 + micros / 1000
}

#[tokio::test]
async fn a_delayed_retry_waits_in_redis_and_another_consumer_takes_it_back() {
    let server = RedisServer::start();
    let a = open(&server, "consumer-a").await;
    a.publish(OutgoingMessage::new("later"))
        .await
        .expect("publish");
    let d = take_one(&a, Duration::from_secs(5), "a gets it").await;
    let id = d.message().id.clone();
    let delay = Duration::from_millis(500);
    let asked = Instant::now();
    let before = redis_now_ms(&server).await;
    d.nack(Nack::Retry { delay }).await.expect("retry");
    let after = redis_now_ms(&server).await;
    // a's process is gone: nothing of the retry may live in its memory.
    drop(a);

    // The delayed set holds it, due `delay` after the nack by Redis's clock,
    // with its next attempt; the stream no longer does.
    let due: Option<u64> = redis::from_redis_value(
        raw(
            &server,
            redis::cmd("ZSCORE")
                .arg("openhqm-requests:delayed")
                .arg(&id),
        )
        .await,
    )
    .expect("zscore");
    let due = due.expect("the retry is in openhqm-requests:delayed");
    assert!(
        (before + 500..=after + 500).contains(&due),
        "due at {due}; nacked between {before} and {after}"
    );
    let fields: std::collections::HashMap<String, String> = redis::from_redis_value(
        raw(
            &server,
            redis::cmd("HGETALL").arg(format!("openhqm-requests:delayed:{id}")),
        )
        .await,
    )
    .expect("hgetall");
    assert_eq!(fields.get("payload").map(String::as_str), Some("later"));
    assert_eq!(fields.get("attempt").map(String::as_str), Some("2"));
    let in_stream: u64 =
        redis::from_redis_value(raw(&server, redis::cmd("XLEN").arg("openhqm-requests")).await)
            .expect("xlen");
    assert_eq!(in_stream, 0, "moved out of the stream while it waits");

    // A consumer that never saw it moves it back once due and gets it.
    let b = open(&server, "consumer-b").await;
    let again = take_one(&b, Duration::from_secs(5), "b gets the retry").await;
    assert!(asked.elapsed() >= delay, "back after {:?}", asked.elapsed());
    assert_eq!(again.message().id, id);
    assert_eq!(again.message().attempt, 2);
    assert_eq!(again.message().body.as_ref(), b"later");
    again.ack().await.expect("ack");
    assert_eq!(b.depth().await.expect("depth"), 0);
}

#[tokio::test]
async fn redis_restarted_empty_recreates_the_group_without_help() {
    let mut server = RedisServer::start();
    let q = open(&server, "a").await;
    q.publish(OutgoingMessage::new("before"))
        .await
        .expect("publish");
    server.start_again();
    // The connection manager reconnects on its own; the group is gone.
    eventually(Duration::from_secs(10), "publish after restart", || async {
        q.publish(OutgoingMessage::new("after")).await.is_ok()
    })
    .await;
    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bodies.is_empty() {
        assert!(Instant::now() < deadline, "nothing received after restart");
        if let Ok(got) = q.receive(1, Duration::from_millis(500)).await {
            for d in got {
                bodies.push(d.message().body.clone());
                d.ack().await.expect("ack");
            }
        }
    }
    assert_eq!(bodies[0].as_ref(), b"after");
}

#[tokio::test]
async fn redis_down_answers_unavailable_quickly() {
    let mut server = RedisServer::start();
    let q = open(&server, "a").await;
    server.kill();
    let started = Instant::now();
    let published = q.publish(OutgoingMessage::new("x")).await;
    assert!(
        matches!(published, Err(QueueError::Unavailable(_))),
        "{published:?}"
    );
    let health = q.health().await;
    assert!(
        matches!(health, Err(QueueError::Unavailable(_))),
        "{health:?}"
    );
    let received = q.receive(1, Duration::from_millis(200)).await;
    assert!(
        matches!(received, Err(QueueError::Unavailable(_))),
        "{received:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(published.err().is_some_and(|e| e.is_retryable()));
}

/// Whether some client is blocked in a read, as Redis reports it.
async fn a_read_blocks(server: &RedisServer) -> bool {
    let info: String =
        redis::from_redis_value(raw(server, redis::cmd("INFO").arg("clients")).await)
            .expect("info");
    !info.contains("blocked_clients:0")
}

#[tokio::test]
async fn a_short_retry_delay_is_kept_while_the_reader_blocks() {
    let server = RedisServer::start();
    // A long lease: each blocking read lasts the longest slice, 1 s.
    let config = RedisQueueConfig {
        lease: Duration::from_secs(30),
        ..config(&server, "a")
    };
    let q = Arc::new(RedisQueue::open(config).await.expect("open"));
    q.publish(OutgoingMessage::new("again"))
        .await
        .expect("publish");
    let d = take_one(&q, Duration::from_secs(3), "the first delivery").await;
    // The loop reads again while the handler still runs, as a worker
    // pool's does; the handler then schedules a retry due before that read
    // would end.
    let reader = tokio::spawn({
        let q = Arc::clone(&q);
        async move { take_one(&q, Duration::from_secs(5), "the retry").await }
    });
    eventually(Duration::from_secs(5), "a blocked read", || {
        a_read_blocks(&server)
    })
    .await;
    let scheduled = Instant::now();
    d.nack(Nack::Retry {
        delay: Duration::from_millis(100),
    })
    .await
    .expect("retry");
    let again = reader.await.expect("reader");
    let waited = scheduled.elapsed();
    assert_eq!(again.message().attempt, 2);
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(
        waited < Duration::from_millis(700),
        "a 100 ms retry came back after {waited:?}: it waited for the read to end"
    );
}

#[tokio::test]
async fn a_shutdown_during_a_blocking_read_gives_back_what_the_read_took() {
    let server = RedisServer::start();
    let q: Arc<dyn QueueBackend> = Arc::new(open(&server, "a").await);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handled = Arc::new(AtomicUsize::new(0));
    let consumer = tokio::spawn({
        let (q, handled) = (Arc::clone(&q), Arc::clone(&handled));
        async move {
            let config = ConsumeConfig {
                name: "test consumer",
                concurrency: 4,
                batch_size: 4,
                drain: Duration::from_secs(1),
                unavailable_backoff: Duration::from_millis(50),
            };
            consume(
                q,
                &config,
                stopped,
                |_| {},
                move |d: Delivery| {
                    handled.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let _ = d.ack().await;
                    }
                },
            )
            .await
        }
    });
    // Wait until the consumer is blocked in XREADGROUP, as Redis reports it.
    eventually(Duration::from_secs(5), "a blocked read", || {
        a_read_blocks(&server)
    })
    .await;
    stop.send(true).expect("stop");
    // Arrives while that read still blocks: Redis hands it to consumer a.
    q.publish(OutgoingMessage::new("late"))
        .await
        .expect("publish");
    consumer.await.expect("consumer");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "nothing runs after shutdown"
    );
    // Given back at once as the same attempt, not left leased to a process
    // that is gone (taken over after the lease as attempt 2).
    let b = open(&server, "b").await;
    let d = take_one(&b, Duration::from_secs(3), "the message given back").await;
    assert_eq!(d.message().attempt, 1);
    assert_eq!(d.message().body.as_ref(), b"late");
}

#[tokio::test]
async fn a_stream_with_a_retention_drops_entries_older_than_it_as_it_grows() {
    let server = RedisServer::start();
    // A stream node (100 entries) of replies nobody read, from long ago.
    for seq in 0..100 {
        raw(
            &server,
            redis::cmd("XADD")
                .arg("openhqm-requests")
                .arg(format!("1000-{seq}"))
                .arg("payload")
                .arg("old"),
        )
        .await;
    }
    let q = RedisQueue::open(RedisQueueConfig {
        trim_older_than: Some(Duration::from_secs(60)),
        ..config(&server, "a")
    })
    .await
    .expect("open");
    for i in 0..10 {
        q.publish(OutgoingMessage::new(format!("new {i}")))
            .await
            .expect("publish");
    }
    // `~` trims whole nodes: the old one goes, every new entry stays.
    let len: u64 =
        redis::from_redis_value(raw(&server, redis::cmd("XLEN").arg("openhqm-requests")).await)
            .expect("xlen");
    assert_eq!(len, 10, "only the new entries are left");
}

#[tokio::test]
async fn consumers_of_gone_processes_are_forgotten_but_never_one_holding_work() {
    let server = RedisServer::start();
    let gone = open(&server, "host-1").await;
    let holder = open(&server, "host-2").await;
    let me = open(&server, "host-3").await;
    // host-1 took an entry and settled it; host-2 holds one.
    gone.publish(OutgoingMessage::new("done"))
        .await
        .expect("publish");
    take_one(&gone, Duration::from_secs(2), "host-1 takes it")
        .await
        .ack()
        .await
        .expect("ack");
    holder
        .publish(OutgoingMessage::new("held"))
        .await
        .expect("publish");
    let held = take_one(&holder, Duration::from_secs(2), "host-2 takes it").await;
    // Not synchronisation: the consumers must have been idle longer than the
    // 100 ms threshold below, and only time passing does that.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let forgotten = me
        .forget_idle_consumers(Duration::from_millis(100))
        .await
        .expect("forget");
    assert_eq!(forgotten, 1, "only host-1: host-2 holds work, host-3 asks");
    let names: redis::Value = raw(
        &server,
        redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("openhqm-requests")
            .arg("openhqm-workers"),
    )
    .await;
    let names = format!("{names:?}");
    assert!(!names.contains("host-1"), "{names}");
    assert!(names.contains("host-2"), "{names}");
    held.ack().await.expect("the holder still settles");
}
