//! The sidecar (passthrough) ingress through the real binary, configured by
//! the ConfigMap of `examples/kubernetes/sidecar.yaml`, in front of a real
//! HTTP backend on 127.0.0.1: exact replay and exact answers, RFC 7240
//! `Prefer`, idempotency keys, cancel, drain on SIGTERM, `kill -9` (every
//! `202` kept), a burst of 20,000 requests against a backend capped at 50
//! concurrent, and a burst on the sidecar port past `server.max_pending`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::{Server, free_port, get_json, http_client, until};
use serde::Deserialize;
use serde_json::{Value, json};

const POD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/kubernetes/sidecar.yaml"
);

/// One request as the backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct Backend {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// The `x-call` of every request the backend answered.
    answered: Mutex<HashSet<String>>,
}

/// The exact body the backend answers with: JSON, formatted its own way.
const ANSWER: &[u8] = b"{ \"ok\" :  true }\n";

/// A header value in ISO-8859-1, as legacy apps send file names: not UTF-8.
const LATIN1: &[u8] = b"attachment; filename=\"r\xe9sum\xe9.pdf\"";

/// Records every request (and, once answered, its `x-call`); waits
/// `x-delay-ms` if sent; answers 201 with two cookies, a Latin-1 header, its
/// own content type, the `x-call` it answers (as `x-answer-to`) and
/// [`ANSWER`], or 503 on `/unavailable`.
async fn backend_handler(
    State(b): State<Arc<Backend>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = b.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    b.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = headers
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let call = headers
        .get("x-call")
        .and_then(|v| Some(v.to_str().ok()?.to_owned()));
    b.seen.lock().expect("lock").push(Seen {
        method,
        uri: uri.clone(),
        headers,
        body,
    });
    tokio::time::sleep(Duration::from_millis(delay)).await;
    b.in_flight.fetch_sub(1, Ordering::SeqCst);
    if let Some(call) = &call {
        b.answered.lock().expect("lock").insert(call.clone());
    }
    if uri.path() == "/unavailable" {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    let mut answer = Response::builder();
    if let Some(call) = call {
        answer = answer.header("x-answer-to", call);
    }
    answer
        .status(StatusCode::CREATED)
        .header("set-cookie", "a=1; Path=/")
        .header("set-cookie", "b=2; Path=/")
        .header("content-type", "application/vnd.orders+json")
        .header("x-app", "legacy")
        .header(
            "content-disposition",
            axum::http::HeaderValue::from_bytes(LATIN1).expect("obs-text"),
        )
        .body(axum::body::Body::from(ANSWER))
        .expect("response")
}

async fn start_backend() -> (String, Arc<Backend>) {
    let state = Arc::new(Backend::default());
    let router = Router::new()
        .fallback(backend_handler)
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), state)
}

