//! Split roles on Redis: two `openhqm listener` and three `openhqm worker`
//! processes share one private `redis-server`. Every accepted request
//! completes, also when a worker is killed with SIGKILL under load or Redis
//! is restarted with its data, and an unparsable envelope from an outside
//! producer is dead-lettered.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openhqm_redis_testkit::{RedisOptions, RedisServer};
use serde_json::{Value, json};

use common::{BIN, free_port, get_json, http_client, status_of, submit, until_within};

/// One openhqm process; killed (SIGKILL) if still running when dropped.
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

fn start(role: &str, name: &str, redis: &str, dir: &Path) -> Proc {
    start_with(role, name, redis, dir, &[])
}

/// [`start`] with extra `--set key=value` settings.
fn start_with(role: &str, name: &str, redis: &str, dir: &Path, sets: &[String]) -> Proc {
    let port = free_port();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let child = Command::new(BIN)
        .args([role, "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--set", "queue.type=redis", "--set", "cache.type=redis"])
        .args(["--set", &format!("queue.redis_url={redis}")])
        .args(["--set", &format!("cache.redis_url={redis}")])
        .args(["--set", &format!("queue.redis_consumer_name={name}")])
        .args(["--set", "queue.lease_seconds=2", "--set", "worker.count=4"])
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
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

async fn wait_ready(http: &reqwest::Client, p: &Proc) {
    common::wait_ready(http, &p.base).await;
}

/// Waits until every id reads COMPLETED, asking the listeners in turn.
async fn all_complete(http: &reqwest::Client, listeners: &[Proc], ids: &[String]) {
    let mut pending: HashSet<&String> = ids.iter().collect();
    assert_eq!(pending.len(), ids.len(), "ids are unique");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pending.is_empty() {
        let mut done = Vec::new();
        for (i, id) in pending.iter().take(200).enumerate() {
            let base = &listeners[i % listeners.len()].base;
            match status_of(http, base, id).await.as_deref() {
                Some("COMPLETED") => done.push(*id),
                Some("PENDING" | "PROCESSING") | None => {}
                other => panic!("accepted request {id} is {other:?}"),
            }
        }
        for id in done {
            pending.remove(id);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted requests never completed",
            pending.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn redis_cmd<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    cmd.query_async(&mut conn).await.expect("redis command")
}

/// Submits from `clients` tasks, alternating listeners, until `stop` is set.
fn load(
    http: &reqwest::Client,
    bases: &[String],
    accepted: &Arc<Mutex<Vec<String>>>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|c| {
            let (http, bases) = (http.clone(), bases.to_vec());
            let (accepted, stop) = (Arc::clone(accepted), Arc::clone(stop));
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let body = json!({"payload": {"operation": "sleep", "ms": 100, "data": format!("{c}-{i}")}});
                    if let Some(id) = submit(&http, &bases[i % bases.len()], &body).await {
                        accepted.lock().expect("lock").push(id);
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listeners_and_workers_share_redis_and_survive_a_killed_worker() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let listeners = [
        start("listener", "listener-0", &url, dir.path()),
        start("listener", "listener-1", &url, dir.path()),
    ];
    let mut workers: Vec<Proc> = (0..3)
        .map(|i| start("worker", &format!("worker-{i}"), &url, dir.path()))
        .collect();
    for p in listeners.iter().chain(workers.iter()) {
        wait_ready(&http, p).await;
    }

    // Phase 1: requests spread over both listeners all complete.
    let mut ids = Vec::new();
    for i in 0..200 {
        let body = json!({"payload": {"operation": "echo", "data": i}});
        let base = &listeners[i % 2].base;
        ids.push(submit(&http, base, &body).await.expect("accepted"));
    }
    all_complete(&http, &listeners, &ids).await;
    let r: Value = http
        .get(format!("{}/api/v1/response/{}", listeners[1].base, ids[0]))
        .send()
        .await
        .expect("response")
        .json()
        .await
        .expect("json");
    assert_eq!(r["result"]["output"], json!(0), "{r}");

    // Phase 2: kill -9 a worker under load; everything accepted completes.
    let bases: Vec<String> = listeners.iter().map(|l| l.base.clone()).collect();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(&http, &bases, &accepted, &stop);
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().expect("lock").len() < 100 {
        assert!(Instant::now() < deadline, "load never built up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut victim = workers.remove(0);
    victim.child.kill().expect("kill -9");
    victim.child.wait().expect("reap");
    let orphaned: Vec<redis::Value> = redis_cmd(
        &url,
        redis::cmd("XPENDING")
            .arg("openhqm-requests")
            .arg("openhqm-workers")
            .arg("-")
            .arg("+")
            .arg(100)
            .arg("worker-0"),
    )
    .await;
    let orphaned = orphaned.len();
    while accepted.lock().expect("lock").len() < 300 {
        assert!(Instant::now() < deadline, "load stalled after the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let accepted = accepted.lock().expect("lock").clone();
    all_complete(&http, &listeners, &accepted).await;
    assert!(
        orphaned > 0,
        "the killed worker held no deliveries; the test proved nothing"
    );

    // An outside producer's unparsable entry ends on the dead-letter stream.
    let _: String = redis_cmd(
        &url,
        redis::cmd("XADD")
            .arg("openhqm-requests")
            .arg("*")
            .arg("payload")
            .arg("this is not an envelope"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dead: u64 = redis_cmd(&url, redis::cmd("XLEN").arg("openhqm-dlq")).await;
        if dead == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unparsable entry never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A producer of the earlier implementation chose its own ids, not UUIDs:
    // the request runs, and its id finds the result on any listener.
    let _: String = redis_cmd(
        &url,
        redis::cmd("XADD").arg("openhqm-requests").arg("*").arg("payload").arg(
            r#"{"correlation_id": "order-17", "payload": {"operation": "uppercase", "data": "hi"}}"#,
        ),
    )
    .await;
    let response = common::until("order-17 to complete", async || {
        let r = get_json(
            &http,
            format!("{}/api/v1/response/order-17", listeners[1].base),
        )
        .await;
        (r["status"] == "COMPLETED").then_some(r)
    })
    .await;
    assert_eq!(response["result"]["output"], "HI", "{response}");
    drop(workers);
}

/// A backend on 127.0.0.1 that answers every request 201 with a fixed body.
async fn backend() -> String {
    let router = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::CREATED, "made by the backend") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_callers_on_any_listener_are_woken_by_a_worker_elsewhere() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let app = backend().await;
    let side_port = free_port();
    let proxy = vec![
        "proxy.enabled=true".to_owned(),
        format!("proxy.default_endpoint={app}"),
    ];
    let mut sidecar = proxy.clone();
    sidecar.extend([
        "sidecar.enabled=true".to_owned(),
        format!("sidecar.port={side_port}"),
    ]);
    let first = start_with("listener", "listener-0", &url, dir.path(), &proxy);
    let second = start_with("listener", "listener-1", &url, dir.path(), &sidecar);
    wait_ready(&http, &first).await;
    wait_ready(&http, &second).await;

    // Accepted by one listener, long-polled on the other, while no worker runs.
    let id = submit(&http, &first.base, &json!({"payload": {"n": 1}}))
        .await
        .expect("accepted");
    let poll = {
        let (http, url) = (
            http.clone(),
            format!("{}/api/v1/response/{id}", second.base),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http
                .get(url)
                .header("prefer", "wait=30")
                .send()
                .await
                .expect("long-poll");
            (
                r.status(),
                r.json::<Value>().await.expect("json"),
                started.elapsed(),
            )
        })
    };
    // A sync call through the second listener's passthrough port, parked too.
    let call = {
        let (http, url) = (http.clone(), format!("http://127.0.0.1:{side_port}/orders"));
        tokio::spawn(async move {
            let r = http.post(url).body("x").send().await.expect("call");
            (r.status(), r.text().await.expect("text"))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished() && !call.is_finished(),
        "nothing can finish without a worker"
    );
    let worker = start_with("worker", "worker-0", &url, dir.path(), &proxy);

    let (status, body, waited) = poll.await.expect("poll");
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["status"], "COMPLETED", "{body}");
    assert_eq!(body["status_code"], 201);
    assert!(
        waited < Duration::from_secs(20),
        "answered when done, not at the deadline: {waited:?}"
    );
    let (status, text) = call.await.expect("call");
    assert_eq!(status, reqwest::StatusCode::CREATED);
    assert_eq!(text, "made by the backend");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_and_worker_started_before_redis_wait_for_it() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill(); // as a pod whose Redis container is still starting
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let mut listener = start("listener", "listener-0", &url, dir.path());
    let mut worker = start("worker", "worker-0", &url, dir.path());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for p in [&mut listener, &mut worker] {
        assert!(
            p.child.try_wait().expect("status").is_none(),
            "exited while Redis was down"
        );
    }
    redis.start_again();
    wait_ready(&http, &listener).await;
    wait_ready(&http, &worker).await;
    let body = json!({"payload": {"operation": "echo", "data": 1}});
    let id = common::submit(&http, &listener.base, &body)
        .await
        .expect("accepted");
    all_complete(&http, std::slice::from_ref(&listener), &[id]).await;
}

/// Connections a listener or a worker holds: the queue's multiplexed one and
/// its blocking reader, the store's multiplexed one and its subscriber.
const CONNECTIONS_PER_PROCESS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_clients_then_redis_down_and_restarted_empty_under_load() {
    // Room for the two processes' connections, four times over (the
    // connections of a Redis restart are all gone with it), and far fewer
    // than the clients: a connection per request would be refused.
    let mut redis = RedisServer::start_with(RedisOptions {
        max_clients: Some(2 * CONNECTIONS_PER_PROCESS * 4),
        ..RedisOptions::default()
    });
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let listener = start("listener", "listener-0", &url, dir.path());
    let worker = start("worker", "worker-0", &url, dir.path());
    wait_ready(&http, &listener).await;
    wait_ready(&http, &worker).await;

    // 1,000 clients at once: each is accepted (no "too many connections").
    let clients: Vec<_> = (0..1000)
        .map(|i| {
            let (http, base) = (http.clone(), listener.base.clone());
            tokio::spawn(async move {
                let body = json!({"payload": {"operation": "echo", "data": i}});
                submit(&http, &base, &body).await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for c in clients {
        ids.push(c.await.expect("client").expect("accepted"));
    }
    all_complete(&http, std::slice::from_ref(&listener), &ids).await;

    // Load keeps coming while Redis dies and comes back empty.
    let bases = vec![listener.base.clone()];
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load_clients = load(&http, &bases, &accepted, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    let down = http
        .post(format!("{}/api/v1/submit", listener.base))
        .json(&json!({"payload": 1}))
        .send()
        .await
        .expect("submit while down");
    assert_eq!(down.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.headers().contains_key("retry-after"));
    let ready = http
        .get(format!("{}/health/ready", listener.base))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    // Submits in flight at the kill have had their answer by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_restart = accepted.lock().expect("lock").len();

    redis.start_again();
    wait_ready(&http, &listener).await;
    wait_ready(&http, &worker).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().expect("lock").len() < before_restart + 100 {
        assert!(
            Instant::now() < deadline,
            "no submit accepted after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in load_clients {
        c.await.expect("client");
    }
    // Redis came back without its data, so what it held is gone with it; every
    // request accepted after the restart completes with no manual step.
    let after: Vec<String> = accepted.lock().expect("lock")[before_restart..].to_vec();
    all_complete(&http, std::slice::from_ref(&listener), &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_with_its_data_under_load_loses_no_accepted_request() {
    let mut redis = RedisServer::start_with(RedisOptions {
        persistent: true,
        ..RedisOptions::default()
    });
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let listener = start("listener", "listener-0", &url, dir.path());
    let workers = [
        start("worker", "worker-0", &url, dir.path()),
        start("worker", "worker-1", &url, dir.path()),
    ];
    for p in std::iter::once(&listener).chain(&workers) {
        wait_ready(&http, p).await;
    }
    let bases = vec![listener.base.clone()];
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = load(&http, &bases, &accepted, &stop);
    let accepted_count = || accepted.lock().expect("lock").len();
    until_within(Duration::from_secs(30), "load to build up", async || {
        (accepted_count() >= 100).then_some(())
    })
    .await;
    // Acknowledged entries are deleted, so the stream holds exactly the
    // work queued or leased, which must come back with Redis.
    let unfinished: u64 = redis_cmd(&url, redis::cmd("XLEN").arg("openhqm-requests")).await;
    // SIGKILL: with `appendfsync always` every write Redis answered is on disk.
    redis.start_again();
    let restarted_at = accepted_count();
    wait_ready(&http, &listener).await;
    for w in &workers {
        wait_ready(&http, w).await;
    }
    until_within(
        Duration::from_secs(30),
        "submits accepted after the restart",
        async || (accepted_count() >= restarted_at + 100).then_some(()),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    assert!(
        unfinished > 0,
        "Redis held no work when it restarted; the test proved nothing"
    );
    // Accepted before the restart (queued, leased, or done) and after it: all.
    let accepted = accepted.lock().expect("lock").clone();
    all_complete(&http, std::slice::from_ref(&listener), &accepted).await;
}

/// Whether `name`'s log has the warning that Redis may evict keys.
fn warns_of_eviction(dir: &Path, name: &str) -> bool {
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).expect("log");
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|event| event["level"] == "WARN" && event["maxmemory_policy"] == "allkeys-lru")
}

/// A Redis that evicts keys when full would drop queued requests without a
/// word: a process opening the queue on one says so, and on a Redis that
/// refuses writes instead (`noeviction`, the default) it says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_warned_about_at_start_up() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let refusing = start("listener", "noeviction", &url, dir.path());
    wait_ready(&http, &refusing).await;
    assert!(!warns_of_eviction(dir.path(), "noeviction"));
    let () = redis_cmd(
        &url,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("allkeys-lru"),
    )
    .await;
    let evicting = start("listener", "allkeys-lru", &url, dir.path());
    wait_ready(&http, &evicting).await;
    assert!(warns_of_eviction(dir.path(), "allkeys-lru"));
}

#[test]
fn split_roles_with_an_embedded_store_are_refused() {
    let out = Command::new(BIN)
        .args(["worker", "--port", "0", "--set", "queue.type=redis"])
        .env_remove("OPENHQM_CONFIG")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cache.type redis"), "{stderr}");
}

/// Waits (up to 10 s) for `p` to exit, which it must do unsuccessfully;
/// returns its log.
async fn exits_failing(mut p: Proc, name: &str, dir: &Path) -> String {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = p.child.try_wait().expect("status") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name}: still retrying refused credentials"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{name}: exit status {status}");
    std::fs::read_to_string(dir.join(format!("{name}.log"))).expect("log")
}

/// Credentials Redis refuses end start-up at once, naming the key to fix,
/// instead of being retried as an unreachable Redis for a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_redis_credentials_stop_start_up_at_once_naming_the_key() {
    let redis = RedisServer::start();
    let port = redis.port();
    let () = redis_cmd(
        &redis.url(),
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("right"),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let right = format!("redis://:right@127.0.0.1:{port}");
    let wrong = [
        ("no-password", format!("redis://127.0.0.1:{port}")),
        ("wrong-password", format!("redis://:wrong@127.0.0.1:{port}")),
    ];
    for (name, url) in &wrong {
        let p = start("listener", name, url, dir.path());
        let log = exits_failing(p, name, dir.path()).await;
        assert!(
            log.contains("check the credentials in queue.redis_url"),
            "{name}: {log}"
        );
        assert!(!log.contains("not reachable yet"), "{name}: {log}");
        // The result store's URL alone wrong: its own key is named.
        let name = format!("cache-{name}");
        let sets = [format!("cache.redis_url={url}")];
        let p = start_with("listener", &name, &right, dir.path(), &sets);
        let log = exits_failing(p, &name, dir.path()).await;
        assert!(
            log.contains("check the credentials in cache.redis_url"),
            "{name}: {log}"
        );
    }
    let p = start("listener", "right-password", &right, dir.path());
    wait_ready(&http_client(), &p).await;
}
