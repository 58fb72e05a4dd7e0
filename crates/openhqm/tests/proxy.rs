//! Proxy mode through the real binary: `examples/proxy.yaml` loaded as a
//! user would, a real backend on 127.0.0.1, the token injected by OpenHQM and
//! never written to its logs.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

use common::{BIN, Server, free_port, http_client, status_of, submit, until};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/proxy.yaml");
const TOKEN: &str = "tok-9f8e7d6c5b4a-never-logged";

/// What the backend received: (authorization, x-service, body).
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// The `orders` backend: records each request and answers 201 with a header.
async fn orders_backend() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let router = Router::new().route(
        "/orders",
        post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let record = Arc::clone(&record);
            async move {
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                record.lock().expect("lock").push((
                    header("authorization"),
                    header("x-service"),
                    body.0.clone(),
                ));
                (
                    StatusCode::CREATED,
                    [("x-order-id", "42")],
                    axum::Json(json!({"created": body.0})),
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), seen)
}

fn start(dir: &Path, port: u16, backend: &str) -> Child {
    let log = std::fs::File::create(dir.join("server.log")).expect("log");
    Command::new(BIN)
        .args(["serve", "--config", EXAMPLE, "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--data-dir"])
        .arg(dir.join("data"))
        .args(["--set", "monitoring.log_level=DEBUG"])
        .env("ORDERS_URL", backend)
        .env("ORDERS_TOKEN", TOKEN)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn openhqm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_config_forwards_with_injected_auth_and_keeps_the_answer() {
    let (backend, seen) = orders_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port, &backend);
    let http = http_client();
    until("readiness", async || {
        let r = http.get(format!("{base}/health/ready")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let accepted: Value = http
        .post(format!("{base}/api/v1/submit"))
        .json(&json!({"payload": [1, "two", {"three": 3}], "headers": {"Authorization": "Bearer client"}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = accepted["correlation_id"].as_str().expect("id").to_owned();
    let done: Value = until("completion", async || {
        let r = http
            .get(format!("{base}/api/v1/response/{id}"))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())?;
        r.json().await.ok()
    })
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["status_code"], 201);
    assert_eq!(done["result"], json!({"created": [1, "two", {"three": 3}]}));
    assert_eq!(done["headers"]["x-order-id"], "42");

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let (auth, service, body) = &seen[0];
    assert_eq!(
        auth,
        &format!("Bearer {TOKEN}"),
        "auth injected last, over the client's"
    );
    assert_eq!(service, "openhqm", "static endpoint header");
    assert_eq!(body, &json!([1, "two", {"three": 3}]));

    // An endpoint that is not configured is refused at submit, not later.
    let refused = http
        .post(format!("{base}/api/v1/submit"))
        .json(&json!({"payload": {}, "metadata": {"endpoint": "nope"}}))
        .send()
        .await
        .expect("submit");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("openhqm_upstream_requests_total{endpoint=\"orders\""),
        "per-endpoint metrics exported:\n{metrics}"
    );
    assert!(!metrics.contains(TOKEN));

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("log");
    assert!(
        log.contains(&id),
        "the log is about this request at DEBUG:\n{log}"
    );
    assert!(
        !log.contains(TOKEN),
        "the token leaked into the log:\n{log}"
    );
}

/// A backend that answers 503 while `broken`, then 200 with what it got.
async fn repairable_backend(broken: Arc<AtomicBool>) -> String {
    let router = Router::new().route(
        "/",
        post(move |body: axum::Json<Value>| {
            let broken = Arc::clone(&broken);
            async move {
                if broken.load(Ordering::SeqCst) {
                    return (StatusCode::SERVICE_UNAVAILABLE, "down for repairs").into_response();
                }
                axum::Json(json!({"took": body.0})).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_failed_by_a_broken_backend_is_redriven_once_it_is_fixed() {
    let broken = Arc::new(AtomicBool::new(true));
    let backend = repairable_backend(Arc::clone(&broken)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let port_arg = port.to_string();
    let data = dir.path().join("data");
    let endpoint = format!("proxy.default_endpoint={backend}");
    let server = Server::spawn(
        dir.path(),
        port,
        &[
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port_arg,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--set",
            "proxy.enabled=true",
            "--set",
            &endpoint,
            "--set",
            "worker.max_retries=1",
            "--set",
            "worker.retry_delay_base=0.05",
            "--set",
            "worker.retry_delay_max=0.1",
        ],
        &[],
    );
    let http = http_client();
    server.ready(&http).await;
    let base = &server.base;
    let id = submit(&http, base, &json!({"payload": {"order": 7}}))
        .await
        .expect("accepted");
    let dead: Value = until("the dead letter", async || {
        let listed: Value = http
            .get(format!("{base}/api/v1/dead-letters"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (listed["depth"] == 1).then_some(listed)
    })
    .await;
    assert_eq!(dead["dead_letters"][0]["correlation_id"], id.as_str());
    assert_eq!(status_of(&http, base, &id).await.as_deref(), Some("FAILED"));

    broken.store(false, Ordering::SeqCst);
    let redriven: Value = http
        .post(format!("{base}/api/v1/dead-letters/redrive"))
        .send()
        .await
        .expect("redrive")
        .json()
        .await
        .expect("json");
    assert_eq!(redriven, json!({"redriven": 1}));
    let done: Value = until("the redriven request's result", async || {
        let r = http
            .get(format!("{base}/api/v1/response/{id}"))
            .send()
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        (body["status"] == "COMPLETED").then_some(body)
    })
    .await;
    assert_eq!(done["status_code"], 200);
    assert_eq!(done["result"], json!({"took": {"order": 7}}));
    let left: Value = http
        .get(format!("{base}/api/v1/dead-letters"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(left["depth"], 0);
    assert!(server.stop().success());
}