/// The openhqm.yaml of the example pod's ConfigMap, as a file.
fn pod_config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(POD).expect("read the pod example");
    let config = serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_norway::Value::deserialize(doc).expect("a YAML document"))
        .find(|doc| doc["kind"].as_str() == Some("ConfigMap"))
        .and_then(|cm| cm["data"]["openhqm.yaml"].as_str().map(str::to_owned))
        .expect("the ConfigMap carries openhqm.yaml");
    let path = dir.join("openhqm.yaml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// OpenHQM with the pod's config, in front of `backend`; returns the server
/// and the passthrough base URL.
async fn start(dir: &std::path::Path, backend: &str, sets: &[&str]) -> (Server, String) {
    let config = pod_config(dir);
    let (api, passthrough) = (free_port(), free_port());
    let data = dir.join("data");
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        config.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        api.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--set".into(),
        format!("sidecar.port={passthrough}"),
        "--set".into(),
        "monitoring.log_level=DEBUG".into(),
    ];
    for s in sets {
        args.extend(["--set".into(), (*s).to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::spawn(dir, api, &args, &[("APP_URL", backend)]);
    server.ready(&http_client()).await;
    (server, format!("http://127.0.0.1:{passthrough}"))
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_replays_the_call_and_returns_the_backends_exact_answer() {
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, side) = start(dir.path(), &url, &["sidecar.preserve_host=true"]).await;
    let http = http_client();

    let body: &[u8] = b"<order id=\"7\">\x00\xffraw</order>";
    let r = http
        .put(format!("{side}/orders/7?expand=lines&x=%20y"))
        .header("content-type", "application/xml")
        .header("authorization", "Bearer caller")
        .header("x-request-tag", "t1")
        .header("host", "orders.example.com")
        .header(
            "x-user",
            reqwest::header::HeaderValue::from_bytes("José".as_bytes()).expect("obs-text"),
        )
        .header(
            "x-latin",
            reqwest::header::HeaderValue::from_bytes(LATIN1).expect("obs-text"),
        )
        .header("prefer", "return=representation, wait=20")
        .header("connection", "keep-alive")
        .body(body)
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::CREATED, "the backend's own status");
    let cookies: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        cookies,
        ["a=1; Path=/", "b=2; Path=/"],
        "repeated headers kept"
    );
    let types: Vec<_> = r.headers().get_all("content-type").iter().collect();
    assert_eq!(
        types,
        ["application/vnd.orders+json"],
        "the backend's type, once"
    );
    assert_eq!(
        r.headers().get_all("content-length").iter().count(),
        1,
        "framing is redone once for the caller"
    );
    assert_eq!(r.content_length(), Some(ANSWER.len() as u64));
    assert_eq!(header(&r, "x-app"), Some("legacy"));
    assert_eq!(
        r.headers().get("content-disposition").map(|v| v.as_bytes()),
        Some(LATIN1),
        "header bytes that are not UTF-8 come back as the app sent them"
    );
    assert!(header(&r, "x-correlation-id").is_some());
    assert_eq!(&r.bytes().await.expect("body")[..], ANSWER, "byte for byte");

    let seen = backend.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, Method::PUT);
    assert_eq!(s.uri.path(), "/orders/7");
    assert_eq!(s.uri.query(), Some("expand=lines&x=%20y"));
    assert_eq!(&s.body[..], body, "the raw body arrives unchanged");
    let h = |n: &str| s.headers.get(n).and_then(|v| v.to_str().ok());
    assert_eq!(h("content-type"), Some("application/xml"));
    assert_eq!(h("authorization"), Some("Bearer caller"));
    assert_eq!(h("x-request-tag"), Some("t1"));
    assert_eq!(
        s.headers.get("x-user").map(|v| v.as_bytes()),
        Some("José".as_bytes()),
        "non-ASCII header bytes pass"
    );
    assert_eq!(
        s.headers.get("x-latin").map(|v| v.as_bytes()),
        Some(LATIN1),
        "header bytes that are not UTF-8 pass as sent"
    );
    assert_eq!(
        h("prefer"),
        Some("return=representation"),
        "the application's preferences pass; the wait was ours"
    );
    assert!(h("x-correlation-id").is_some());
    assert!(h("traceparent").is_some());
    assert_eq!(
        h("host"),
        Some("orders.example.com"),
        "the Host the caller sent, not the app's own address"
    );

    // A bodiless GET stays bodiless.
    let r = http
        .get(format!("{side}/health-of-the-app"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::CREATED);
    let seen = backend.seen.lock().expect("lock").clone();
    assert_eq!(seen[1].method, Method::GET);
    assert!(seen[1].body.is_empty());

    // A path that climbs above its root is the caller's mistake: 400, and
    // nothing queued. An encoded slash inside a name passes as sent.
    let r = http
        .get(format!("{side}/..%2F..%2Fadmin"))
        .send()
        .await
        .expect("climb");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let problem: Value = r.json().await.expect("problem");
    assert_eq!(problem["code"], "invalid-path");
    let r = http
        .get(format!("{side}/groups/a%2Fb"))
        .send()
        .await
        .expect("encoded slash");
    assert_eq!(r.status(), StatusCode::CREATED);
    let seen = backend.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "the climb was never forwarded");
    assert_eq!(seen[2].uri.path(), "/groups/a%2Fb");

    // A HEAD is told the size of the body a GET would get.
    let r = http
        .head(format!("{side}/orders/7"))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        header(&r, "content-length"),
        Some(ANSWER.len().to_string().as_str())
    );

    // A backend that keeps failing: its last answer comes back once the
    // retries are spent (one retry here, to keep the test short).
    drop(server);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, side) = start(
        dir.path(),
        &url,
        &[
            "worker.max_retries=1",
            "worker.retry_delay_base=0.05",
            "worker.retry_delay_max=0.1",
            "worker.timeout_seconds=1",
        ],
    )
    .await;
    let r = http
        .post(format!("{side}/unavailable"))
        .header("host", "orders.example.com")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text().await.expect("text"), "down for maintenance");
    let seen = backend.seen.lock().expect("lock").clone();
    let last = seen.last().expect("forwarded");
    assert_eq!(
        last.headers.get("host").and_then(|v| v.to_str().ok()),
        url.strip_prefix("http://"),
        "by default the app gets its own address as Host"
    );

    // No answer at all (every attempt timed out): a problem, still with the
    // correlation id and the preferences applied.
    let r = http
        .get(format!("{side}/slow"))
        .header("x-delay-ms", "3000")
        .header("prefer", "wait=20")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(header(&r, "x-correlation-id").is_some());
    assert_eq!(header(&r, "preference-applied"), Some("wait=20"));
    assert_eq!(header(&r, "vary"), Some("prefer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_wrong_methods_on_the_status_resources_are_405_problems() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, side) = start(dir.path(), &url, &[]).await;
    let addr = side.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "CONNECT {url_host} HTTP/1.1\r\nHost: {url_host}\r\n\r\n",
        url_host = url.trim_start_matches("http://").trim_end_matches('/')
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = vec![0u8; 1024];
    let n = stream.read(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");

    // `OPTIONS *` names no resource of the app: a 400 that says so.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("OPTIONS * HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("asterisk-form"), "{answer}");

    let r = http_client()
        .post(format!(
            "{side}/api/v1/status/00000000-0000-0000-0000-000000000000"
        ))
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&r, "content-type"), Some("application/problem+json"));
    assert!(
        backend.seen.lock().expect("seen").is_empty(),
        "nothing replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_respond_async_and_a_wait_that_runs_out_give_202_with_location() {
    let (url, _backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, side) = start(dir.path(), &url, &[]).await;
    let http = http_client();

    let r = http
        .post(format!("{side}/jobs"))
        .header("prefer", "respond-async")
        .body("{}")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "preference-applied"), Some("respond-async"));
    assert_eq!(header(&r, "retry-after"), Some("1"));
    let location = header(&r, "location").expect("Location").to_owned();
    assert!(location.starts_with("/api/v1/status/"), "{location}");
    // The Location resolves on the passthrough port itself.
    let status = http
        .get(format!("{side}{location}"))
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), StatusCode::OK);
    let id = location.rsplit('/').next().expect("id").to_owned();
    let done: Value = get_json(
        &http,
        format!("{}/api/v1/response/{id}?wait=10", server.base),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["status_code"], 201);
    // Kept once, as the exact bytes, and shown by the app's content type.
    assert_eq!(done["result"], json!({"ok": true}), "{done}");

    // The backend takes 3 s; the caller waits 1 s, then gets a 202.
    let started = std::time::Instant::now();
    let r = http
        .post(format!("{side}/slow"))
        .header("prefer", "wait=1")
        .header("x-delay-ms", "3000")
        .send()
        .await
        .expect("call");
    let waited = started.elapsed();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "preference-applied"), Some("wait=1"));
    assert!(header(&r, "location").is_some());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2900),
        "waited about the 1 s asked for, not the backend's 3 s: {waited:?}"
    );

    // `respond-async` with a wait: the answer if it comes in time, and the
    // wait asked for (not the time taken) is what was applied.
    let r = http
        .post(format!("{side}/quick"))
        .header("prefer", "respond-async, wait=10")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::CREATED, "answered within the wait");
    assert_eq!(header(&r, "preference-applied"), Some("wait=10"));
    let r = http
        .post(format!("{side}/slow"))
        .header("prefer", "respond-async, wait=1")
        .header("x-delay-ms", "3000")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(&r, "preference-applied"),
        Some("respond-async, wait=1")
    );
    // `wait=0`: a 202 at once, and the wait said to be applied.
    let r = http
        .post(format!("{side}/jobs"))
        .header("prefer", "wait=0")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(header(&r, "location").is_some());
    assert_eq!(header(&r, "preference-applied"), Some("wait=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_give_one_request_and_one_answer() {
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, side) = start(dir.path(), &url, &[]).await;
    let http = http_client();

    let call = |body: &'static str| {
        http.post(format!("{side}/payments"))
            .header("idempotency-key", "\"pay-1\"")
            .header("authorization", "Bearer alice")
            .body(body)
            .send()
    };
    let first = call("{\"amount\": 10}").await.expect("call");
    assert_eq!(first.status(), StatusCode::CREATED);
    let id = header(&first, "x-correlation-id").expect("id").to_owned();
    let again = call("{\"amount\": 10}").await.expect("call");
    assert_eq!(again.status(), StatusCode::CREATED, "the same answer");
    assert_eq!(header(&again, "x-correlation-id"), Some(id.as_str()));
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
    assert_eq!(&again.bytes().await.expect("body")[..], ANSWER);
    let other = call("{\"amount\": 99}").await.expect("call");
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = other.json().await.expect("json");
    assert_eq!(problem["code"], "idempotency-key-reused");

    // Another caller's identical key is another request.
    let bob = http
        .post(format!("{side}/payments"))
        .header("idempotency-key", "\"pay-1\"")
        .header("authorization", "Bearer bob")
        .body("{\"amount\": 10}")
        .send()
        .await
        .expect("call");
    assert_ne!(header(&bob, "x-correlation-id"), Some(id.as_str()));

    // Callers that do not say who they are share no scope: each call is its own.
    for _ in 0..2 {
        let anonymous = http
            .post(format!("{side}/payments"))
            .header("idempotency-key", "\"pay-1\"")
            .body("{\"amount\": 10}")
            .send()
            .await
            .expect("call");
        assert!(anonymous.headers().get("idempotent-replayed").is_none());
    }

    let seen = backend.seen.lock().expect("lock").clone();
    assert_eq!(
        seen.len(),
        4,
        "alice's repeat never reached the backend; anonymous calls did"
    );
    assert_eq!(
        seen[0]
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok()),
        Some("\"pay-1\""),
        "the key is passed on as sent, so the backend can deduplicate too"
    );

    // The submit API: the same key gives the same id, a repeat in flight
    // the same 202.
    let submit = |amount: u32| {
        http.post(format!("{}/api/v1/submit", server.base))
            .header("idempotency-key", "order-9")
            .header("authorization", "Bearer carol")
            .json(&json!({"payload": {"amount": amount}}))
            .send()
    };
    let a: Value = submit(1).await.expect("submit").json().await.expect("json");
    let b = submit(1).await.expect("submit");
    assert_eq!(b.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&b, "idempotent-replayed"), Some("true"));
    let b: Value = b.json().await.expect("json");
    assert_eq!(a["correlation_id"], b["correlation_id"]);
    let c = submit(2).await.expect("submit");
    assert_eq!(c.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_is_never_forwarded() {
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // One worker: the first request holds it while the second waits.
    let (server, _side) = start(
        dir.path(),
        &url,
        &["worker.count=1", "proxy.forward_headers=*"],
    )
    .await;
    let http = http_client();
    let submit = |delay: &'static str| {
        http.post(format!("{}/api/v1/submit", server.base))
            .json(&json!({"payload": {}, "headers": {"x-delay-ms": delay}}))
            .send()
    };
    let busy: Value = submit("1500")
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let busy = busy["correlation_id"].as_str().expect("id").to_owned();
    until("the first request to be held", async || {
        (backend.seen.lock().ok()?.len() == 1).then_some(())
    })
    .await;
    let queued: Value = submit("0")
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let queued = queued["correlation_id"].as_str().expect("id").to_owned();

    let cancelled = http
        .delete(format!("{}/api/v1/status/{queued}", server.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(cancelled.status(), StatusCode::OK);
    let body: Value = cancelled.json().await.expect("json");
    assert_eq!(body["status"], "CANCELLED");

    let in_flight = http
        .delete(format!("{}/api/v1/status/{busy}", server.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(in_flight.status(), StatusCode::CONFLICT, "held by a worker");

    // The first finishes; the cancelled one is dropped, not forwarded.
    let done: Value = get_json(
        &http,
        format!("{}/api/v1/response/{busy}?wait=10", server.base),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED");
    until("the cancelled message to be consumed", async || {
        let depth = server.metric(&http, "openhqm_queue_depth{").await;
        (depth == 0.0).then_some(())
    })
    .await;
    assert_eq!(backend.seen.lock().expect("lock").len(), 1);
    let status: Value = get_json(&http, format!("{}/api/v1/status/{queued}", server.base)).await;
    assert_eq!(status["status"], "CANCELLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_waiting_caller() {
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, side) = start(dir.path(), &url, &["worker.drain_timeout_seconds=1"]).await;
    let http = http_client();
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let http = http.clone();
            let side = side.clone();
            tokio::spawn(async move {
                http.post(format!("{side}/slow"))
                    .header("x-delay-ms", "8000")
                    .header("prefer", "wait=20")
                    .send()
                    .await
            })
        })
        .collect();
    until("all five calls to reach the backend", async || {
        (backend.seen.lock().ok()?.len() == 5).then_some(())
    })
    .await;
    let stopped = std::time::Instant::now();
    server.terminate();
    for caller in callers {
        let r = caller.await.expect("join").expect("answered, not cut off");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert!(header(&r, "location").is_some());
        assert_eq!(
            header(&r, "preference-applied"),
            None,
            "the wait was cut short: not applied"
        );
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "callers were answered at once, not after the backend"
    );
    let mut server = server;
    let status = server.child.wait().expect("exit");
    assert!(status.success(), "{status}");
}

/// What a caller of the sidecar asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `202` at once (`Prefer: respond-async`).
    Accepted,
    /// A wait of 1 s on a call the app takes 1.5 s over: a `202` once the
    /// wait runs out.
    LateAccepted,
    /// A wait of 5 s on a call the app answers at once: the app's answer.
    Answered,
}

/// A waiting call is held in memory, not written, until something syncs:
/// a crash may lose it, and its caller, cut off, knows it got no answer. A
/// `202` is different: it is a promise. `kill -9` the process while callers
/// get `202`s both ways (`Prefer: respond-async`, and a wait that runs out
/// on a slow app) and answers, restart it on the same data, and every `202`
/// call reaches the app and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_loses_no_call_that_got_a_202() {
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, side) = start(dir.path(), &url, &[]).await;
    let http = http_client();
    // (call, what it asked for, the id of the 202 it got)
    let outcomes = Arc::new(Mutex::new(Vec::<(String, Kind, Option<String>)>::new()));
    let callers: Vec<_> = (0..12)
        .map(|c| {
            let (http, side, outcomes) = (http.clone(), side.clone(), Arc::clone(&outcomes));
            tokio::spawn(async move {
                for i in 0.. {
                    let call = format!("{c}-{i}");
                    // 202 at once (the app then takes 300 ms); answered; or
                    // a 202 once the 1 s wait runs out on a 1.5 s app.
                    let (prefer, delay, kind) = match i % 3 {
                        0 => ("respond-async", "300", Kind::Accepted),
                        1 => ("wait=5", "0", Kind::Answered),
                        _ => ("wait=1", "1500", Kind::LateAccepted),
                    };
                    let Ok(r) = http
                        .post(format!("{side}/orders/{call}"))
                        .header("prefer", prefer)
                        .header("x-delay-ms", delay)
                        .header("x-call", &call)
                        .body(format!("{{\"order\": \"{call}\"}}"))
                        .send()
                        .await
                    else {
                        return; // the process is gone
                    };
                    // Sorted by the answer it got, not by what it asked
                    // for: on a loaded machine a wait can run out.
                    let id = match r.status() {
                        StatusCode::CREATED => None,
                        StatusCode::ACCEPTED => {
                            let location = header(&r, "location").expect("a 202's Location");
                            Some(location.rsplit('/').next().expect("id").to_owned())
                        }
                        other => panic!("call {call}: {other}"),
                    };
                    outcomes.lock().expect("lock").push((call, kind, id));
                }
            })
        })
        .collect();
    until("202s both ways and answers", async || {
        let outcomes = outcomes.lock().ok()?;
        let late_202s = outcomes
            .iter()
            .filter(|(_, kind, id)| *kind == Kind::LateAccepted && id.is_some())
            .count();
        let answered = outcomes.iter().filter(|(_, _, id)| id.is_none()).count();
        (late_202s >= 12 && answered >= 50).then_some(())
    })
    .await;
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reap");
    let answered_before: HashSet<String> = backend.answered.lock().expect("lock").clone();
    for caller in callers {
        caller.await.expect("caller");
    }
    let promised: Vec<(String, String)> = outcomes
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|(call, _, id)| Some((call.clone(), id.clone()?)))
        .collect();
    let unfinished = promised
        .iter()
        .filter(|(call, _)| !answered_before.contains(call))
        .count();
    assert!(
        unfinished > 0,
        "every 202 call was answered by the app before the kill; the test proved nothing"
    );

    let (server, _side) = start(dir.path(), &url, &[]).await;
    for (call, id) in &promised {
        let done = get_json(
            &http,
            format!("{}/api/v1/response/{id}?wait=20", server.base),
        )
        .await;
        assert_eq!(done["status"], "COMPLETED", "call {call} ({id}): {done}");
        assert_eq!(done["status_code"], 201, "{done}");
    }
    let answered = backend.answered.lock().expect("lock").clone();
    let lost: Vec<&String> = promised
        .iter()
        .map(|(call, _)| call)
        .filter(|call| !answered.contains(*call))
        .collect();
    assert!(lost.is_empty(), "202 calls the app never saw: {lost:?}");
    assert!(server.stop().success());
}

