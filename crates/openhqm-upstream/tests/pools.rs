//! Several targets: balancing strategies, health checks, ejection and breakers.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::*;
use openhqm_core::FailureKind;
use openhqm_upstream::{
    CircuitBreakerConfig, EndpointConfig, HealthCheckConfig, PassiveEjectionConfig, Strategy,
    TargetConfig,
};
use serde_json::json;

/// A backend answering its name; 503 while `failing`, `/health` 503 while `sick`.
struct Backend {
    url: String,
    failing: Arc<AtomicBool>,
    sick: Arc<AtomicBool>,
    delay: Duration,
}

async fn backend(name: &'static str, delay: Duration) -> Backend {
    let failing = Arc::new(AtomicBool::new(false));
    let sick = Arc::new(AtomicBool::new(false));
    let (f, s) = (Arc::clone(&failing), Arc::clone(&sick));
    let router = Router::new()
        .route(
            "/health",
            get(move || {
                let s = Arc::clone(&s);
                async move { answer(if s.load(Ordering::SeqCst) { 503 } else { 200 }, &[], "") }
            }),
        )
        .fallback(move || {
            let f = Arc::clone(&f);
            async move {
                tokio::time::sleep(delay).await;
                let status = if f.load(Ordering::SeqCst) { 503 } else { 200 };
                answer(
                    status,
                    &[("content-type", "application/json")],
                    json!({"backend": name}).to_string(),
                )
            }
        });
    Backend {
        url: url(serve(router).await),
        failing,
        sick,
        delay,
    }
}

fn pool_endpoint(backends: &[(&Backend, u32)], strategy: Strategy) -> EndpointConfig {
    let mut e = EndpointConfig::with_url("http://unused.invalid/");
    e.url = None;
    e.targets = backends
        .iter()
        .map(|(b, w)| TargetConfig {
            url: b.url.clone(),
            weight: *w,
        })
        .collect();
    e.strategy = strategy;
    e
}

async fn who(p: &openhqm_upstream::ProxyProcessor) -> Result<String, openhqm_core::Failure> {
    call(p, &envelope("{}", &[]))
        .await
        .map(|o| o.result["backend"].as_str().unwrap().to_owned())
}

