//! The API router served on 127.0.0.1 over the real embedded queue and store,
//! driven by a real HTTP client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openhqm_core::envelope::MAX_PAYLOAD_DEPTH;
use openhqm_core::{CorrelationId, Envelope, RequestRecord, RequestStatus, ResultData};
use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_ingress::{Admission, ApiConfig, ApiState, IdempotencyConfig, SidecarConfig, router};
use openhqm_metrics::Metrics;
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_queue::{Durability, OutgoingMessage, QueueBackend, QueueError};
use openhqm_store::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use openhqm_store::{Claim, KeyClaim, ResultStore, StoreError, Transition, Update};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A plain-HTTP client. The workspace builds reqwest with rustls but no
/// default crypto provider (the forwarder picks `ring`), so one is installed
/// before the first client is built.
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

const MAX_BODY: usize = 64 * 1024;

struct Api {
    _dir: tempfile::TempDir,
    db: EmbeddedDb,
    queue_db: EmbeddedDb,
    /// The embedded queue, behind a [`Recorder`].
    queue: Arc<dyn QueueBackend>,
    /// What the API asked of the queue.
    queue_calls: Arc<Mutex<Vec<&'static str>>>,
    /// The embedded store, behind an [`Outage`].
    store: Arc<dyn ResultStore>,
    /// Takes the store down: every call fails from then on.
    store_down: Arc<AtomicBool>,
    base: String,
    http: reqwest::Client,
}

async fn serve() -> Api {
    serve_with(None, 0).await
}

async fn serve_with(
    known_endpoints: Option<std::collections::HashSet<String>>,
    max_pending: u64,
) -> Api {
    serve_full(known_endpoints, max_pending, MAX_BODY * 2, false).await
}

/// `own_queue_db`: the queue gets a database of its own (`Api::queue_db`),
/// so it can fail while the store works.
async fn serve_full(
    known_endpoints: Option<std::collections::HashSet<String>>,
    max_pending: u64,
    max_payload: usize,
    own_queue_db: bool,
) -> Api {
    serve_setup(
        known_endpoints,
        max_pending,
        max_payload,
        own_queue_db,
        None,
    )
    .await
}

