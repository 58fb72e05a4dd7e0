//! The Redis result store on a private `redis-server`: transitions follow the
//! table, every write sets the TTL, and `wait_terminal` is woken across two
//! store instances (two connections, as two processes would have).
#![cfg(feature = "redis")]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openhqm_core::{CorrelationId, RequestRecord, RequestStatus, ResultData};
use openhqm_redis_testkit::RedisServer;
use openhqm_store::redis::{DEFAULT_CHANNEL, DEFAULT_KEY_PREFIX, RedisStore, RedisStoreConfig};
use openhqm_store::{ResultStore, Transition, Update};

async fn open(server: &RedisServer, ttl: Duration) -> RedisStore {
    RedisStore::open(RedisStoreConfig {
        url: server.url(),
        ttl,
        key_prefix: DEFAULT_KEY_PREFIX.into(),
        channel: DEFAULT_CHANNEL.into(),
    })
    .await
    .expect("open redis store")
}

/// A plain connection, for looking at (or damaging) what the store wrote.
async fn raw_conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn pttl(server: &RedisServer, id: CorrelationId) -> i64 {
    let mut conn = raw_conn(server).await;
    redis::cmd("PTTL")
        .arg(format!("{DEFAULT_KEY_PREFIX}{id}"))
        .query_async(&mut conn)
        .await
        .expect("PTTL")
}

fn completed() -> Update {
    Update {
        to: RequestStatus::Completed,
        attempts: Some(1),
        outcome: Some(Box::new(ResultData {
            result: Some(serde_json::json!({"ok": true})),
            status_code: Some(200),
            ..ResultData::default()
        })),
        redrive: None,
        hold: None,
    }
}

#[tokio::test]
async fn a_withdraw_cancels_only_the_record_as_created_even_when_redis_stalled() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    let taken = RequestRecord::pending(CorrelationId::new(), 1);
    store.create(taken.clone()).await.expect("create");
    store
        .transition(taken.correlation_id, Update::to(RequestStatus::Processing))
        .await
        .expect("a worker took it");
    store.withdraw(&taken).await.expect("withdraw");
    let rec = store
        .get(taken.correlation_id)
        .await
        .expect("get")
        .expect("record");
    assert_eq!(
        rec.status,
        RequestStatus::Processing,
        "a taken request is left alone"
    );

    // The server stalls: neither write is confirmed, yet both land when it
    // resumes, in whichever order, and the record ends cancelled, so a
    // worker drops its message.
    let pending = RequestRecord::pending(CorrelationId::new(), 1);
    server.signal("-STOP");
    let (created, withdrawn) =
        tokio::join!(store.create(pending.clone()), store.withdraw(&pending));
    server.signal("-CONT");
    assert!(
        created.is_err() && withdrawn.is_err(),
        "nothing was confirmed"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(rec)) = store.get(pending.correlation_id).await {
            assert_eq!(rec.status, RequestStatus::Cancelled);
            break;
        }
        assert!(Instant::now() < deadline, "the record never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unreadable_record_is_replaced_by_the_next_transition() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    let id = CorrelationId::new();
    let mut conn = raw_conn(&server).await;
    redis::cmd("SET")
        .arg(format!("{DEFAULT_KEY_PREFIX}{id}"))
        .arg(r#"{"not":"a record"}"#)
        .query_async::<()>(&mut conn)
        .await
        .expect("SET");
    assert!(
        store.get(id).await.is_err(),
        "reading it says it is corrupt"
    );
    let applied = store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("a transition replaces it, so its message can be settled");
    assert!(matches!(applied, Transition::Applied(_)), "{applied:?}");
    let rec = store.get(id).await.expect("readable now").expect("record");
    assert_eq!(rec.status, RequestStatus::Processing);
}

#[tokio::test]
async fn transitions_follow_the_table_and_keep_result_with_status() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    let id = CorrelationId::new();
    store
        .create(RequestRecord::pending(id, 1))
        .await
        .expect("create");
    let refused = store.transition(id, completed()).await.expect("transition");
    assert_eq!(
        refused,
        Transition::Refused {
            current: RequestStatus::Pending
        },
        "PENDING cannot jump to COMPLETED"
    );
    let processing = store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    assert!(matches!(processing, Transition::Applied(_)));
    store.transition(id, completed()).await.expect("completed");
    let rec = store.get(id).await.expect("get").expect("record");
    assert_eq!(rec.status, RequestStatus::Completed);
    assert_eq!(rec.attempts, 1);
    assert_eq!(
        rec.outcome.and_then(|o| o.result),
        Some(serde_json::json!({"ok": true}))
    );
    let again = store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("transition");
    assert_eq!(
        again,
        Transition::Refused {
            current: RequestStatus::Completed
        },
        "terminal states are final"
    );
    let unknown = CorrelationId::new();
    let created = store
        .transition(unknown, Update::to(RequestStatus::Processing))
        .await
        .expect("transition of a missing record");
    assert!(matches!(created, Transition::Applied(r) if r.status == RequestStatus::Processing));
}

