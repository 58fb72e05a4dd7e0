//! Queue → HTTP with foreign messages: an outside producer writes raw JSON and
//! CloudEvents (structured and binary mode) to the Redis stream with plain
//! `XADD`s; a real `openhqm worker` forwards each to a real HTTP backend on
//! 127.0.0.1 with the right body, content type and `ce-*` / mapped headers;
//! results are read back through a real `openhqm listener`; a malformed event
//! is dead-lettered with its reason. The processes load `examples/bridge.yaml`.
#![cfg(feature = "redis")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use openhqm_core::{CorrelationId, Decoder};
use openhqm_redis_testkit::RedisServer;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_openhqm");
const STREAM: &str = "openhqm-requests";
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/bridge.yaml");

/// One request as the backend saw it: lowercase header names.
#[derive(Debug, Clone)]
struct Seen {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A backend that records every request and answers `{"seen": <n>}`.
async fn backend() -> (String, Log) {
    let log: Log = Arc::default();
    let recorder = Arc::clone(&log);
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let log = Arc::clone(&recorder);
        async move {
            let headers = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
                .collect();
            let mut log = log.lock().expect("lock");
            log.push(Seen {
                headers,
                body: body.to_vec(),
            });
            (StatusCode::OK, axum::Json(json!({"seen": log.len()})))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log)
}

/// One openhqm process; killed if still running when dropped.
struct Proc {
    child: Child,
    base: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `role` with `examples/bridge.yaml`, as the README shows it.
fn start(role: &str, redis_url: &str, backend: &str, dir: &Path) -> Proc {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = std::fs::File::create(dir.join(format!("{role}.log"))).expect("log file");
    let child = Command::new(BIN)
        .args([role, "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--config", EXAMPLE])
        .args(["--set", "queue.lease_seconds=2", "--set", "worker.count=4"])
        .env_remove("OPENHQM_CONFIG")
        .env("REDIS_URL", redis_url)
        .env("EVENTS_URL", backend)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn openhqm");
    Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn redis<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    cmd.query_async(&mut conn).await.expect("redis command")
}

/// `XADD openhqm-requests * <fields>`, as an outside producer writes it.
async fn xadd(url: &str, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    redis(url, &cmd).await
}

/// The backend's request carrying `X-Correlation-ID: id`.
async fn seen_for(log: &Log, id: CorrelationId) -> Seen {
    let id = id.to_string();
    eventually(&format!("the backend to receive {id}"), || {
        let found = log
            .lock()
            .expect("lock")
            .iter()
            .find(|s| s.headers.get("x-correlation-id") == Some(&id))
            .cloned();
        async move { found }
    })
    .await
}

/// The finished result, read through the listener.
async fn result_of(http: &reqwest::Client, listener: &Proc, id: CorrelationId) -> Value {
    let url = format!("{}/api/v1/response/{id}", listener.base);
    eventually(&format!("the result of {id}"), || async {
        let r = http.get(&url).send().await.ok()?;
        if r.status() != reqwest::StatusCode::OK {
            return None;
        }
        r.json::<Value>().await.ok()
    })
    .await
}

fn assert_headers(seen: &Seen, expected: &[(&str, &str)]) {
    for (name, value) in expected {
        assert_eq!(
            seen.headers.get(*name).map(String::as_str),
            Some(*value),
            "header {name} in {:?}",
            seen.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_are_forwarded_with_their_headers_and_results_kept() {
    let server = RedisServer::start();
    let url = server.url();
    let (backend, log) = backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let worker = start("worker", &url, &backend, dir.path());
    let listener = start("listener", &url, &backend, dir.path());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    // Raw JSON with an attribute mapped to a header.
    let entry = xadd(&url, &[("payload", r#"{"order":7}"#), ("tenant", "acme")]).await;
    let decoder = Decoder {
        queue: STREAM.into(),
        ..Decoder::default()
    };
    let raw_id = decoder.raw_id(&entry);
    let seen = seen_for(&log, raw_id).await;
    assert_eq!(seen.body, br#"{"order":7}"#);
    assert_headers(
        &seen,
        &[("content-type", "application/json"), ("x-tenant", "acme")],
    );
    assert!(!seen.headers.contains_key("ce-id"), "{:?}", seen.headers);
    let r = result_of(&http, &listener, raw_id).await;
    assert_eq!(
        (r["status"].as_str(), r["status_code"].as_u64()),
        (Some("COMPLETED"), Some(200)),
        "{r}"
    );

    // A structured CloudEvent with XML data: binary-mode HTTP on the way out.
    let structured = r#"{"specversion":"1.0","id":"evt-1","source":"/shop","type":"order.created",
        "subject":"order 7","time":"2026-01-02T03:04:05Z","datacontenttype":"application/xml",
        "data":"<order id=\"7\"/>"}"#;
    xadd(
        &url,
        &[
            ("payload", structured),
            ("content-type", "application/cloudevents+json"),
        ],
    )
    .await;
    let ce_id = CorrelationId::derived(b"ce:5:/shopevt-1");
    let seen = seen_for(&log, ce_id).await;
    assert_eq!(seen.body, br#"<order id="7"/>"#);
    assert_headers(
        &seen,
        &[
            ("content-type", "application/xml"),
            ("ce-specversion", "1.0"),
            ("ce-id", "evt-1"),
            ("ce-source", "/shop"),
            ("ce-type", "order.created"),
            ("ce-subject", "order%207"),
            ("ce-time", "2026-01-02T03:04:05Z"),
            ("x-event-subject", "order 7"),
        ],
    );
    let r = result_of(&http, &listener, ce_id).await;
    assert_eq!(r["status"], "COMPLETED", "{r}");

    // A binary-mode CloudEvent: attributes are the entry's own fields.
    xadd(
        &url,
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "evt-2"),
            ("ce_source", "/billing"),
            ("ce_type", "invoice.paid"),
            ("ce_tenant", "globex"),
            ("content-type", "application/json"),
            ("payload", r#"{"amount":5}"#),
        ],
    )
    .await;
    let bin_id = CorrelationId::derived(b"ce:8:/billingevt-2");
    let seen = seen_for(&log, bin_id).await;
    assert_eq!(seen.body, br#"{"amount":5}"#);
    assert_headers(
        &seen,
        &[
            ("content-type", "application/json"),
            ("ce-id", "evt-2"),
            ("ce-source", "/billing"),
            ("ce-type", "invoice.paid"),
            ("ce-tenant", "globex"),
            ("x-tenant", "globex"),
        ],
    );
    let r = result_of(&http, &listener, bin_id).await;
    assert_eq!(r["result"]["seen"], 3, "{r}");

    // The producer sends evt-1 again: same request, already done, not forwarded.
    xadd(&url, &[("payload", structured)]).await;
    // A malformed event (no `source`) is dead-lettered with the reason.
    let broken = r#"{"specversion":"1.0","id":"evt-3","type":"order.created","data":{}}"#;
    xadd(&url, &[("payload", broken)]).await;
    let dead: Vec<(String, BTreeMap<String, String>)> = eventually("the dead letter", || async {
        let dead: Vec<(String, BTreeMap<String, String>)> = redis(
            &url,
            redis::cmd("XRANGE").arg("openhqm-dlq").arg("-").arg("+"),
        )
        .await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].1.get("reason").map(String::as_str),
        Some("malformed CloudEvent: required attribute `source` is missing"),
    );
    eventually("the stream to empty", || async {
        let len: u64 = redis(&url, redis::cmd("XLEN").arg(STREAM)).await;
        (len == 0).then_some(())
    })
    .await;
    let evt1 = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|s| s.headers.get("ce-id").map(String::as_str) == Some("evt-1"))
        .count();
    assert_eq!(evt1, 1, "a redelivered event maps to its finished request");
    assert_eq!(log.lock().expect("lock").len(), 3);
    drop((worker, listener));
}
