//! Protecting backends: the concurrency cap and the rate limit hold under load.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use axum::Router;
use common::*;
use openhqm_core::FailureKind;
use openhqm_upstream::{EndpointConfig, RateLimitConfig};

/// A backend that counts requests in flight and remembers the most seen;
/// `arrived` is notified as each request comes in.
fn counting_backend(hold: Duration) -> (Router, Arc<AtomicUsize>, Arc<Notify>) {
    let current = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(Notify::new());
    let (c, m, a) = (current, Arc::clone(&max), Arc::clone(&arrived));
    let router = Router::new().fallback(move || {
        let (c, m, a) = (Arc::clone(&c), Arc::clone(&m), Arc::clone(&a));
        async move {
            let now = c.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            a.notify_one();
            tokio::time::sleep(hold).await;
            c.fetch_sub(1, Ordering::SeqCst);
            "{}"
        }
    });
    (router, max, arrived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_is_never_exceeded_under_load() {
    let (router, max, _) = counting_backend(Duration::from_millis(20));
    let mut e = EndpointConfig::with_url(url(serve(router).await));
    e.max_concurrency = Some(5);
    let p = Arc::new(processor(&config(e)));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let p = Arc::clone(&p);
        calls.spawn(async move { call_admitted(&p, &envelope("{}", &[])).await });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    let seen = max.load(Ordering::SeqCst);
    assert!(seen <= 5, "backend saw {seen} in flight");
    assert!(
        seen >= 2,
        "the cap should still allow parallelism, saw {seen}"
    );
}

#[tokio::test]
async fn waiting_for_a_permit_past_the_deadline_is_busy_not_an_attempt() {
    let (router, _, arrived) = counting_backend(Duration::from_secs(3));
    let mut e = EndpointConfig::with_url(url(serve(router).await));
    e.max_concurrency = Some(1);
    e.timeout = 1;
    let p = processor(&config(e));
    let env = envelope("{}", &[]);
    let (first, second) = tokio::join!(call(&p, &env), async {
        // Once the first call holds the one slot (its request is in):
        arrived.notified().await;
        // The attempt's own timeout ends well before the first call's.
        call_within(&p, &envelope("{}", &[]), Duration::from_millis(300)).await
    });
    assert_eq!(first.unwrap_err().kind, FailureKind::Timeout);
    let second = second.unwrap_err();
    assert_eq!(second.kind, FailureKind::Busy);
    assert!(
        second.message.contains("concurrency limit"),
        "{}",
        second.message
    );
}

#[tokio::test]
async fn a_slot_wait_takes_at_most_half_the_attempt_so_the_backend_is_not_blamed() {
    let (router, _, arrived) = counting_backend(Duration::from_millis(600));
    let mut e = EndpointConfig::with_url(url(serve(router).await));
    e.max_concurrency = Some(1);
    e.timeout = 1;
    let p = processor(&config(e));
    let (one, two) = (envelope("{}", &[]), envelope("{}", &[]));
    let (first, second) = tokio::join!(call(&p, &one), async {
        arrived.notified().await;
        // The first call holds the one slot. It frees 600 ms from now, past
        // half of this attempt's second; taken then, the 600 ms backend
        // could not answer in what is left.
        call(&p, &two).await
    });
    first.expect("the first call is answered");
    let second = second.unwrap_err();
    assert_eq!(second.kind, FailureKind::Busy, "{}", second.message);
    assert!(
        second.message.contains("concurrency limit"),
        "refused for the slot, not timed out at the backend: {}",
        second.message
    );
}

/// A forward waits for a slot at most `MAX_SLOT_WAIT`, however long its
/// attempt may take: a worker held longer is one the pool cannot give to
/// another endpoint's messages. Here the slot is held for 3 s and the
/// attempt could wait 30 s (half its timeout): the second call is back,
/// Busy, while the first still holds the slot.
#[tokio::test]
async fn a_saturated_endpoint_holds_a_worker_for_at_most_the_slot_wait() {
    let (router, _, arrived) = counting_backend(Duration::from_secs(3));
    let mut e = EndpointConfig::with_url(url(serve(router).await));
    e.max_concurrency = Some(1);
    e.timeout = 60;
    let p = processor(&config(e));
    let (one, two) = (envelope("{}", &[]), envelope("{}", &[]));
    let first = call_within(&p, &one, Duration::from_secs(60));
    tokio::pin!(first);
    tokio::select! {
        _ = &mut first => panic!("the first call should still hold the slot"),
        () = arrived.notified() => {}
    }
    let started = Instant::now();
    let second = tokio::select! {
        _ = &mut first => panic!("the second call waited for the first one's slot"),
        second = call_within(&p, &two, Duration::from_secs(60)) => second,
    };
    let second = second.unwrap_err();
    assert_eq!(second.kind, FailureKind::Busy, "{}", second.message);
    assert!(started.elapsed() >= openhqm_upstream::MAX_SLOT_WAIT);
    first.await.expect("the first call is answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_over_a_window() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let a = Arc::clone(&arrivals);
    let router = Router::new().fallback(move || {
        let a = Arc::clone(&a);
        async move {
            a.lock().unwrap().push(Instant::now());
            "{}"
        }
    });
    let mut e = EndpointConfig::with_url(url(serve(router).await));
    e.rate_limit = Some(RateLimitConfig {
        requests_per_second: 20.0,
        burst: 2,
    });
    let p = Arc::new(processor(&config(e)));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let p = Arc::clone(&p);
        calls.spawn(async move { call_admitted(&p, &envelope("{}", &[])).await });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap().unwrap();
    }
    // 2 at once, then 28 at 50 ms each: at least 1.35 s.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let mut times = arrivals.lock().unwrap().clone();
    times.sort();
    for (i, t) in times.iter().enumerate() {
        // Within any 500 ms window: 10 at the rate, 2 of burst, 2 of slack.
        let in_window = times[i..]
            .iter()
            .take_while(|u| **u - *t < Duration::from_millis(500))
            .count();
        assert!(in_window <= 14, "{in_window} requests within 500 ms");
    }
}

#[tokio::test]
async fn rate_wait_past_the_deadline_fails_with_retry_after() {
    let mut e = EndpointConfig::with_url(url(serve(echo()).await));
    e.rate_limit = Some(RateLimitConfig {
        requests_per_second: 0.2,
        burst: 1,
    });
    e.timeout = 1;
    let p = processor(&config(e));
    call(&p, &envelope("{}", &[])).await.unwrap();
    let err = call(&p, &envelope("{}", &[])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Busy);
    assert!(err.message.contains("rate limit"), "{}", err.message);
    let after = err.retry_after.unwrap();
    assert!(
        after > Duration::from_secs(4) && after <= Duration::from_secs(5),
        "{after:?}"
    );
}
