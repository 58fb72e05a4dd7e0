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
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let router = Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let status = if n <= failures { 500 } else { 200 };
            answer(
                status,
                &[("content-type", "application/json")],
                format!("{{\"call\":{n}}}"),
            )
        }
    });
    (url(serve(router).await), calls)
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
    let backoff = Backoff {
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
        max_retries: 2,
    };
    let config = WorkerConfig {
        count: 2,
        batch_size: 4,
        timeout: Duration::from_secs(10),
        backoff,
        lease: Duration::from_secs(5),
        drain: Duration::from_secs(5),
        unavailable_backoff: Duration::from_millis(50),
    };
    let rig = rig(processor, config).await;
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
