//! The proxy processor under the real worker pool, embedded queue and store:
//! how the pool settles what the forwarder reports.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../openhqm-worker/tests/rig/mod.rs"]
mod rig;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use common::*;
use openhqm_core::{Backoff, RequestStatus};
use openhqm_upstream::{CircuitBreakerConfig, EndpointConfig};
use openhqm_worker::WorkerConfig;
use rig::rig;

/// A backend answering 500 to its first `failures` requests, then 200.
async fn recovering(failures: u32) -> (String, Arc<AtomicU32>) {
    answering(500, failures).await
}

/// A backend answering `status` to its first `failures` requests, then 200;
/// its URL, and how many requests it has had.
async fn answering(status: u16, failures: u32) -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let router = Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let status = if n <= failures { status } else { 200 };
            answer(
                status,
                &[("content-type", "application/json")],
                format!("{{\"call\":{n}}}"),
            )
        }
    });
    (url(serve(router).await), calls)
}

/// The pool's settings here: `max_retries` retries, each within a fifth
/// of a second.
fn pool_config(max_retries: u32) -> WorkerConfig {
    let backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
        max_retries,
    };
    WorkerConfig {
        count: 2,
        batch_size: 4,
        timeout: Duration::from_secs(10),
        backoff,
        lease: Duration::from_secs(5),
        drain: Duration::from_secs(5),
        unavailable_backoff: Duration::from_millis(50),
    }
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
    let rig = rig(processor, pool_config(2)).await;
    let id = rig.submit_envelope(&envelope("{}", &[])).await;
    let rec = rig.wait_terminal(id).await;
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

/// An endpoint's `max_retries` replaces the pool's: with none allowed, the
/// first failure is the last, though the pool would retry three times.
#[tokio::test]
async fn an_endpoints_max_retries_overrides_the_pools() {
    let (backend, calls) = answering(500, u32::MAX).await;
    let mut e = EndpointConfig::with_url(backend);
    e.max_retries = Some(0);
    let rig = rig(Arc::new(processor(&config(e))), pool_config(3)).await;
    let id = rig.submit_envelope(&envelope("{}", &[])).await;
    let rec = rig.wait_terminal(id).await;
    assert_eq!(rec.status, RequestStatus::Failed);
    let dead = rig.dead_letters(1).await;
    assert_eq!(dead.len(), 1, "dead-lettered for redrive");
    // Dead-lettered, so no retry can still be on its way.
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt, no retry");
    assert_eq!(rec.attempts, 1);
    rig.stop().await;
}

/// An endpoint's `retry_on` replaces the default list: a 404 on it is
/// retried, while by default a 404 is the answer and completes the request.
#[tokio::test]
async fn an_endpoints_retry_on_decides_which_statuses_are_retried() {
    for (retry_on, calls_made, status_code) in [(Some(vec![404]), 2, 200), (None, 1, 404)] {
        let (backend, calls) = answering(404, 1).await;
        let mut e = EndpointConfig::with_url(backend);
        if let Some(retry_on) = retry_on.clone() {
            e.retry_on = retry_on;
        }
        let rig = rig(Arc::new(processor(&config(e))), pool_config(3)).await;
        let id = rig.submit_envelope(&envelope("{}", &[])).await;
        let rec = rig.wait_terminal(id).await;
        let outcome = rec.outcome.clone().unwrap();
        assert_eq!(
            (rec.status, outcome.status_code),
            (RequestStatus::Completed, Some(status_code)),
            "retry_on {retry_on:?}: {:?}",
            outcome.error
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            calls_made,
            "retry_on {retry_on:?}"
        );
        rig.stop().await;
    }
}
