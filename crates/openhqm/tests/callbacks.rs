//! Completion callbacks and the reply queue through the real binary: a real
//! webhook receiver on 127.0.0.1, signatures checked with an independent
//! HMAC (ring + base64, not OpenHQM's signer), retries held by the queue.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openhqm_redis_testkit::RedisServer;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_openhqm");
/// The Standard Webhooks reference test secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Hook {
    path_and_query: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
    answered: u16,
}

type Seen = Arc<Mutex<Vec<Hook>>>;

/// A webhook receiver that answers 503 to the first `fail_first` POSTs
/// (every POST when `None`) and 204 after.
async fn receiver(fail_first: Option<usize>) -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let router = Router::new()
        .route(
            "/backend",
            post(|| async { axum::Json(json!({"from": "backend"})) }),
        )
        .route(
            "/hook",
            post(
                move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                    let record = Arc::clone(&record);
                    async move {
                        let h = |n: &str| {
                            headers
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let mut seen = record.lock().expect("lock");
                        let fail = fail_first.is_none_or(|n| seen.len() < n);
                        let status = if fail {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::NO_CONTENT
                        };
                        seen.push(Hook {
                            path_and_query: uri.to_string(),
                            id: h("webhook-id"),
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            body,
                            answered: status.as_u16(),
                        });
                        status
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (port, seen)
}

/// Verifies a Standard Webhooks signature the way a receiver would.
fn verifies(hook: &Hook) -> bool {
    let key = STANDARD
        .decode(SECRET.strip_prefix("whsec_").expect("prefix"))
        .expect("base64");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut content = format!("{}.{}.", hook.id, hook.timestamp).into_bytes();
    content.extend_from_slice(&hook.body);
    hook.signature.split(' ').any(|s| {
        s.strip_prefix("v1,")
            .and_then(|b| STANDARD.decode(b).ok())
            .is_some_and(|tag| ring::hmac::verify(&key, &content, &tag).is_ok())
    })
}

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

fn start(dir: &Path, sets: &[String]) -> Proc {
    start_with(dir, None, sets)
}

fn start_with(dir: &Path, config: Option<&Path>, sets: &[String]) -> Proc {
    let port = free_port();
    let log = std::fs::File::create(dir.join("server.log")).expect("log");
    let mut cmd = Command::new(BIN);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--set", &format!("callbacks.secret={SECRET}")])
        .args(["--set", "callbacks.retry_delay_base=0.05"])
        .args(["--set", "callbacks.retry_delay_max=0.2"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let child = cmd
        .env_remove("OPENHQM_CONFIG")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn openhqm");
    Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn ready(http: &reqwest::Client, p: &Proc) {
    until("readiness", async || {
        let r = http
            .get(format!("{}/health/ready", p.base))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

async fn submit(http: &reqwest::Client, p: &Proc, body: &Value) -> reqwest::Response {
    http.post(format!("{}/api/v1/submit", p.base))
        .json(body)
        .send()
        .await
        .expect("submit")
}

async fn accepted_id(http: &reqwest::Client, p: &Proc, body: &Value) -> String {
    let r = submit(http, p, body).await;
    assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
    let v: Value = r.json().await.expect("json");
    v["correlation_id"].as_str().expect("id").to_owned()
}

async fn response_of(http: &reqwest::Client, p: &Proc, id: &str) -> Value {
    until("the result", async || {
        let r = http
            .get(format!("{}/api/v1/response/{id}", p.base))
            .send()
            .await
            .ok()?;
        (r.status() == reqwest::StatusCode::OK).then_some(())?;
        r.json().await.ok()
    })
    .await
}

async fn delivered(seen: &Seen, n: usize) -> Vec<Hook> {
    until("the callbacks", async || {
        let s = seen.lock().expect("lock").clone();
        (s.iter().filter(|h| h.answered == 204).count() >= n).then_some(s)
    })
    .await
}

/// Checks one delivered callback against the stored result.
fn check_hook(hook: &Hook, id: &str, stored: &Value) {
    assert!(verifies(hook), "signature does not verify: {hook:?}");
    assert_eq!(hook.id, format!("msg_{id}_completed"));
    let ts: u64 = hook.timestamp.parse().expect("timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(ts.abs_diff(now) < 60, "timestamp {ts} vs now {now}");
    let body: Value = serde_json::from_slice(&hook.body).expect("json body");
    assert_eq!(&body, stored, "the callback carries the /response JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_request_is_posted_signed_to_its_callback_url() {
    let (port, seen) = receiver(Some(0)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start(
        dir.path(),
        &[format!("callbacks.allowed_hosts=[\"127.0.0.1:{port}\"]")],
    );
    let http = http_client();
    ready(&http, &p).await;
    let url = format!("http://127.0.0.1:{port}/hook?token=abc");
    let id = accepted_id(
        &http,
        &p,
        &json!({"payload": {"operation": "uppercase", "data": "hi"}, "metadata": {"callback_url": url}}),
    )
    .await;
    let stored = response_of(&http, &p, &id).await;
    assert_eq!(stored["status"], "COMPLETED");
    let hooks = delivered(&seen, 1).await;
    check_hook(&hooks[0], &id, &stored);
    assert_eq!(hooks[0].path_and_query, "/hook?token=abc");

    // A request without callback_url calls nobody.
    let quiet = accepted_id(&http, &p, &json!({"payload": 1})).await;
    response_of(&http, &p, &quiet).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().expect("lock").len(), 1);

    // Hosts off the list, and non-HTTP URLs, are refused at submit.
    for (url, code) in [
        (
            format!("http://127.0.0.1:{}/hook", port.wrapping_add(1)),
            "callback-not-allowed",
        ),
        ("http://localhost/hook".to_owned(), "callback-not-allowed"),
        ("gopher://127.0.0.1/".to_owned(), "invalid-callback-url"),
    ] {
        let r = submit(
            &http,
            &p,
            &json!({"payload": 1, "metadata": {"callback_url": url}}),
        )
        .await;
        assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST, "{url}");
        let problem: Value = r.json().await.expect("problem");
        assert_eq!(problem["code"], code, "{url}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_endpoint_can_carry_the_callback_url() {
    let (port, seen) = receiver(Some(0)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("openhqm.yaml");
    std::fs::write(
        &config,
        format!(
            "proxy:\n  enabled: true\n  default_endpoint: orders\n  endpoints:\n    orders:\n      url: http://127.0.0.1:{port}/backend\n      callback_url: http://127.0.0.1:{port}/hook\ncallbacks:\n  allowed_hosts: [\"127.0.0.1:{port}\"]\n"
        ),
    )
    .expect("config");
    let p = start_with(dir.path(), Some(&config), &[]);
    let http = http_client();
    ready(&http, &p).await;
    let id = accepted_id(&http, &p, &json!({"payload": {"order": 1}})).await;
    let stored = response_of(&http, &p, &id).await;
    assert_eq!(stored["result"], json!({"from": "backend"}), "{stored}");
    let hooks = delivered(&seen, 1).await;
    check_hook(&hooks[0], &id, &stored);
}

/// What `/metrics` of `p` says now.
async fn metrics_text(http: &reqwest::Client, p: &Proc) -> String {
    http.get(format!("{}/metrics", p.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn metric(http: &reqwest::Client, p: &Proc, line: &str) -> bool {
    metrics_text(http, p).await.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_callback_once_it_recovers_or_it_is_dead_lettered() {
    let (port, seen) = receiver(Some(2)).await;
    let (dead_port, dead_seen) = receiver(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start(
        dir.path(),
        &[
            format!("callbacks.allowed_hosts=[\"127.0.0.1:{port}\",\"127.0.0.1:{dead_port}\"]"),
            "callbacks.max_attempts=4".into(),
            "worker.max_retries=0".into(),
        ],
    );
    let http = http_client();
    ready(&http, &p).await;

    // 503, 503, then 204: delivered on the third attempt, same id each time.
    let id = accepted_id(
        &http,
        &p,
        &json!({"payload": {"operation": "echo", "data": 1}, "metadata": {"callback_url": format!("http://127.0.0.1:{port}/hook")}}),
    )
    .await;
    let stored = response_of(&http, &p, &id).await;
    let hooks = delivered(&seen, 1).await;
    assert_eq!(
        hooks.iter().map(|h| h.answered).collect::<Vec<_>>(),
        [503, 503, 204]
    );
    for hook in &hooks {
        check_hook(hook, &id, &stored);
    }

    // Always 503: four attempts, then the job is dead-lettered and counted.
    // The request itself FAILED, which is reported too.
    let failed = accepted_id(
        &http,
        &p,
        &json!({"payload": {"operation": "fail", "permanent": true}, "metadata": {"callback_url": format!("http://127.0.0.1:{dead_port}/hook")}}),
    )
    .await;
    let stored = response_of(&http, &p, &failed).await;
    assert_eq!(stored["status"], "FAILED", "{stored}");
    until("the dead letter", async || {
        metric(
            &http,
            &p,
            "openhqm_callbacks_deliveries_total{outcome=\"dead_lettered\"} 1",
        )
        .await
        .then_some(())
    })
    .await;
    let dead = dead_seen.lock().expect("lock").clone();
    assert_eq!(dead.len(), 4, "max_attempts POSTs: {dead:?}");
    for hook in &dead {
        assert!(verifies(hook));
        assert_eq!(hook.id, format!("msg_{failed}_failed"));
        let body: Value = serde_json::from_slice(&hook.body).expect("json");
        assert_eq!(body, stored);
    }
    assert!(
        metric(
            &http,
            &p,
            "openhqm_callbacks_deliveries_total{outcome=\"retried\"} 5"
        )
        .await
    );
    until("the callback dead-letter depth", async || {
        metric(
            &http,
            &p,
            "openhqm_queue_dlq_depth{queue=\"openhqm-callbacks\"} 1",
        )
        .await
        .then_some(())
    })
    .await;
    // The callback queue's own counters move too: 3 + 4 jobs consumed (one
    // per delivery), one dead-lettered.
    for line in [
        "openhqm_queue_consume_total{queue=\"openhqm-callbacks\"} 7",
        "openhqm_queue_dlq_total{queue=\"openhqm-callbacks\",status=\"FAILED\"} 1",
    ] {
        assert!(metric(&http, &p, line).await, "{line}");
    }
}

/// The value of `openhqm_callbacks_deliveries_total{labels}` (0 if absent).
async fn sample(http: &reqwest::Client, p: &Proc, labels: &str) -> u64 {
    let name = format!("openhqm_callbacks_deliveries_total{labels} ");
    metrics_text(http, p)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&name)?.parse().ok())
        .unwrap_or(0)
}

/// A server that counts every request it gets, whatever its method or path,
/// and answers 204.
async fn counting_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&hits);
    let router = Router::new().fallback(move || {
        count.fetch_add(1, Ordering::SeqCst);
        async { StatusCode::NO_CONTENT }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (port, hits)
}

/// A receiver whose `/{status}` answers that status (a redirect) with
/// `Location: {to}`, and records each POST's path.
async fn redirecting_receiver(to: String) -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let router = Router::new().route(
        "/{status}",
        post(
            move |axum::extract::Path(status): axum::extract::Path<u16>| {
                record.lock().expect("lock").push(format!("/{status}"));
                let status = StatusCode::from_u16(status).expect("a status");
                let to = to.clone();
                async move { (status, [(axum::http::header::LOCATION, to)]) }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (port, seen)
}

/// A redirect could lead anywhere: an allowed receiver answering 302 or 307
/// must not get OpenHQM to call a host off the list. The redirect is not
/// followed; it is a permanent failure (not a 2xx, not 429 or 5xx), so the
/// job is dead-lettered after that one POST, without a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_an_allowed_receiver_is_not_followed() {
    let (elsewhere, hits) = counting_server().await;
    let (port, seen) = redirecting_receiver(format!("http://127.0.0.1:{elsewhere}/hook")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start(
        dir.path(),
        &[
            format!("callbacks.allowed_hosts=[\"127.0.0.1:{port}\"]"),
            "callbacks.max_attempts=3".into(),
        ],
    );
    let http = http_client();
    ready(&http, &p).await;
    for status in [302, 307] {
        let id = accepted_id(
            &http,
            &p,
            &json!({"payload": {"operation": "echo", "data": status}, "metadata": {"callback_url": format!("http://127.0.0.1:{port}/{status}")}}),
        )
        .await;
        assert_eq!(response_of(&http, &p, &id).await["status"], "COMPLETED");
    }
    // Settled either way: a followed redirect ends within its POST's own
    // attempt (delivered by the 204 of the host off the list).
    until("both callbacks to be settled", async || {
        let delivered = sample(&http, &p, "{outcome=\"delivered\"}").await;
        let dead = sample(&http, &p, "{outcome=\"dead_lettered\"}").await;
        (delivered + dead == 2).then_some(())
    })
    .await;
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a redirect took a callback to a host off the allow-list"
    );
    let mut posts = seen.lock().expect("lock").clone();
    posts.sort();
    assert_eq!(posts, ["/302", "/307"], "one POST each: not retried");
    for line in [
        "openhqm_callbacks_deliveries_total{outcome=\"delivered\"} 0",
        "openhqm_callbacks_deliveries_total{outcome=\"retried\"} 0",
        "openhqm_queue_dlq_total{queue=\"openhqm-callbacks\",status=\"FAILED\"} 2",
    ] {
        assert!(metric(&http, &p, line).await, "{line}");
    }
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("log");
    for status in [302, 307] {
        assert!(
            log.contains(&format!("callback answered {status}")),
            "the dead letter says why: {log}"
        );
    }
}

/// On Redis: the callback is delivered and the reply lands on the
/// `openhqm-responses` stream, with its correlation id, for queue-side consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_result_reaches_the_callback_and_the_reply_stream() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (port, seen) = receiver(Some(0)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = start(
        dir.path(),
        &[
            "queue.type=redis".into(),
            "cache.type=redis".into(),
            format!("queue.redis_url={url}"),
            format!("cache.redis_url={url}"),
            "queue.reply_enabled=true".into(),
            format!("callbacks.allowed_hosts=127.0.0.1:{port}"),
        ],
    );
    let http = http_client();
    ready(&http, &p).await;
    let id = accepted_id(
        &http,
        &p,
        &json!({"payload": {"operation": "reverse", "data": "abc"}, "metadata": {"callback_url": format!("http://127.0.0.1:{port}/hook")}}),
    )
    .await;
    let stored = response_of(&http, &p, &id).await;
    assert_eq!(stored["status"], "COMPLETED");
    let hooks = delivered(&seen, 1).await;
    check_hook(&hooks[0], &id, &stored);

    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let entries: Vec<(String, std::collections::HashMap<String, String>)> =
        until("the reply entry", async || {
            let e: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg("openhqm-responses")
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .ok()?;
            (!e.is_empty()).then_some(e)
        })
        .await;
    let (_, fields) = &entries[0];
    assert_eq!(fields.get("attr:correlation_id"), Some(&id));
    assert_eq!(
        fields.get("attr:status").map(String::as_str),
        Some("COMPLETED")
    );
    let reply: Value = serde_json::from_str(&fields["payload"]).expect("json");
    assert_eq!(reply, stored);
    assert_eq!(reply["result"]["output"], "cba");
}