async fn tally(p: &openhqm_upstream::ProxyProcessor, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(who(p).await.unwrap()).or_insert(0) += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[tokio::test]
async fn round_robin_and_weighted_distribute_exactly() {
    let (a, b, c) = (
        backend("a", Duration::ZERO).await,
        backend("b", Duration::ZERO).await,
        backend("c", Duration::ZERO).await,
    );
    let p = processor(&config(pool_endpoint(
        &[(&a, 1), (&b, 5), (&c, 1)],
        Strategy::RoundRobin,
    )));
    assert_eq!(
        tally(&p, 30).await,
        counts(&[("a", 10), ("b", 10), ("c", 10)])
    );
    let p = processor(&config(pool_endpoint(
        &[(&a, 3), (&b, 1)],
        Strategy::Weighted,
    )));
    assert_eq!(tally(&p, 40).await, counts(&[("a", 30), ("b", 10)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_favours_the_faster_target() {
    let slow = backend("slow", Duration::from_millis(200)).await;
    let fast = backend("fast", Duration::ZERO).await;
    let p = Arc::new(processor(&config(pool_endpoint(
        &[(&slow, 1), (&fast, 1)],
        Strategy::LeastConnections,
    ))));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let p = Arc::clone(&p);
        workers.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..10 {
                seen.push(who(&p).await.unwrap());
            }
            seen
        });
    }
    let mut tally = BTreeMap::new();
    while let Some(seen) = workers.join_next().await {
        for s in seen.unwrap() {
            *tally.entry(s).or_insert(0) += 1;
        }
    }
    let (s, f) = (
        tally.get("slow").copied().unwrap_or(0),
        tally.get("fast").copied().unwrap_or(0),
    );
    assert!(f > 3 * s, "{tally:?}");
    assert_eq!(s + f, 80);
    assert!(slow.delay > fast.delay);
}

#[tokio::test]
async fn consistent_hash_keeps_a_session_on_one_target() {
    let bs = [
        backend("a", Duration::ZERO).await,
        backend("b", Duration::ZERO).await,
        backend("c", Duration::ZERO).await,
    ];
    let mut e = pool_endpoint(
        &[(&bs[0], 1), (&bs[1], 1), (&bs[2], 1)],
        Strategy::ConsistentHash,
    );
    e.hash_key = Some("metadata.session_id".into());
    let p = processor(&config(e));
    let mut used = BTreeMap::new();
    for session in 0..30 {
        let mut env = envelope("{}", &[]);
        env.metadata
            .extra
            .insert("session_id".into(), json!(format!("s-{session}")));
        let first = call(&p, &env).await.unwrap().result["backend"].clone();
        for _ in 0..3 {
            assert_eq!(
                call(&p, &env).await.unwrap().result["backend"],
                first,
                "s-{session}"
            );
        }
        *used.entry(first.to_string()).or_insert(0) += 1;
    }
    assert_eq!(used.len(), 3, "{used:?}");
}

#[tokio::test]
async fn health_checks_eject_and_bring_back_a_target() {
    let (a, b) = (
        backend("a", Duration::ZERO).await,
        backend("b", Duration::ZERO).await,
    );
    let mut e = pool_endpoint(&[(&a, 1), (&b, 1)], Strategy::RoundRobin);
    e.health_check = Some(HealthCheckConfig {
        interval_seconds: 1,
        timeout_seconds: 1,
        healthy_threshold: 2,
        unhealthy_threshold: 1,
        ..HealthCheckConfig::default()
    });
    let (p, metrics) = processor_with_metrics(&config(e));
    let checks = p.start_health_checks();
    assert_eq!(checks.len(), 1);
    a.sick.store(true, Ordering::SeqCst);
    eventually("a unhealthy", Duration::from_secs(5), || {
        !p.target_status("api").unwrap()[0].healthy
    })
    .await;
    assert_eq!(tally(&p, 6).await, counts(&[("b", 6)]));
    assert!(metrics.render().contains(&format!(
        "openhqm_upstream_healthy{{endpoint=\"api\",target=\"{}\"}} 0",
        a.url
    )));
    // With every target unhealthy the attempt never starts: the message
    // waits, uncounted, until the health checks may bring one back (two
    // good probes, a second apart).
    b.sick.store(true, Ordering::SeqCst);
    eventually("b unhealthy", Duration::from_secs(5), || {
        !p.target_status("api").unwrap()[1].healthy
    })
    .await;
    let err = who(&p).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Busy);
    assert!(err.message.contains("no healthy target"), "{}", err.message);
    assert_eq!(
        err.retry_after,
        Some(Duration::from_secs(2)),
        "healthy_threshold health-check intervals"
    );
    a.sick.store(false, Ordering::SeqCst);
    b.sick.store(false, Ordering::SeqCst);
    eventually("both healthy", Duration::from_secs(5), || {
        p.target_status("api").unwrap().iter().all(|t| t.healthy)
    })
    .await;
    assert_eq!(tally(&p, 4).await, counts(&[("a", 2), ("b", 2)]));
    checks.stop().await;
}

#[tokio::test]
async fn consecutive_failures_eject_a_target_passively() {
    let (a, b) = (
        backend("a", Duration::ZERO).await,
        backend("b", Duration::ZERO).await,
    );
    a.failing.store(true, Ordering::SeqCst);
    let mut e = pool_endpoint(&[(&a, 1), (&b, 1)], Strategy::RoundRobin);
    e.passive_ejection = Some(PassiveEjectionConfig {
        consecutive_failures: 2,
        ejection_seconds: 60,
    });
    let (p, metrics) = processor_with_metrics(&config(e));
    // Round robin: a fails, b answers, a fails again and is ejected.
    assert!(who(&p).await.is_err());
    assert_eq!(who(&p).await.unwrap(), "b");
    assert!(who(&p).await.is_err());
    assert!(p.target_status("api").unwrap()[0].ejected);
    assert_eq!(tally(&p, 6).await, counts(&[("b", 6)]));
    let exported = metrics.render();
    let ejections = |url: &str| {
        format!("openhqm_upstream_ejections_total{{endpoint=\"api\",target=\"{url}\"}}")
    };
    assert!(
        exported.contains(&format!("{} 1", ejections(&a.url))),
        "{exported}"
    );
    assert!(
        exported.contains(&format!("{} 0", ejections(&b.url))),
        "{exported}"
    );
}

#[tokio::test]
async fn breaker_opens_rejects_then_recovers_through_a_trial() {
    let a = backend("a", Duration::ZERO).await;
    a.failing.store(true, Ordering::SeqCst);
    let mut e = pool_endpoint(&[(&a, 1)], Strategy::RoundRobin);
    e.circuit_breaker = Some(CircuitBreakerConfig {
        failure_threshold: 2,
        open_seconds: 1,
        half_open_max: 1,
    });
    let (p, metrics) = processor_with_metrics(&config(e));
    let breaker = || p.target_status("api").unwrap()[0].breaker;
    for _ in 0..2 {
        assert!(who(&p).await.unwrap_err().message.contains("503"));
    }
    assert_eq!(breaker(), Some("open"));
    assert!(
        metrics
            .render()
            .contains("openhqm_upstream_breaker_state{endpoint=\"api\"")
    );
    // Open: refused without touching the backend, as no attempt, and the
    // message waits until the breaker lets a trial through.
    let err = who(&p).await.unwrap_err();
    assert!(err.message.contains("no healthy target"), "{}", err.message);
    assert_eq!(err.kind, FailureKind::Busy);
    let wait = err.retry_after.expect("a retry after the open breaker");
    assert!(
        !wait.is_zero() && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    // After open_seconds, a failed trial opens it again...
    eventually("half open", Duration::from_secs(3), || {
        breaker() == Some("half_open")
    })
    .await;
    assert!(who(&p).await.unwrap_err().message.contains("503"));
    assert_eq!(breaker(), Some("open"));
    // ...and a good one closes it.
    a.failing.store(false, Ordering::SeqCst);
    eventually("half open again", Duration::from_secs(3), || {
        breaker() == Some("half_open")
    })
    .await;
    assert_eq!(who(&p).await.unwrap(), "a");
    assert_eq!(breaker(), Some("closed"));
}