/// The ids in `ids` whose request is not COMPLETED, with the status each has
/// (read with a long-poll, so one about to finish is waited for).
async fn not_completed(
    http: &reqwest::Client,
    base: &str,
    ids: &HashSet<String>,
) -> Vec<(String, Value)> {
    let ids: Vec<String> = ids.iter().cloned().collect();
    let readers: Vec<_> = ids
        .chunks(ids.len().div_ceil(8).max(1))
        .map(|chunk| {
            let (http, base, chunk) = (http.clone(), base.to_owned(), chunk.to_vec());
            tokio::spawn(async move {
                let mut unfinished = Vec::new();
                for id in chunk {
                    let v = get_json(&http, format!("{base}/api/v1/response/{id}?wait=10")).await;
                    if v["status"] != "COMPLETED" {
                        unfinished.push((id, v["status"].clone()));
                    }
                }
                unfinished
            })
        })
        .collect();
    let mut unfinished = Vec::new();
    for reader in readers {
        unfinished.extend(reader.await.expect("reader"));
    }
    unfinished
}

/// 20,000 submits from 200 clients, past `server.max_pending`: the excess is
/// refused with 429 (counted apart) and sent again after `Retry-After`; every
/// accepted request reaches the backend, which never has more than 50 at
/// once, and completes; no 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_friday_burst_loses_nothing_and_respects_the_backend_cap() {
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _side) = start(
        dir.path(),
        &url,
        &[
            "server.max_pending=500",
            "worker.count=128",
            "proxy.forward_headers=*",
            "monitoring.log_level=WARNING",
        ],
    )
    .await;
    let http = http_client();
    const TOTAL: usize = 20_000;
    let accepted = Arc::new(Mutex::new(Vec::with_capacity(TOTAL)));
    let refused = Arc::new(AtomicUsize::new(0));
    let other_answers = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (http, base) = (http.clone(), server.base.clone());
            let (accepted, refused, errors, next) = (
                Arc::clone(&accepted),
                Arc::clone(&refused),
                Arc::clone(&other_answers),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < TOTAL {
                    // A refused request is retried after Retry-After, as
                    // a well-behaved client does.
                    loop {
                        let r = http
                            .post(format!("{base}/api/v1/submit"))
                            .header("content-type", "application/json")
                            .body(r#"{"payload": {"sku": 1}, "headers": {"x-delay-ms": "20"}}"#)
                            .send()
                            .await
                            .expect("submit");
                        match r.status() {
                            StatusCode::ACCEPTED => {
                                let v: Value = r.json().await.expect("json");
                                let id = v["correlation_id"].as_str().expect("id").to_owned();
                                accepted.lock().expect("lock").push(id);
                                break;
                            }
                            StatusCode::TOO_MANY_REQUESTS => {
                                assert!(r.headers().contains_key("retry-after"));
                                refused.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            s => {
                                assert!(!s.is_server_error(), "OpenHQM answered {s}");
                                errors.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let accepted: HashSet<String> = accepted.lock().expect("lock").iter().cloned().collect();
    assert_eq!(other_answers.load(Ordering::SeqCst), 0, "only 202 and 429");
    assert_eq!(
        accepted.len(),
        TOTAL,
        "every request was eventually accepted, each with its own id"
    );
    // The backend takes at most 50 × 1 / 20 ms = 2,500 requests a second,
    // far fewer than 200 clients submit: the queue must reach max_pending.
    let refused = refused.load(Ordering::SeqCst);
    assert!(
        refused > 0,
        "no submit was refused: the burst never reached server.max_pending"
    );

    let completed_sample =
        "openhqm_worker_processing_duration_seconds_count{outcome=\"completed\"}";
    common::until_within(
        Duration::from_secs(180),
        "every request to complete",
        async || {
            let done = server.metric(&http, completed_sample).await as usize;
            (done >= TOTAL).then_some(())
        },
    )
    .await;
    // Zero lost, by identity rather than by counts (a loss could hide behind
    // a duplicate): the backend saw every accepted id, at least once, and
    // nothing else (a refused submit stored nothing).
    let forwards: Vec<String> = backend
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|s| {
            let id = s.headers.get("x-correlation-id").expect("X-Correlation-ID");
            id.to_str().expect("ASCII").to_owned()
        })
        .collect();
    let seen: HashSet<String> = forwards.iter().cloned().collect();
    let never_seen: Vec<&String> = accepted.difference(&seen).collect();
    assert!(
        never_seen.is_empty(),
        "{} accepted requests never reached the backend, e.g. {:?}",
        never_seen.len(),
        &never_seen[..never_seen.len().min(5)]
    );
    let unknown: Vec<&String> = seen.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "the backend got requests no client was told were accepted: {:?}",
        &unknown[..unknown.len().min(5)]
    );
    let unfinished = not_completed(&http, &server.base, &accepted).await;
    assert!(
        unfinished.is_empty(),
        "{} accepted requests did not end COMPLETED, e.g. {:?}",
        unfinished.len(),
        &unfinished[..unfinished.len().min(5)]
    );
    let max = backend.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 50, "the backend saw {max} requests at once");
    let refusals = server
        .metric(&http, "openhqm_api_admission_refused_total")
        .await as usize;
    assert_eq!(refusals, refused, "refusals are counted apart");
    eprintln!(
        "burst: {TOTAL} accepted, {refusals} admission refusals, {} forwards ({} repeated), backend peak {max} in flight",
        forwards.len(),
        forwards.len() - seen.len()
    );
}

/// How one sidecar caller of the burst was answered.
#[derive(Debug)]
enum Got {
    /// The app's answer: the call, and the correlation id it came with.
    Answer(String, String),
    /// 429 (with `Retry-After`): the call.
    Refused(String),
    /// 202 with a `Location` (the wait ran out).
    Accepted,
}

/// One call of the sidecar burst, checked as it is answered.
async fn burst_call(http: &reqwest::Client, side: &str, call: String) -> Got {
    let r = http
        .post(format!("{side}/orders/{call}"))
        .header("x-call", &call)
        .header("x-delay-ms", "100")
        .body(format!("{{\"order\": \"{call}\"}}"))
        .send()
        .await
        .expect("answered, not cut off");
    match r.status() {
        StatusCode::CREATED => {
            assert_eq!(
                header(&r, "x-answer-to"),
                Some(call.as_str()),
                "its own answer"
            );
            let id = header(&r, "x-correlation-id").expect("id").to_owned();
            assert_eq!(&r.bytes().await.expect("body")[..], ANSWER, "call {call}");
            Got::Answer(call, id)
        }
        StatusCode::TOO_MANY_REQUESTS => {
            let after = header(&r, "retry-after").expect("429 with Retry-After");
            assert!(
                after.parse::<u64>().is_ok_and(|s| s > 0),
                "Retry-After: {after}"
            );
            Got::Refused(call)
        }
        StatusCode::ACCEPTED => {
            assert!(header(&r, "location").is_some(), "a 202's Location");
            Got::Accepted
        }
        other => panic!("call {call}: OpenHQM answered {other}"),
    }
}

/// Admission on the sidecar port: 300 callers at once (1,200 calls), six
/// times `server.max_pending`, in front of an app that takes 100 ms a call
/// and 50 at a time. Some callers get 429 with `Retry-After` (and their call
/// never reaches the app), none gets a 5xx, and every caller answered gets
/// the app's own answer to its own call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_burst_past_max_pending_gets_429s_and_no_5xx() {
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, side) = start(
        dir.path(),
        &url,
        &["server.max_pending=50", "monitoring.log_level=WARNING"],
    )
    .await;
    let http = http_client();
    let callers: Vec<_> = (0..300)
        .map(|c| {
            let (http, side) = (http.clone(), side.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..4 {
                    got.push(burst_call(&http, &side, format!("{c}-{i}")).await);
                }
                got
            })
        })
        .collect();
    let mut got = Vec::new();
    for caller in callers {
        got.extend(caller.await.expect("caller"));
    }
    // The correlation id the app saw with each call.
    let forwarded: std::collections::HashMap<String, String> = backend
        .seen
        .lock()
        .expect("lock")
        .iter()
        .map(|s| {
            let h = |n: &str| s.headers.get(n).and_then(|v| v.to_str().ok()).expect(n);
            (h("x-call").to_owned(), h("x-correlation-id").to_owned())
        })
        .collect();
    let (mut answered, mut refused, mut accepted) = (0, 0, 0);
    for g in &got {
        match g {
            Got::Answer(call, id) => {
                answered += 1;
                assert_eq!(
                    forwarded.get(call),
                    Some(id),
                    "call {call} was this request"
                );
            }
            Got::Refused(call) => {
                refused += 1;
                assert!(
                    !forwarded.contains_key(call),
                    "refused call {call} was forwarded"
                );
            }
            Got::Accepted => accepted += 1,
        }
    }
    assert!(
        refused > 0,
        "no caller was refused: max_pending was never reached"
    );
    assert!(answered > 0, "no caller got the app's answer");
    let max = backend.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 50, "the app saw {max} requests at once");
    eprintln!("sidecar burst: {answered} answered, {refused} refused, {accepted} accepted (202)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_large_to_keep_is_a_502_not_an_empty_success() {
    let (url, _backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The backend's answer (`ANSWER`) is 17 bytes.
    let (server, side) = start(dir.path(), &url, &["proxy.max_response_size=8"]).await;
    let http = http_client();
    let r = http
        .get(format!("{side}/orders/1"))
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let id = header(&r, "x-correlation-id").expect("id").to_owned();
    let problem: Value = r.json().await.expect("problem");
    assert_eq!(problem["code"], "upstream-failed", "{problem}");
    // The operator still sees what the backend said, and why it was not kept.
    let stored = get_json(&http, format!("{}/api/v1/response/{id}", server.base)).await;
    assert_eq!(stored["status"], "FAILED", "{stored}");
    assert_eq!(stored["status_code"], 201, "{stored}");
    assert!(
        stored["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_response_size")),
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_prefix_on_the_api_port_passes_through_without_the_prefix() {
    let (url, backend) = start_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _side) = start(dir.path(), &url, &["sidecar.path_prefix=/app"]).await;
    let http = http_client();
    let r = http
        .delete(format!("{}/app/orders/9?why=dup", server.base))
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::CREATED);
    let seen = backend.seen.lock().expect("lock").clone();
    assert_eq!(seen[0].method, Method::DELETE);
    assert_eq!(seen[0].uri.path(), "/orders/9");
    assert_eq!(seen[0].uri.query(), Some("why=dup"));
    // The prefix with a trailing slash is the application's root.
    let r = http
        .get(format!("{}/app/?q=1", server.base))
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), StatusCode::CREATED);
    let seen = backend.seen.lock().expect("lock").clone();
    assert_eq!(seen[1].uri.path(), "/");
    assert_eq!(seen[1].uri.query(), Some("q=1"));
    // The API itself is untouched, and passthrough calls have their own label.
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"route="passthrough""#),
        "passthrough calls are labelled as such:\n{metrics}"
    );
    assert!(!metrics.contains("/orders/9"), "no raw paths in labels");
}