#[tokio::test]
async fn every_write_sets_the_lifetime_and_expired_records_are_gone() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(30)).await;
    let id = CorrelationId::new();
    store
        .create(RequestRecord::pending(id, 1))
        .await
        .expect("create");
    let week = u64::try_from(openhqm_store::UNFINISHED_LIFETIME.as_millis()).expect("ms");
    let unfinished = (week - 1_000)..=week;
    let ttl = pttl(&server, id).await;
    assert!(
        unfinished.contains(&ttl.cast_unsigned()),
        "PTTL after create: {ttl}"
    );
    store
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    let ttl = pttl(&server, id).await;
    assert!(
        unfinished.contains(&ttl.cast_unsigned()),
        "PTTL while processing: {ttl}"
    );
    store
        .transition(id, Update::to(RequestStatus::Completed))
        .await
        .expect("completed");
    let ttl = pttl(&server, id).await;
    assert!(
        (29_000..=30_000).contains(&ttl),
        "PTTL once finished: {ttl}"
    );

    let short = open(&server, Duration::from_millis(100)).await;
    let gone = CorrelationId::new();
    short
        .create(RequestRecord::pending(gone, 1))
        .await
        .expect("create");
    short
        .transition(gone, Update::to(RequestStatus::Failed))
        .await
        .expect("fail");
    let deadline = Instant::now() + Duration::from_secs(5);
    while short.get(gone).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "record never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unfinished_requests_outlive_the_ttl() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(200);
    let store = open(&server, ttl).await;
    openhqm_store::scenarios::unfinished_requests_outlive_the_ttl(&store, ttl).await;
}

#[tokio::test]
async fn wait_terminal_is_woken_by_another_instance() {
    let server = RedisServer::start();
    let waiter = Arc::new(open(&server, Duration::from_secs(60)).await);
    let writer = open(&server, Duration::from_secs(60)).await;
    let id = CorrelationId::new();
    writer
        .create(RequestRecord::pending(id, 1))
        .await
        .expect("create");
    let waiting = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.wait_terminal(id, Duration::from_secs(30)).await })
    };
    writer
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    let started = Instant::now();
    writer.transition(id, completed()).await.expect("completed");
    let rec = waiting
        .await
        .expect("join")
        .expect("wait")
        .expect("terminal before the timeout");
    assert_eq!(rec.status, RequestStatus::Completed);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the publish, not a timeout"
    );
}

#[tokio::test]
async fn wait_terminal_returns_at_once_if_already_finished_and_none_on_timeout() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    let done = CorrelationId::new();
    store
        .transition(done, completed())
        .await
        .expect("completed");
    let rec = store
        .wait_terminal(done, Duration::from_secs(30))
        .await
        .expect("wait");
    assert_eq!(rec.map(|r| r.status), Some(RequestStatus::Completed));

    let pending = CorrelationId::new();
    store
        .create(RequestRecord::pending(pending, 1))
        .await
        .expect("create");
    let started = Instant::now();
    let none = store
        .wait_terminal(pending, Duration::from_millis(200))
        .await
        .expect("wait");
    assert!(none.is_none());
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn concurrent_transitions_from_two_instances_finish_once() {
    let server = RedisServer::start();
    let a = Arc::new(open(&server, Duration::from_secs(60)).await);
    let b = Arc::new(open(&server, Duration::from_secs(60)).await);
    let id = CorrelationId::new();
    a.create(RequestRecord::pending(id, 1))
        .await
        .expect("create");
    a.transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    let mut tasks = Vec::new();
    for (n, store) in [a.clone(), b].into_iter().cycle().take(8).enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut update = completed();
            if let Some(o) = update.outcome.as_mut() {
                o.result = Some(serde_json::json!(n));
            }
            store.transition(id, update).await.expect("transition")
        }));
    }
    let mut applied = Vec::new();
    for t in tasks {
        if let Transition::Applied(r) = t.await.expect("join") {
            applied.push(r);
        }
    }
    assert_eq!(
        applied.len(),
        1,
        "a terminal state is reached once; the rest are refused"
    );
    let stored = a.get(id).await.expect("get").expect("record");
    assert_eq!(stored, applied[0], "the stored record is the applied one");
}

#[tokio::test]
async fn wait_terminal_survives_a_redis_restart() {
    let mut server = RedisServer::start();
    let waiter = Arc::new(open(&server, Duration::from_secs(60)).await);
    let id = CorrelationId::new();
    let waiting = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.wait_terminal(id, Duration::from_secs(30)).await })
    };
    server.start_again();
    // A writer connecting after the restart finishes the request; the
    // waiter's subscriber reconnects on its own and must not miss it.
    let writer = open(&server, Duration::from_secs(60)).await;
    writer.transition(id, completed()).await.expect("completed");
    let rec = waiting
        .await
        .expect("join")
        .expect("wait")
        .expect("terminal before the timeout");
    assert_eq!(rec.status, RequestStatus::Completed);
}

#[tokio::test]
async fn a_read_after_redis_restarted_is_answered() {
    let mut server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    let id = CorrelationId::new();
    store
        .create(RequestRecord::pending(id, 1))
        .await
        .expect("create");
    // The store's connection sits idle while Redis restarts (empty).
    server.start_again();
    let read = store.get(id).await;
    assert!(
        matches!(read, Ok(None)),
        "the first read after the restart: {read:?}"
    );
}