/// [`serve_full`], with the passthrough ingress mounted as `sidecar` says.
async fn serve_setup(
    known_endpoints: Option<std::collections::HashSet<String>>,
    max_pending: u64,
    max_payload: usize,
    own_queue_db: bool,
    sidecar: Option<SidecarConfig>,
) -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, queue_db) = if own_queue_db {
        let open =
            |name: &str| EmbeddedDb::open(&dir.path().join(name), &Options::default()).expect("db");
        (open("store"), open("queue"))
    } else {
        let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
        (db.clone(), db)
    };
    let qc = EmbeddedQueueConfig {
        name: "requests".into(),
        dead_letter_name: "requests-dlq".into(),
        lease: Duration::from_secs(30),
        max_payload,
    };
    let queue_calls = Arc::default();
    let queue: Arc<dyn QueueBackend> = Arc::new(Recorder {
        inner: Arc::new(EmbeddedQueue::open(queue_db.clone(), qc).expect("queue")),
        calls: Arc::clone(&queue_calls),
    });
    let sc = EmbeddedStoreConfig {
        ttl: Duration::from_secs(60),
        sweep_interval: Duration::from_secs(60),
    };
    let store_down = Arc::new(AtomicBool::new(false));
    let store: Arc<dyn ResultStore> = Arc::new(Outage {
        inner: Arc::new(EmbeddedStore::open(db.clone(), &sc).expect("store")),
        down: Arc::clone(&store_down),
    });
    let metrics = Metrics::new();
    let state = Arc::new(ApiState {
        queue: Arc::clone(&queue),
        store: Arc::clone(&store),
        queue_metrics: metrics.queue("requests"),
        metrics,
        config: ApiConfig {
            max_body_size: MAX_BODY,
            read_timeout: Duration::from_secs(30),
            retry_after_secs: 2,
            probe_timeout: Duration::from_secs(2),
            metrics_enabled: true,
            known_endpoints,
            max_wait: Duration::from_secs(5),
            idempotency: IdempotencyConfig {
                ttl: Duration::from_secs(60),
                identity_header: axum::http::header::AUTHORIZATION,
            },
            sidecar,
            callbacks: openhqm_core::CallbackPolicy::new(&["hooks.example.com"]).expect("policy"),
            decoder: openhqm_core::Decoder::default(),
        },
        admission: Arc::new(Admission::new(max_pending)),
        waiting: tokio::sync::Semaphore::new(100),
        stopping: tokio::sync::watch::channel(false).1,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    Api {
        _dir: dir,
        db,
        queue_db,
        queue,
        queue_calls,
        store,
        store_down,
        base: format!("http://{addr}"),
        http: http_client(),
    }
}

/// The queue under test, telling what was asked of it: publishes by their
/// durability, and syncs.
struct Recorder {
    inner: Arc<dyn QueueBackend>,
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl Recorder {
    fn note(&self, call: &'static str) {
        self.calls.lock().expect("lock").push(call);
    }
}

#[async_trait::async_trait]
impl QueueBackend for Recorder {
    fn capabilities(&self) -> openhqm_queue::Capabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, message: OutgoingMessage) -> Result<(), QueueError> {
        self.note(match message.durability {
            Durability::Full => "publish",
            Durability::Deferred => "publish deferred",
        });
        self.inner.publish(message).await
    }
    async fn sync(&self) -> Result<(), QueueError> {
        self.note("sync");
        self.inner.sync().await
    }
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<openhqm_queue::Delivery>, QueueError> {
        self.inner.receive(max, wait).await
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        self.inner.depth().await
    }
    async fn dead_letter_depth(&self) -> Result<u64, QueueError> {
        self.inner.dead_letter_depth().await
    }
    async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<openhqm_queue::DeadLetter>, QueueError> {
        self.inner.dead_letters(limit).await
    }
    async fn redrive(&self, limit: usize) -> Result<u64, QueueError> {
        self.inner.redrive(limit).await
    }
    async fn trim_dead_letters(&self, before_ms: u64) -> Result<u64, QueueError> {
        self.inner.trim_dead_letters(before_ms).await
    }
    async fn health(&self) -> Result<(), QueueError> {
        self.inner.health().await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

/// The result store under test, which a test can take down: then every
/// call fails as it does when the store cannot be reached. (The embedded
/// store still reads after its database is closed.)
struct Outage {
    inner: Arc<dyn ResultStore>,
    down: Arc<AtomicBool>,
}

impl Outage {
    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("taken down by the test".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ResultStore for Outage {
    async fn create(&self, record: RequestRecord) -> Result<(), StoreError> {
        self.up()?;
        self.inner.create(record).await
    }
    async fn create_deferred(&self, record: RequestRecord) -> Result<(), StoreError> {
        self.up()?;
        self.inner.create_deferred(record).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.up()?;
        self.inner.sync().await
    }
    async fn get(&self, id: CorrelationId) -> Result<Option<RequestRecord>, StoreError> {
        self.up()?;
        self.inner.get(id).await
    }
    async fn transition(
        &self,
        id: CorrelationId,
        update: Update,
    ) -> Result<Transition, StoreError> {
        self.up()?;
        self.inner.transition(id, update).await
    }
    async fn withdraw(&self, pending: &RequestRecord) -> Result<(), StoreError> {
        self.up()?;
        self.inner.withdraw(pending).await
    }
    async fn wait_terminal(
        &self,
        id: CorrelationId,
        timeout: Duration,
    ) -> Result<Option<RequestRecord>, StoreError> {
        self.up()?;
        self.inner.wait_terminal(id, timeout).await
    }
    async fn claim_key(
        &self,
        key: &str,
        claim: KeyClaim,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        self.up()?;
        self.inner.claim_key(key, claim, ttl).await
    }
    async fn release_key(&self, key: &str, id: CorrelationId) -> Result<(), StoreError> {
        self.up()?;
        self.inner.release_key(key, id).await
    }
    async fn health(&self) -> Result<(), StoreError> {
        self.up()?;
        self.inner.health().await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

impl Api {
    /// Finishes `id` as a worker would: PROCESSING, then COMPLETED with `outcome`.
    async fn complete(&self, id: CorrelationId, outcome: ResultData) {
        self.store
            .transition(id, Update::to(RequestStatus::Processing))
            .await
            .expect("processing");
        let done = Update {
            to: RequestStatus::Completed,
            attempts: Some(1),
            outcome: Some(Box::new(outcome)),
            redrive: None,
            hold: None,
        };
        self.store.transition(id, done).await.expect("completed");
    }

    /// What was asked of the queue since the last look.
    fn queue_calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.queue_calls.lock().expect("lock"))
    }

    /// The one message the queue holds now; fails naming `what` otherwise.
    async fn take_one(&self, what: &str) -> openhqm_queue::Delivery {
        self.queue
            .receive(1, Duration::from_secs(1))
            .await
            .expect("receive")
            .pop()
            .unwrap_or_else(|| panic!("no delivery: {what}"))
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("send")
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("json body")
}

async fn expect_problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let ct = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body = json_of(response).await;
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].as_str().is_some_and(|t| t.ends_with(code)));
    body
}

#[tokio::test]
async fn submit_accepts_any_json_payload_and_stores_it_verbatim() {
    let api = serve().await;
    let deepest = format!(
        "{}{}",
        "[".repeat(MAX_PAYLOAD_DEPTH),
        "]".repeat(MAX_PAYLOAD_DEPTH)
    );
    for payload in [
        r#"{"a": [1, 2]}"#,
        "[1,2,3]",
        "\"text\"",
        "42",
        "null",
        deepest.as_str(),
    ] {
        let body = format!(
            r#"{{"payload": {payload}, "metadata": {{"priority": 2, "type": "order", "session_id": "s-1"}}}}"#
        );
        let response = api.post_raw("/api/v1/submit", body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{payload}");
        let accepted = json_of(response).await;
        assert_eq!(accepted["status"], "PENDING");
        let id: CorrelationId = accepted["correlation_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        assert!(
            accepted["submitted_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );

        let status = json_of(api.get(&format!("/api/v1/status/{id}")).await).await;
        assert_eq!(status["status"], "PENDING");
        assert_eq!(status["submitted_at"], accepted["submitted_at"]);

        let delivery = api.take_one("queued").await;
        let envelope = Envelope::from_json(&delivery.message().body).expect("envelope");
        assert_eq!(envelope.correlation_id, id);
        assert_eq!(envelope.payload.get(), payload);
        assert_eq!(envelope.metadata.priority, 2);
        assert_eq!(envelope.metadata.extra.get("type"), Some(&json!("order")));
        assert_eq!(
            envelope.metadata.extra.get("session_id"),
            Some(&json!("s-1"))
        );
        delivery.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn the_callers_traceparent_header_travels_with_the_message() {
    let api = serve().await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let submit = |body: &'static str| {
        api.http
            .post(format!("{}/api/v1/submit", api.base))
            .header("content-type", "application/json")
            .header("traceparent", parent)
            .header("tracestate", "vendor=abc")
            .body(body)
            .send()
    };
    let r = submit(r#"{"payload": 1, "headers": {"x-a": "1"}}"#)
        .await
        .expect("submit");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let delivery = api.take_one("with the header").await;
    let envelope = Envelope::from_json(&delivery.message().body).expect("envelope");
    let carried = envelope.headers.clone().unwrap_or_default();
    assert_eq!(carried.get("traceparent").map(String::as_str), Some(parent));
    assert_eq!(
        carried.get("tracestate").map(String::as_str),
        Some("vendor=abc")
    );
    assert_eq!(carried.get("x-a").map(String::as_str), Some("1"));
    delivery.ack().await.expect("ack");

    // One named in the body wins.
    let own = r#"{"payload": 1, "headers": {"TraceParent": "00-11111111111111111111111111111111-2222222222222222-01"}}"#;
    submit(own).await.expect("submit");
    let delivery = api.take_one("with its own").await;
    let envelope = Envelope::from_json(&delivery.message().body).expect("envelope");
    let carried = envelope.headers.clone().unwrap_or_default();
    assert_eq!(carried.len(), 1, "{carried:?}");
    assert!(carried["TraceParent"].starts_with("00-1111"));
    delivery.ack().await.expect("ack");
}

#[tokio::test]
async fn malformed_json_is_a_400_problem_and_stores_nothing() {
    let api = serve().await;
    // Not an object, and not JSON either: malformed first.
    for body in ["[1,2] x", "42 x", r#""a" "b""#] {
        expect_problem(
            api.post_raw("/api/v1/submit", body).await,
            StatusCode::BAD_REQUEST,
            "malformed-json",
        )
        .await;
    }
    // JSON is text: a body that is not UTF-8 is not JSON.
    expect_problem(
        api.post_raw("/api/v1/submit", b"{\"payload\": \"\xff\"}".as_slice())
            .await,
        StatusCode::BAD_REQUEST,
        "malformed-json",
    )
    .await;
    let body = expect_problem(
        api.post_raw("/api/v1/submit", "{\"payload\": [1,").await,
        StatusCode::BAD_REQUEST,
        "malformed-json",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("line 1")),
        "{body}"
    );
    assert_eq!(api.queue.depth().await.expect("depth"), 0);
}

#[tokio::test]
async fn invalid_requests_are_422_problems_naming_the_field() {
    let api = serve().await;
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let too_deep = format!(r#"{{"payload": {}}}"#, nested(MAX_PAYLOAD_DEPTH + 1));
    let deep_metadata = format!(
        r#"{{"payload": 1, "metadata": {{"x": {}}}}}"#,
        nested(MAX_PAYLOAD_DEPTH)
    );
    for (body, needle) in [
        // Valid JSON that no processor could read: refused, not failed later.
        (
            too_deep.as_str(),
            "payload: nests arrays and objects 128 levels deep",
        ),
        (deep_metadata.as_str(), "deeper than 127 levels"),
        (
            r#"{"payload": {"n": 1e999}}"#,
            "payload: number out of range",
        ),
        (
            r#"{"payload": ["\ud800"]}"#,
            "payload: unexpected end of hex escape",
        ),
        (
            r#"{"payload": 1, "metadata": {"priority": -1e999}}"#,
            "metadata.priority: number out of range",
        ),
        // A tunnel, or a URL part that is not text: no resource to forward to.
        (
            r#"{"payload": 1, "metadata": {"method": "connect"}}"#,
            "`connect` is not an HTTP method a request can be forwarded with",
        ),
        (
            r#"{"payload": 1, "metadata": {"path": 5}}"#,
            "metadata.path must be a string",
        ),
        (
            r#"{"payload": 1, "metadata": {"query": {"a": "1"}}}"#,
            "metadata.query must be a string",
        ),
        (r#"{"metadata": {}}"#, "missing field `payload`"),
        (
            r#"{"payload": 1, "metadata": {"priority": 12}}"#,
            "metadata.priority",
        ),
        (
            r#"{"payload": 1, "metadata": {"timeout": 0}}"#,
            "metadata.timeout",
        ),
        (
            r#"{"payload": 1, "headers": {"x": 1}}"#,
            "headers.x: invalid type",
        ),
        (
            r#"{"payload": 1, "metadata": {"timeout": 0.5}}"#,
            "metadata.timeout: invalid type: floating point `0.5`",
        ),
        (
            r#"{"payload": 1, "metadata": {"priority": "5"}}"#,
            "metadata.priority: invalid type: string",
        ),
        (
            r#"{"payload": 1, "headers": {"Bad Name": "v"}}"#,
            "`Bad Name` is not a valid HTTP header name",
        ),
        (
            r#"{"payload": 1, "headers": {"X-Ok": "a\r\nInjected: 1"}}"#,
            "`X-Ok` is not a valid HTTP header name, or its value",
        ),
        // serde would read a struct from an array by position.
        (r#"[{"operation": "echo"}]"#, "must be a JSON object"),
        (r#"[1, 2]"#, "must be a JSON object"),
        (r#"  "text""#, "must be a JSON object"),
    ] {
        let problem = expect_problem(
            api.post_raw("/api/v1/submit", body.to_owned()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
        )
        .await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(needle)),
            "{body}: {problem}"
        );
    }
    assert_eq!(api.queue.depth().await.expect("depth"), 0);
}

#[tokio::test]
async fn oversized_bodies_are_413_with_or_without_content_length() {
    let api = serve().await;
    let big = format!(r#"{{"payload": "{}"}}"#, "x".repeat(MAX_BODY));
    expect_problem(
        api.post_raw("/api/v1/submit", big.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
    )
    .await;
    // Chunked: no Content-Length, so the limit is enforced while reading.
    let head = chunked_post(&api.base, "/api/v1/submit", big.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert_eq!(api.queue.depth().await.expect("depth"), 0);
}

#[tokio::test]
async fn a_content_coded_submit_body_is_415_and_identity_is_read() {
    let api = serve().await;
    let submit = |coding: &'static str| {
        api.http
            .post(format!("{}/api/v1/submit", api.base))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(r#"{"payload": {"a": 1}}"#)
            .send()
    };
    let refused = submit("gzip").await.expect("send");
    assert_eq!(
        refused
            .headers()
            .get("accept-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"identity"[..])
    );
    let refused = expect_problem(
        refused,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-encoding",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("gzip")),
        "{refused}"
    );
    assert_eq!(api.queue.depth().await.expect("depth"), 0, "nothing stored");
    let taken = submit("identity").await.expect("send");
    assert_eq!(taken.status(), StatusCode::ACCEPTED);
}

/// Sends a chunked POST over a plain socket and returns the response text.
async fn chunked_post(base: &str, path: &str, body: &[u8]) -> String {
    let addr = base.trim_start_matches("http://");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut framed = Vec::new();
    for chunk in body.chunks(4096) {
        framed.extend([format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat());
    }
    framed.extend(b"0\r\n\r\n");
    raw_exchange(base, head.as_bytes(), &framed).await
}

/// Sends `head` then `body` as they are over a plain socket (the server may
/// answer and close before the whole body is sent) and returns the response text.
async fn raw_exchange(base: &str, head: &[u8], body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head).await.expect("head");
    for piece in body.chunks(4096) {
        if stream.write_all(piece).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn framing_hyper_lets_through_is_refused_and_nothing_is_stored() {
    let sidecar = SidecarConfig {
        endpoint: None,
        wait: Duration::from_secs(1),
        path_prefix: Some("/app".into()),
        forward_headers: None,
        preserve_host: true,
    };
    let api = serve_setup(None, 0, MAX_BODY * 2, false, Some(sidecar)).await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    let post = |path: &str, extra: &str| {
        format!(
            "POST {path} HTTP/1.1\r\n{extra}Content-Type: application/json\r\nConnection: close\r\n"
        )
    };
    let gzip_chunked = format!("Host: {addr}\r\nTransfer-Encoding: gzip, chunked\r\n");
    // A body gzipped (bytes that are not JSON) and chunked on top.
    let gzipped = b"a\r\n\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\r\n0\r\n\r\n";
    let cases: [(String, &[u8], &str, &str); 5] = [
        (
            post("/api/v1/submit", &gzip_chunked),
            gzipped,
            "501",
            "unsupported-transfer-coding",
        ),
        (
            post("/app/orders", &gzip_chunked),
            gzipped,
            "501",
            "unsupported-transfer-coding",
        ),
        (
            post(
                "/app/orders",
                &format!("Host: {addr}\r\nTransfer-Encoding: chunked\r\n"),
            ),
            b"ZZ\r\nabc\r\n0\r\n\r\n",
            "400",
            "unreadable-body",
        ),
        (
            post("/app/orders", "Content-Length: 2\r\n"),
            b"{}",
            "400",
            "invalid-host",
        ),
        (
            post("/app/orders", "Host: a b/c@d\r\nContent-Length: 2\r\n"),
            b"{}",
            "400",
            "invalid-host",
        ),
    ];
    for (head, body, status, code) in cases {
        let answer = raw_exchange(&api.base, format!("{head}\r\n").as_bytes(), body).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{head:?}: {answer}"
        );
        assert!(
            answer.contains(&format!("\"code\":\"{code}\"")),
            "{head:?}: {answer}"
        );
    }
    // Two Host headers: the API's own routes refuse them too.
    let head = b"GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(&api.base, head, b"").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(api.queue.depth().await.expect("depth"), 0, "nothing queued");
    assert!(api.queue_calls().is_empty(), "{:?}", api.queue_calls());
}

#[tokio::test]
async fn unknown_endpoints_and_methods_are_problems() {
    let api = serve().await;
    expect_problem(
        api.get("/api/v2/nothing").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    expect_problem(
        api.get("/api/v1/submit").await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn unknown_ids_are_404_on_status_and_response() {
    let api = serve().await;
    let id = CorrelationId::new();
    for path in [
        format!("/api/v1/status/{id}"),
        format!("/api/v1/response/{id}"),
        "/api/v1/status/not-a-uuid".into(),
        // Not UTF-8 once decoded: no request either, and still a problem.
        "/api/v1/status/%ff".into(),
        "/api/v1/response/%C3%28".into(),
    ] {
        expect_problem(
            api.get(&path).await,
            StatusCode::NOT_FOUND,
            "request-not-found",
        )
        .await;
    }
}

#[tokio::test]
async fn response_is_202_until_finished_then_200_with_every_field() {
    let api = serve().await;
    let accepted = json_of(api.post_raw("/api/v1/submit", r#"{"payload": [1]}"#).await).await;
    let id: CorrelationId = accepted["correlation_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let pending = api.get(&format!("/api/v1/response/{id}")).await;
    assert_eq!(pending.status(), StatusCode::ACCEPTED);
    assert!(pending.headers().contains_key("retry-after"));
    assert_eq!(json_of(pending).await["status"], "PENDING");

    let outcome = ResultData {
        result: Some(json!([3, 2, 1])),
        processing_time_ms: Some(5),
        completed_at_ms: Some(1_770_000_000_000),
        ..ResultData::default()
    };
    api.complete(id, outcome).await;
    let finished = api.get(&format!("/api/v1/response/{id}")).await;
    assert_eq!(finished.status(), StatusCode::OK);
    let body = json_of(finished).await;
    for field in [
        "correlation_id",
        "status",
        "result",
        "headers",
        "status_code",
        "error",
        "processing_time_ms",
        "completed_at",
    ] {
        assert!(body.get(field).is_some(), "{field} missing: {body}");
    }
    assert_eq!(body["status"], "COMPLETED");
    assert_eq!(body["result"], json!([3, 2, 1]));
    assert_eq!(body["headers"], Value::Null);
    assert_eq!(body["completed_at"], "2026-02-02T02:40:00.000Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_the_moment_the_result_is_stored() {
    let api = serve().await;
    let accepted = json_of(api.post_raw("/api/v1/submit", r#"{"payload": 1}"#).await).await;
    let id: CorrelationId = accepted["correlation_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let url = format!("{}/api/v1/response/{id}", api.base);
    let (http, poll_url) = (api.http.clone(), url.clone());
    let started = std::time::Instant::now();
    let poll = tokio::spawn(async move {
        let r = http
            .get(poll_url)
            .header("prefer", "wait=30")
            .send()
            .await
            .expect("poll");
        let applied = r.headers().get("preference-applied").cloned();
        (
            r.status(),
            started.elapsed(),
            applied,
            r.json::<Value>().await.expect("json"),
        )
    });
    // The poll is parked on the store, not answered yet...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "a pending request was answered early");
    let finished_at = started.elapsed();
    let outcome = ResultData {
        result: Some(json!("done")),
        ..ResultData::default()
    };
    api.complete(id, outcome).await;
    // ...and answered as soon as the result is written, far inside its 30 s.
    let (status, elapsed, applied, body) = poll.await.expect("join");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        applied.as_ref().and_then(|v| v.to_str().ok()),
        Some("wait=5"),
        "wait=30 as capped by max_wait"
    );
    assert_eq!(body["result"], "done");
    assert!(elapsed >= finished_at, "{elapsed:?}");
    assert!(
        elapsed < finished_at + Duration::from_secs(2),
        "{elapsed:?}"
    );

    // A wait that runs out answers 202 with the status; `?wait=` works too.
    let other = json_of(api.post_raw("/api/v1/submit", r#"{"payload": 2}"#).await).await;
    let other_id = other["correlation_id"].as_str().expect("id");
    let started = std::time::Instant::now();
    let r = api
        .get(&format!("/api/v1/response/{other_id}?wait=1"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let location = r.headers().get("location").and_then(|v| v.to_str().ok());
    assert_eq!(
        location,
        Some(format!("/api/v1/status/{other_id}").as_str())
    );
    assert_eq!(
        r.headers()
            .get("preference-applied")
            .and_then(|v| v.to_str().ok()),
        Some("wait=1")
    );
    assert_eq!(json_of(r).await["status"], "PENDING");
    // No wait asked, none applied.
    let r = api.get(&format!("/api/v1/response/{other_id}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(r.headers().get("preference-applied").is_none());
    // A wait of 0 is honoured by answering at once, and a finished request
    // is answered within any wait: both say so.
    let applied = |r: &reqwest::Response| {
        r.headers()
            .get("preference-applied")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let r = api
        .get(&format!("/api/v1/response/{other_id}?wait=0"))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(applied(&r).as_deref(), Some("wait=0"));
    let r = api.get(&format!("/api/v1/response/{id}?wait=3")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(applied(&r).as_deref(), Some("wait=3"));
    // A `wait` the client cannot have meant is refused, not read as no wait.
    let r = api
        .get(&format!("/api/v1/response/{other_id}?wait=5s"))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let problem = json_of(r).await;
    assert_eq!(problem["code"], "invalid-parameter");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("`wait`")),
        "{problem}"
    );
}

#[tokio::test]
async fn storage_down_means_503_with_retry_after_never_202() {
    let api = serve().await;
    let healthy = api.get("/health").await;
    assert_eq!(healthy.status(), StatusCode::OK);
    let body = json_of(healthy).await;
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["components"]["queue"]["status"], "healthy");
    assert!(body["version"].is_string() && body["timestamp"].is_string());

    api.db.close().await; // the storage engine stops taking writes

    let refused = api.post_raw("/api/v1/submit", r#"{"payload": 1}"#).await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    expect_problem(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
    )
    .await;

    let health = api.get("/health").await;
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json_of(health).await;
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["components"]["queue"]["status"], "unhealthy");
    assert_eq!(
        api.get("/health/ready").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(api.get("/health/live").await.status(), StatusCode::OK);
}

/// A status or response lookup the store cannot answer is a 503 with
/// `Retry-After`, never a 404 saying a request that exists does not.
#[tokio::test]
async fn lookups_the_store_cannot_answer_are_503_with_retry_after_not_404() {
    let api = serve().await;
    let accepted = json_of(api.post_raw("/api/v1/submit", r#"{"payload": 1}"#).await).await;
    let id = accepted["correlation_id"].as_str().expect("id").to_owned();
    let paths = [
        format!("/api/v1/status/{id}"),
        format!("/api/v1/response/{id}"),
        format!("/api/v1/response/{id}?wait=1"),
    ];
    for path in &paths {
        let known = api.get(path).await.status();
        assert!(known.is_success(), "{path}: {known} while the store is up");
    }

    api.store_down.store(true, Ordering::SeqCst);

    for path in &paths {
        let refused = api.get(path).await;
        assert_eq!(
            refused
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("2"),
            "{path}"
        );
        expect_problem(
            refused,
            StatusCode::SERVICE_UNAVAILABLE,
            "service-unavailable",
        )
        .await;
    }
}

#[tokio::test]
async fn a_request_the_queue_refuses_leaves_no_pending_record() {
    // The queue takes less than the API does, so the publish fails after
    // the status record was written beside it.
    let api = serve_full(None, 0, 1024, false).await;
    let big = format!(r#"{{"payload": "{}"}}"#, "x".repeat(4096));
    let refused = api.post_raw("/api/v1/submit", big).await;
    expect_problem(refused, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    let results = api.db.keyspace("results").expect("keyspace");
    let statuses: Vec<Value> = results
        .iter()
        .map(|item| {
            let value = item.value().expect("value");
            let record: Value = serde_json::from_slice(&value[8..]).expect("record");
            record["status"].clone()
        })
        .collect();
    // Withdrawn, so it expires with the TTL instead of reading PENDING for days.
    assert_eq!(statuses, [json!("CANCELLED")]);
}

#[tokio::test]
async fn an_unconfirmed_publish_withdraws_the_record_and_keeps_the_key() {
    let api = serve_full(None, 0, MAX_BODY * 2, true).await;
    api.queue_db.close().await; // the queue stops taking writes; the store works
    let refused = api.post_raw("/api/v1/submit", r#"{"payload": 1}"#).await;
    let problem = expect_problem(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
    )
    .await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("did not confirm") && detail.contains("Idempotency-Key"),
        "{detail}"
    );
    let results = api.db.keyspace("results").expect("keyspace");
    let statuses: Vec<Value> = results
        .iter()
        .map(|item| {
            let value = item.value().expect("value");
            serde_json::from_slice::<Value>(&value[8..]).expect("record")["status"].clone()
        })
        .collect();
    assert_eq!(statuses, [json!("CANCELLED")], "a worker would drop it");

    // With a key, a retry must not start a second request while the first
    // may yet be stored: the key still stands for it.
    let keyed = |body: &'static str| {
        api.http
            .post(format!("{}/api/v1/submit", api.base))
            .header("content-type", "application/json")
            .header("idempotency-key", "k-unconfirmed")
            .header("authorization", "Bearer caller")
            .body(body)
            .send()
    };
    let first = keyed(r#"{"payload": 2}"#).await.expect("submit");
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry = keyed(r#"{"payload": 2}"#).await.expect("retry");
    expect_problem(retry, StatusCode::CONFLICT, "idempotency-key-in-use").await;
    // Another body under the same key is another request, mid-way or not.
    let other = keyed(r#"{"payload": 3}"#).await.expect("other body");
    expect_problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
    )
    .await;
}

#[tokio::test]
async fn metrics_use_route_templates_not_raw_paths() {
    let api = serve().await;
    let id = CorrelationId::new();
    api.get(&format!("/api/v1/status/{id}")).await;
    api.get("/no/such/path").await;
    let text = api.get("/metrics").await.text().await.expect("text");
    assert!(text.contains(r#"openhqm_api_requests_total{method="GET",route="/api/v1/status/{correlation_id}",status="404"} 1"#), "{text}");
    assert!(text.contains(r#"route="unmatched""#));
    assert!(
        !text.contains(&id.to_string()),
        "raw path leaked into labels"
    );
}

#[tokio::test]
async fn api_description_and_docs_are_served() {
    let api = serve().await;
    let spec = json_of(api.get("/openapi.json").await).await;
    assert_eq!(spec["openapi"], "3.1.0");
    let docs = api.get("/docs").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.expect("html").contains("/openapi.json"));
}

#[tokio::test]
async fn unknown_endpoint_names_are_refused_at_submit() {
    let api = serve_with(Some(["orders".to_owned()].into_iter().collect()), 0).await;
    let ok = api
        .post_raw(
            "/api/v1/submit",
            r#"{"payload": 1, "metadata": {"endpoint": "orders", "method": "PUT"}}"#,
        )
        .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    let problem = expect_problem(
        api.post_raw(
            "/api/v1/submit",
            r#"{"payload": 1, "metadata": {"endpoint": "ordres"}}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unknown-endpoint",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ordres"))
    );
    expect_problem(
        api.post_raw(
            "/api/v1/submit",
            r#"{"payload": 1, "metadata": {"method": "GE T"}}"#,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-request",
    )
    .await;
    // In proxy mode the payload is forwarded as sent, to backends that may
    // read what serde_json does not: only the demo or a custom processor
    // needs it readable.
    let forwarded = api
        .post_raw(
            "/api/v1/submit",
            r#"{"payload": {"n": 1e999, "s": "\ud83d"}}"#,
        )
        .await;
    assert_eq!(forwarded.status(), StatusCode::ACCEPTED);
    assert_eq!(
        api.queue.depth().await.expect("depth"),
        2,
        "only the valid submits were stored"
    );
}

#[tokio::test]
async fn past_max_pending_submits_are_429_with_retry_after_and_counted() {
    // No workers run here, so nothing leaves the queue.
    let api = serve_with(None, 3).await;
    for _ in 0..3 {
        let r = api.post_raw("/api/v1/submit", r#"{"payload": 1}"#).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let refused = api.post_raw("/api/v1/submit", r#"{"payload": 1}"#).await;
    assert_eq!(refused.headers()["retry-after"], "2");
    let problem = expect_problem(refused, StatusCode::TOO_MANY_REQUESTS, "overloaded").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("server.max_pending"),
        "{problem}"
    );
    assert_eq!(api.queue.depth().await.expect("depth"), 3, "nothing stored");
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("openhqm_api_admission_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn cancel_moves_a_pending_request_to_cancelled_once() {
    let api = serve().await;
    let accepted = json_of(api.post_raw("/api/v1/submit", r#"{"payload": 1}"#).await).await;
    let id = accepted["correlation_id"].as_str().expect("id");
    let url = format!("{}/api/v1/status/{id}", api.base);
    let cancelled = api.http.delete(&url).send().await.expect("delete");
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(json_of(cancelled).await["status"], "CANCELLED");
    let again = api.http.delete(&url).send().await.expect("delete");
    expect_problem(again, StatusCode::CONFLICT, "not-cancellable").await;
    let unknown = api
        .http
        .delete(format!("{}/api/v1/status/{}", api.base, uuid_like()))
        .send()
        .await
        .expect("delete");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

fn uuid_like() -> String {
    "0190b5e4-0000-7000-8000-000000000000".to_owned()
}

#[tokio::test]
async fn an_idempotency_key_left_by_a_crash_before_publish_is_taken_over() {
    let api = serve().await;
    // A claim whose request was never stored, made a minute ago.
    let mut bytes = *openhqm_core::CorrelationId::new().as_bytes();
    let minute_ago = openhqm_core::time::now_ms() - 60_000;
    bytes[..6].copy_from_slice(&minute_ago.to_be_bytes()[2..]);
    let orphan = openhqm_core::CorrelationId::from_bytes(bytes);
    let digest = openhqm_ingress::idempotency::scoped_key(b"Bearer dave", "k-1");
    let claim = openhqm_store::KeyClaim {
        correlation_id: orphan,
        fingerprint: "whatever".into(),
    };
    api.store
        .claim_key(&digest, claim, Duration::from_secs(60))
        .await
        .expect("claim");
    let r = api
        .http
        .post(format!("{}/api/v1/submit", api.base))
        .header("idempotency-key", "k-1")
        .header("authorization", "Bearer dave")
        .body(r#"{"payload": 1}"#)
        .send()
        .await
        .expect("submit");
    // Before the takeover this was a 409 (or a 422 for the other fingerprint).
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body = json_of(r).await;
    assert_ne!(body["correlation_id"], orphan.to_string());
}

#[tokio::test]
async fn callback_urls_off_the_allow_list_are_refused_at_submit() {
    let api = serve().await;
    let ok = api
        .post_raw(
            "/api/v1/submit",
            r#"{"payload": 1, "metadata": {"callback_url": "https://hooks.example.com/done?t=1"}}"#,
        )
        .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    for (url, code) in [
        ("https://evil.example.com/x", "callback-not-allowed"),
        ("http://hooks.example.com:8080/", "callback-not-allowed"),
        (
            "http://169.254.169.254/latest/meta-data",
            "callback-not-allowed",
        ),
        ("ftp://hooks.example.com/", "invalid-callback-url"),
        ("not a url", "invalid-callback-url"),
        ("https://me:pw@hooks.example.com/", "invalid-callback-url"),
    ] {
        let body = json!({"payload": 1, "metadata": {"callback_url": url}}).to_string();
        let problem = expect_problem(
            api.post_raw("/api/v1/submit", body).await,
            StatusCode::BAD_REQUEST,
            code,
        )
        .await;
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{url}"
        );
    }
    // A refused submit stores nothing: only the accepted one is queued.
    assert_eq!(api.queue.depth().await.expect("depth"), 1);
}

#[tokio::test]
async fn dead_letters_are_listed_with_their_reason_and_redriven() {
    let api = serve().await;
    let accepted = api
        .http
        .post(format!("{}/api/v1/submit", api.base))
        .json(&json!({"payload": {"order": 7}}))
        .send()
        .await
        .expect("submit");
    let id = json_of(accepted).await["correlation_id"]
        .as_str()
        .expect("id")
        .to_owned();
    // A worker gave up on it.
    let delivery = api.take_one("a delivery").await;
    delivery
        .nack(openhqm_queue::Nack::DeadLetter {
            reason: "backend said 400".into(),
        })
        .await
        .expect("dead-letter");

    let listed = api
        .http
        .get(format!("{}/api/v1/dead-letters?limit=10", api.base))
        .send()
        .await
        .expect("list");
    assert_eq!(listed.status(), StatusCode::OK);
    let listed = json_of(listed).await;
    assert_eq!(listed["depth"], 1);
    let dead = &listed["dead_letters"][0];
    assert_eq!(dead["correlation_id"], id.as_str());
    assert_eq!(dead["reason"], "backend said 400");
    assert_eq!(dead["attempt"], 1);
    assert!(
        dead["dead_lettered_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let bad = api
        .http
        .post(format!("{}/api/v1/dead-letters/redrive?limit=0", api.base))
        .send()
        .await
        .expect("redrive");
    expect_problem(bad, StatusCode::BAD_REQUEST, "invalid-parameter").await;
    assert_eq!(api.queue.dead_letter_depth().await.expect("dlq"), 1);

    let redriven = api
        .http
        .post(format!("{}/api/v1/dead-letters/redrive", api.base))
        .send()
        .await
        .expect("redrive");
    assert_eq!(redriven.status(), StatusCode::OK);
    assert_eq!(json_of(redriven).await, json!({"redriven": 1}));
    assert_eq!(api.queue.dead_letter_depth().await.expect("dlq"), 0);
    let back = api.take_one("redriven message").await;
    assert!(
        back.message()
            .attributes
            .contains_key(openhqm_queue::REDRIVEN)
    );
    back.ack().await.expect("ack");
    api.db.close().await;
}

/// A caller waiting on the passthrough ingress takes the backend's answer as
/// its acknowledgement: its message is published deferred (held, not
/// written, on the embedded engine), and the queue is synced before any 202
/// says it is stored. `respond-async` gets a fully durable publish.
#[tokio::test]
async fn a_waited_passthrough_call_is_synced_before_a_202_and_never_for_an_answer() {
    let sidecar = SidecarConfig {
        endpoint: None,
        wait: Duration::from_secs(1),
        path_prefix: Some("/app".into()),
        forward_headers: None,
        preserve_host: false,
    };
    let api = serve_setup(None, 0, MAX_BODY * 2, false, Some(sidecar)).await;
    let call = |prefer: &'static str| {
        api.http
            .post(format!("{}/app/orders", api.base))
            .header("prefer", prefer)
            .body("{}")
            .send()
    };

    // No worker answers: the wait runs out, and the 202 comes after a sync.
    let r = call("wait=1").await.expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(api.queue_calls(), ["publish deferred", "sync"]);
    api.take_one("the waited call")
        .await
        .ack()
        .await
        .expect("ack");

    // `respond-async`: 202 at once, for a message stored in full.
    let r = call("respond-async").await.expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(api.queue_calls(), ["publish"]);
    api.take_one("the async call")
        .await
        .ack()
        .await
        .expect("ack");

    // A repeated key's 202 is synced too: the first call's message may not be.
    let keyed = || {
        api.http
            .post(format!("{}/app/keyed", api.base))
            .header("prefer", "respond-async")
            .header("idempotency-key", "\"order-7\"")
            .header("authorization", "Bearer caller-1")
            .body("{}")
            .send()
    };
    assert_eq!(keyed().await.expect("send").status(), StatusCode::ACCEPTED);
    assert_eq!(api.queue_calls(), ["publish"]);
    let r = keyed().await.expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let replayed = r.headers().get("idempotent-replayed");
    assert_eq!(replayed.and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(api.queue_calls(), ["sync"]);
    api.take_one("the keyed call")
        .await
        .ack()
        .await
        .expect("ack");

    // Answered within the wait: the answer needs no sync.
    let waiting = tokio::spawn(call("wait=5"));
    let delivery = api.take_one("the answered call").await;
    let id: CorrelationId = Envelope::correlation_id_in(&delivery.message().body).expect("id");
    let mut outcome = ResultData {
        status_code: Some(201),
        ..ResultData::default()
    };
    outcome.set_body(json!({"ok": true}), None);
    api.complete(id, outcome).await;
    delivery.ack().await.expect("ack");
    let r = waiting.await.expect("join").expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(api.queue_calls(), ["publish deferred"]);
}