#[tokio::test]
async fn idempotency_keys() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    openhqm_store::scenarios::idempotency_keys(&store).await;
}

#[tokio::test]
async fn deep_results_read_back() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    openhqm_store::scenarios::deep_results_read_back(&store).await;
}

#[tokio::test]
async fn create_does_not_overwrite_a_later_status() {
    let server = RedisServer::start();
    let store = open(&server, Duration::from_secs(60)).await;
    openhqm_store::scenarios::create_does_not_overwrite(&store).await;
}

/// A TCP relay in front of Redis that can make the subscriber connections
/// it carries go silent: bytes are dropped both ways while the sockets stay
/// open, as when a NAT or balancer forgets an idle connection. Nothing ends
/// the client's subscription; only a ping that gets no pong shows it is dead.
/// (`CLIENT KILL TYPE pubsub` closes the socket, which the client notices at once.)
struct SilencingRelay {
    url: String,
    /// A flag per connection that has sent SUBSCRIBE; set, it drops everything.
    subscribers: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// Everything Redis has sent through the relay.
    from_redis: Arc<Mutex<Vec<u8>>>,
}

impl SilencingRelay {
    fn start(server: &RedisServer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let relay = Self {
            url: format!("redis://{}", listener.local_addr().expect("relay address")),
            subscribers: Arc::default(),
            from_redis: Arc::default(),
        };
        let redis_port = server.port();
        let (subscribers, from_redis) = (
            Arc::clone(&relay.subscribers),
            Arc::clone(&relay.from_redis),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(redis) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(false));
                let (client_out, redis_out) = (
                    client.try_clone().expect("clone socket"),
                    redis.try_clone().expect("clone socket"),
                );
                let (subscribers, silent_up) = (Arc::clone(&subscribers), Arc::clone(&silent));
                std::thread::spawn(move || {
                    let mut registered = false;
                    pump(client, redis_out, &silent_up, |bytes| {
                        if !registered && bytes.windows(9).any(|w| w == b"SUBSCRIBE") {
                            registered = true;
                            lock(&subscribers).push(Arc::clone(&silent_up));
                        }
                    });
                });
                let from_redis = Arc::clone(&from_redis);
                std::thread::spawn(move || {
                    pump(redis, client_out, &silent, |bytes| {
                        lock(&from_redis).extend_from_slice(bytes);
                    });
                });
            }
        });
        relay
    }

    /// Silences every connection that has subscribed so far; how many.
    fn silence_subscribers(&self) -> usize {
        let subscribers = lock(&self.subscribers);
        for silent in subscribers.iter() {
            silent.store(true, Ordering::SeqCst);
        }
        subscribers.len()
    }

    /// Whether Redis has sent `text` to some client through the relay.
    fn has_sent(&self, text: &str) -> bool {
        lock(&self.from_redis)
            .windows(text.len())
            .any(|w| w == text.as_bytes())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copies `from` to `to` until either end closes, showing each chunk to
/// `look` first, and dropping it once `silent` is set.
fn pump(mut from: TcpStream, mut to: TcpStream, silent: &AtomicBool, mut look: impl FnMut(&[u8])) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        look(&buf[..n]);
        if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[tokio::test]
async fn a_silently_dead_subscription_is_replaced_and_its_waiters_woken_within_seconds() {
    let server = RedisServer::start();
    let relay = SilencingRelay::start(&server);
    let waiter = Arc::new(
        RedisStore::open(RedisStoreConfig {
            url: relay.url.clone(),
            ttl: Duration::from_secs(60),
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            channel: DEFAULT_CHANNEL.into(),
        })
        .await
        .expect("open the store through the relay"),
    );
    let writer = open(&server, Duration::from_secs(60)).await;
    let id = CorrelationId::new();
    writer
        .create(RequestRecord::pending(id, 1))
        .await
        .expect("create");
    writer
        .transition(id, Update::to(RequestStatus::Processing))
        .await
        .expect("processing");
    let waiting = {
        let waiter = Arc::clone(&waiter);
        tokio::spawn(async move { waiter.wait_terminal(id, Duration::from_secs(15)).await })
    };
    // The waiter has read the record (PROCESSING) and sleeps until woken: a
    // completion now can only reach it through the subscription.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !relay.has_sent(&id.to_string()) {
        assert!(
            Instant::now() < deadline,
            "the waiter never read the record"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        relay.silence_subscribers(),
        1,
        "the store's one subscription runs through the relay"
    );
    let finished = Instant::now();
    writer.transition(id, completed()).await.expect("completed");
    let rec = waiting
        .await
        .expect("join")
        .expect("wait")
        .expect("woken before the waiter's 15 s timeout");
    assert_eq!(rec.status, RequestStatus::Completed);
    // The dead subscription is noticed at the next heartbeat's missing pong;
    // the new one wakes every waiter to read again. (A 10 s heartbeat with a
    // 10 s pong timeout took up to 20 s.)
    let waited = finished.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "woken {waited:?} after the completion"
    );
}
