//! The real `openhqm` binary as a child process on 127.0.0.1: crash
//! durability (`kill -9` under load), what `queue.fsync` syncs, graceful
//! shutdown, start-up errors, logs and metrics.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{BIN, Server, free_port, get_json, http_client, status_of, submit, until, wait_ready};

fn start(dir: &Path, port: u16, extra: &[&str]) -> Server {
    start_as("serve", dir, port, extra)
}

/// `openhqm <mode>` on the data in `dir`, logging to `dir/server.log`.
fn start_as(mode: &str, dir: &Path, port: u16, extra: &[&str]) -> Server {
    let log_path = dir.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("log file");
    let child = Command::new(BIN)
        .args([mode, "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .env_remove("OPENHQM_CONFIG")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn openhqm");
    // Killed when dropped, so a failing test leaves no process behind.
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log: log_path,
    }
}

/// What the server started by [`start`] in `dir` has logged.
fn server_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).expect("log")
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "openhqm did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A 202 means the request is persisted: kill -9 the server while clients
/// submit, restart it on the same data, and every acknowledged id completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_under_load_loses_no_acknowledged_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = start(dir.path(), port, &["--set", "worker.count=8"]);
    let http = http_client();
    wait_ready(&http, &server.base).await;

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (http, base, acked) = (http.clone(), server.base.clone(), Arc::clone(&acked));
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let body =
                    json!({"payload": {"operation": "sleep", "ms": 5, "data": format!("{c}-{i}")}});
                match submit(&http, &base, &body).await {
                    Some(id) => acked.lock().expect("lock").push(id),
                    None => return, // the server is gone
                }
            }
        }));
    }
    // Let load build up (a backlog and in-flight work), then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().expect("lock").len() < 1500 {
        assert!(Instant::now() < deadline, "load never built up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reap");
    for c in clients {
        c.await.expect("client");
    }
    let acked: Vec<String> = acked.lock().expect("lock").clone();

    let server = start(dir.path(), port, &[]);
    wait_ready(&http, &server.base).await;
    let mut pending: HashSet<String> = acked.iter().cloned().collect();
    assert_eq!(pending.len(), acked.len(), "ids are unique");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        let mut done = Vec::new();
        for id in pending.iter().take(200) {
            match status_of(&http, &server.base, id).await.as_deref() {
                Some("COMPLETED") => done.push(id.clone()),
                Some("PENDING" | "PROCESSING") => {}
                other => panic!("acknowledged request {id} is {other:?} after the crash"),
            }
        }
        for id in done {
            pending.remove(&id);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged requests never completed",
            pending.len(),
            acked.len()
        );
    }
    let mut server = server;
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child, Duration::from_secs(30)).success());
    // The test only proves something if the crash left work behind.
    let log = server_log(dir.path());
    let recovered: u64 = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "embedded queue opened")
        .filter_map(|v| v["recovered"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        recovered > 0,
        "the kill left no unfinished work; the test proved nothing:\n{log}"
    );
}

/// An attempt cut short by `kill -9` counts: with one attempt allowed, the
/// redelivery after the restart is failed ("no attempts left") without
/// running again. A message that kills its worker cannot do so forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_killed_mid_way_counts_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let once = ["--set", "worker.max_retries=0"];
    let mut server = start(dir.path(), port, &once);
    let http = http_client();
    wait_ready(&http, &server.base).await;
    let body = json!({"payload": {"operation": "sleep", "ms": 60_000}});
    let id = submit(&http, &server.base, &body).await.expect("accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&http, &server.base, &id).await.as_deref() != Some("PROCESSING") {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reap");

    let mut server = start(dir.path(), port, &once);
    wait_ready(&http, &server.base).await;
    // Long-poll: answered the moment the request is finished. Running the
    // killed attempt again would take 60 s and end COMPLETED.
    let record = get_json(
        &http,
        format!("{}/api/v1/response/{id}?wait=15", server.base),
    )
    .await;
    assert_eq!(
        record["status"], "FAILED",
        "the killed attempt ran again: {record}"
    );
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains("no attempts left"), "{record}");
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child, Duration::from_secs(30)).success());
}

/// What `queue.fsync` syncs, counted by strace (Linux only).
#[cfg(target_os = "linux")]
mod syncs {
    use std::os::unix::process::CommandExt as _;
    use std::path::PathBuf;
    use std::process::Stdio;

    use super::*;

    /// The strace options that report each fsync and fdatasync as it is made.
    const STRACE_SYNCS: [&str; 7] = [
        "-f",
        "-qq",
        "--seccomp-bpf",
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        "signal=none",
    ];

    /// Whether strace is installed and may trace a child here.
    fn strace_works() -> bool {
        Command::new("strace")
            .args(STRACE_SYNCS)
            .args(["-o", "/dev/null", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `openhqm serve` run by strace, which writes each sync the server makes
    /// to a file as it makes it. Both are killed when dropped.
    struct Traced {
        /// strace, whose child is the server; it leads their process group.
        strace: Server,
        trace: PathBuf,
    }

    impl Traced {
        fn start(dir: &Path, port: u16, extra: &[&str]) -> Self {
            let trace = dir.join("syncs.trace");
            let log = std::fs::File::create(dir.join("server.log")).expect("log file");
            let child = Command::new("strace")
                .args(STRACE_SYNCS)
                .arg("-o")
                .arg(&trace)
                .args(["--", BIN, "serve", "--host", "127.0.0.1", "--port"])
                .arg(port.to_string())
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(extra)
                .env_remove("OPENHQM_CONFIG")
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("spawn strace");
            let strace = Server {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log: dir.join("server.log"),
            };
            Self { strace, trace }
        }

        /// How many times the server has called fsync or fdatasync so far. (A
        /// call another thread's report interrupts is written as
        /// `fdatasync(3 <unfinished ...>`, then `<... fdatasync resumed>`.)
        fn syncs(&self) -> usize {
            std::fs::read_to_string(&self.trace)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("fsync(") || l.contains("fdatasync("))
                .count()
        }
    }

    impl Drop for Traced {
        fn drop(&mut self) {
            // Killing strace alone would leave the server running, untraced.
            let group = format!("-{}", self.strace.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        }
    }

    /// A 202 waits for an fsync of its own group commit by default, and for
    /// none under `queue.fsync: false` (a crash of the process loses nothing;
    /// a power loss may). Submits made one after another share no commit, so
    /// by default each makes a sync. Counted by strace, which
    /// `scripts/test.sh` installs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queue_fsync_false_makes_no_sync_per_submit() {
        const N: usize = 100;
        assert!(
            strace_works(),
            "strace is missing or may not trace here (scripts/test.sh installs it)"
        );
        let http = http_client();
        for fsync in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let set = format!("queue.fsync={fsync}");
            let server = Traced::start(dir.path(), free_port(), &["--set", &set]);
            let base = server.strace.base.clone();
            wait_ready(&http, &base).await;
            let before = server.syncs();
            for i in 0..N {
                let body = json!({"payload": {"operation": "echo", "data": i}});
                submit(&http, &base, &body).await.expect("accepted");
            }
            let syncs = server.syncs() - before;
            if fsync {
                assert!(syncs >= N, "{N} submits, {syncs} syncs with queue.fsync");
            } else {
                assert!(
                    syncs < N / 10,
                    "{N} submits, {syncs} syncs without queue.fsync"
                );
            }
        }
    }
}

/// SIGTERM: stop taking work, finish what is in flight, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    drains_in_flight_work_and_exits_zero_on("-TERM").await;
}

/// SIGINT (Ctrl-C) shuts down as SIGTERM does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_in_flight_work_and_exits_zero() {
    drains_in_flight_work_and_exits_zero_on("-INT").await;
}

/// Sends `sig` (as `kill` names it) while a request is in flight: the
/// server finishes it and exits 0, and a restart shows it COMPLETED.
async fn drains_in_flight_work_and_exits_zero_on(sig: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = start(dir.path(), port, &[]);
    let http = http_client();
    wait_ready(&http, &server.base).await;
    let id = submit(
        &http,
        &server.base,
        &json!({"payload": {"operation": "sleep", "ms": 800, "data": "slow"}}),
    )
    .await
    .expect("accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&http, &server.base, &id).await.as_deref() != Some("PROCESSING") {
        assert!(Instant::now() < deadline, "never started processing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&server.child, sig);
    let status = wait_exit(&mut server.child, Duration::from_secs(15));
    assert!(status.success(), "{sig}: exit status {status}");

    let server = start(dir.path(), port, &[]);
    wait_ready(&http, &server.base).await;
    let r: Value = http
        .get(format!("{}/api/v1/response/{id}", server.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        r["status"], "COMPLETED",
        "{sig}: in-flight work finished during the drain: {r}"
    );
    assert_eq!(r["result"]["output"], "slow");
    let mut server = server;
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child, Duration::from_secs(15)).success());
}

/// A client that never finishes sending its request does not hold the
/// process at shutdown: its connection is closed after a short grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_does_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = start(
        dir.path(),
        port,
        &["--set", "worker.drain_timeout_seconds=1"],
    );
    let http = http_client();
    wait_ready(&http, &server.base).await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(b"POST /api/v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pay")
        .await
        .expect("send part");
    // Not a synchronisation the assertions depend on: time for the server to
    // take the connection, so the shutdown below meets a half-sent request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    signal(&server.child, "-TERM");
    let status = wait_exit(&mut server.child, Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?} with the client still connected",
        started.elapsed()
    );
    drop(slow);
}

/// A client must send each request head within
/// `server.read_timeout_seconds`, and may not pause longer than that in its
/// body: one that connects and sends nothing, or stalls, is cut off instead
/// of holding a socket for ever, and a stalled body is answered 408. A slow
/// but steady body, and a long-poll held past the timeout, are not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = start(
        dir.path(),
        port,
        &["--set", "server.read_timeout_seconds=1"],
    );
    let http = http_client();
    wait_ready(&http, &server.base).await;

    let sent = [
        &b""[..],
        b"POST /api/v1/submit HTTP/1.1\r\nHost: x\r\nContent-Le",
        b"POST /api/v1/submit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pay",
    ];
    let mut answers = Vec::new();
    for bytes in sent {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        tcp.write_all(bytes).await.expect("send part");
        let started = Instant::now();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .expect("the connection is closed by the server")
            .expect("read");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "closed after {:?}, before the timeout",
            started.elapsed()
        );
        answers.push(String::from_utf8_lossy(&answer).into_owned());
    }
    assert_eq!(answers[0], "", "nothing sent, nothing answered");
    assert_eq!(answers[1], "", "a head cut off is not answered");
    assert!(answers[2].starts_with("HTTP/1.1 408"), "{}", answers[2]);
    assert!(answers[2].contains("request-timeout"), "{}", answers[2]);

    // A body sent in pieces, each within the timeout, over twice as long.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let body = br#"{"payload": {"operation": "sleep", "ms": 2500}}"#;
    let head = format!(
        "POST /api/v1/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    for piece in body.chunks(body.len().div_ceil(5)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tcp.write_all(piece).await.expect("piece");
    }
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let id = answer
        .split("\"correlation_id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("correlation id");

    // That request takes 2.5 s; a long-poll on it is held past the timeout.
    let started = Instant::now();
    let r = http
        .get(format!("{}/api/v1/response/{id}", server.base))
        .header("prefer", "wait=10")
        .send()
        .await
        .expect("long-poll");
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() > Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child, Duration::from_secs(20)).success());
}

/// fjall refuses every write once a write, sync, flush or compaction has
/// failed; the process then stops with an error naming the cause, for its
/// supervisor to restart it, instead of answering 503 for ever. The failure
/// is real: the data directory is deleted under the running server, so the
/// next memtable flush cannot create its table file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_stops_the_process_with_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = start(dir.path(), port, &[]);
    let http = http_client();
    wait_ready(&http, &server.base).await;
    std::fs::remove_dir_all(dir.path().join("data")).expect("delete the data directory");

    // Well past one 4 MiB memtable, so a flush must write a table.
    let data = "x".repeat(512 * 1024);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "openhqm kept running on a failed storage engine"
        );
        let _ = submit(
            &http,
            &server.base,
            &json!({"payload": {"operation": "echo", "data": data}}),
        )
        .await;
    };
    assert!(!status.success(), "exit status {status}");
    let log = server_log(dir.path());
    assert!(
        log.contains("the embedded storage failed"),
        "the exit names the storage:\n{log}"
    );
    // fjall's own error (it logs through the `log` crate) reaches our log.
    assert!(
        log.contains("No such file or directory"),
        "the root cause is logged:\n{log}"
    );
    // The orderly shutdown finished, rather than the drain timer's cut-off.
    assert!(
        log.contains("restart openhqm to recover from its journal"),
        "the shutdown ran to its end:\n{log}"
    );
}

/// Dead letters past `queue.dlq_retention_seconds` are deleted by the
/// running process, so a request that fails for good takes no space for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_past_their_retention_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = start(
        dir.path(),
        port,
        &["--set", "queue.dlq_retention_seconds=2"],
    );
    let http = http_client();
    wait_ready(&http, &server.base).await;
    submit(
        &http,
        &server.base,
        &json!({"payload": {"operation": "fail", "error": "no", "permanent": true}}),
    )
    .await
    .expect("accepted");
    let depth = async || -> Option<u64> {
        get_json(&http, format!("{}/api/v1/dead-letters", server.base)).await["depth"].as_u64()
    };
    until("the dead letter", async || {
        (depth().await? == 1).then_some(())
    })
    .await;
    let dead_at = Instant::now();
    until("the dead letter to expire", async || {
        (depth().await? == 0).then_some(())
    })
    .await;
    assert!(
        dead_at.elapsed() >= Duration::from_millis(1500),
        "deleted before its retention ran out: {:?}",
        dead_at.elapsed()
    );
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child, Duration::from_secs(15)).success());
    let log = server_log(dir.path());
    assert!(
        log.contains("deleted dead letters past their retention"),
        "{log}"
    );
}

/// Every log line about a request names it, and worker metrics are exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_logs_carry_the_correlation_id_and_worker_metrics_are_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = start(
        dir.path(),
        port,
        &[
            "--set",
            "worker.max_retries=1",
            "--set",
            "worker.retry_delay_base=0.05",
            "--set",
            "worker.retry_delay_max=0.1",
        ],
    );
    let http = http_client();
    wait_ready(&http, &server.base).await;
    let id = submit(
        &http,
        &server.base,
        &json!({"payload": {"operation": "fail", "error": "backend said no"}}),
    )
    .await
    .expect("accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&http, &server.base, &id).await.as_deref() != Some("FAILED") {
        assert!(Instant::now() < deadline, "never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // FAILED is stored a moment before the message reaches the dead-letter queue.
    let dead_lettered = "openhqm_queue_dlq_total{queue=\"openhqm-requests\",status=\"FAILED\"} 1";
    let metrics = until("the dead-letter count", async || {
        let text = http
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains(dead_lettered).then_some(text)
    })
    .await;
    assert!(
        metrics.contains("openhqm_worker_processing_duration_seconds_count{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("openhqm_worker_errors_total{kind=\"transient\"} 2"),
        "{metrics}"
    );
    signal(&server.child, "-TERM");
    wait_exit(&mut server.child, Duration::from_secs(15));

    let log = server_log(dir.path());
    let about: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.to_string().contains("backend said no"))
        .collect();
    assert!(
        about.len() >= 2,
        "expected a retry and a failure line:\n{log}"
    );
    for line in about {
        assert_eq!(line["correlation_id"], id.as_str(), "{line}");
    }
}

/// `openhqm check-config --config file`, ready to run.
fn check_config(file: &std::path::Path) -> Command {
    let mut command = Command::new(BIN);
    command.arg("check-config").arg("--config").arg(file);
    command
}

/// Runs `check-config` on a file holding `yaml`, expects it refused (exit
/// 2), and returns what it printed: (stdout, stderr).
fn refused_config(yaml: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, yaml).expect("write");
    let out = check_config(&file).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_config_lists_every_error_by_key_and_exits_non_zero() {
    let (_, stderr) =
        refused_config("server:\n  prot: 1\nqueue:\n  type: kafka\nworker:\n  count: 0\n");
    for key in ["`server.prot`", "`queue.type`", "`worker.count`"] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

/// A URL written without its scheme is an error, and the configuration
/// printed beside it masks its query as it would a whole URL's.
#[test]
fn check_config_masks_the_query_of_a_url_without_a_scheme() {
    let (stdout, stderr) = refused_config(
        "proxy:\n  endpoints:\n    api:\n      url: 127.0.0.1:8080/path?token=hunter2-query\n",
    );
    assert!(stderr.contains("`proxy.endpoints.api.url`"), "{stderr}");
    assert!(stdout.contains("127.0.0.1:8080/path?***"), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains("hunter2"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn the_config_file_comes_from_openhqm_config_unless_it_is_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("env.yaml");
    std::fs::write(&file, "worker:\n  count: 7\n").expect("write");
    let run = |value: &std::ffi::OsStr| {
        Command::new(BIN)
            .arg("check-config")
            .env("OPENHQM_CONFIG", value)
            .output()
            .expect("run")
    };
    let named = run(file.as_os_str());
    assert!(named.status.success(), "{named:?}");
    assert!(String::from_utf8_lossy(&named.stdout).contains("count: 7"));
    // Set empty, as templating leaves variables: no file, not an error.
    let empty = run("".as_ref());
    assert!(empty.status.success(), "{empty:?}");
    assert!(String::from_utf8_lossy(&empty.stdout).contains("count: 64"));
}

#[test]
fn check_config_refuses_a_ca_file_the_forwarder_could_not_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing-ca.pem");
    let (_, stderr) = refused_config(&format!(
        "proxy:\n  enabled: true\n  endpoints:\n    api:\n      url: https://127.0.0.1:9\n      tls:\n        ca_file: {}\n",
        missing.display()
    ));
    assert!(
        stderr.contains("`proxy.endpoints.api.tls.ca_file`") && stderr.contains("missing-ca.pem"),
        "{stderr}"
    );
}

#[test]
fn check_config_shows_no_configuration_when_the_file_cannot_be_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "server:\n  port: [1,\n").expect("write");
    for path in [file, dir.path().join("missing.yaml")] {
        let out = check_config(&path).output().expect("run");
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&*path.to_string_lossy()), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "defaults printed as if they were the configuration:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ok.yaml");
    std::fs::write(&file, "proxy:\n  endpoints:\n    api:\n      url: http://127.0.0.1:9\n      auth_type: bearer\n      auth_token: ${TOKEN}\n    fn:\n      url: https://app:hunter2-pw@fn.example/run?code=hunter2-code\n      headers:\n        X-Api-Key: hunter2-key\n        Accept: application/json\n").expect("write");
    let out = check_config(&file)
        .env("TOKEN", "hunter2-secret")
        .env("OPENHQM_WORKER__COUNT", "12")
        .env(
            "OPENHQM_QUEUE__REDIS_URL",
            "redis://app:hunter2-redis@127.0.0.1:6390/0",
        )
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("count: 12"), "{stdout}");
    assert!(
        stdout.contains("auth_token: '***'") || stdout.contains("auth_token: \"***\""),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "secret printed:\n{stdout}");
    assert!(stdout.contains("Accept: application/json"), "{stdout}");
    // Where Redis is stays visible; only its password is masked.
    assert!(
        stdout.contains("redis_url: redis://app:***@127.0.0.1:6390/0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("redis_url: redis://localhost:6379"),
        "{stdout}"
    );
}

/// On the embedded engine a listener alone is a durable buffer: what it
/// accepted waits, PENDING, and a worker started later on the same data
/// directory runs it; a listener started after that serves the results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_alone_stores_requests_that_a_later_worker_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let port = free_port();
    let mut listener = start_as("listener", dir.path(), port, &[]);
    wait_ready(&http, &listener.base).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let body = json!({"payload": {"operation": "uppercase", "data": format!("item {i}")}});
        ids.push(
            submit(&http, &listener.base, &body)
                .await
                .expect("accepted"),
        );
    }
    // Not a wait for something to happen: time for a worker that should
    // not be there to take the requests, before checking none did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in &ids {
        let status = status_of(&http, &listener.base, id).await;
        assert_eq!(
            status.as_deref(),
            Some("PENDING"),
            "{id}: nothing runs it yet"
        );
    }
    signal(&listener.child, "-TERM");
    assert!(wait_exit(&mut listener.child, Duration::from_secs(10)).success());

    let mut worker = start_as("worker", dir.path(), port, &[]);
    wait_ready(&http, &worker.base).await;
    let completed = r#"openhqm_worker_processing_duration_seconds_count{outcome="completed"}"#;
    until("the worker ran every stored request", async || {
        let text = http
            .get(format!("{}/metrics", worker.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let done = text
            .lines()
            .find_map(|l| l.strip_prefix(completed))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        (done >= 20.0).then_some(())
    })
    .await;
    signal(&worker.child, "-TERM");
    assert!(wait_exit(&mut worker.child, Duration::from_secs(10)).success());

    let listener = start_as("listener", dir.path(), port, &[]);
    wait_ready(&http, &listener.base).await;
    for (i, id) in ids.iter().enumerate() {
        let body = get_json(&http, format!("{}/api/v1/response/{id}", listener.base)).await;
        assert_eq!(body["result"]["output"], format!("ITEM {i}"), "{body}");
    }
    assert!(server_log(dir.path()).contains("one process's at a time"));
}

/// An idempotent request's 202 survives `kill -9` like any other: its
/// status record, written after its message, is synced before the 202, so
/// after a restart the repeat is answered as the same request, not refused
/// as in use and, once the claim went stale, queued a second time. A
/// listener alone keeps the request waiting, so nothing else writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_is_the_same_request_after_kill_dash_nine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let port = free_port();
    let send = async |base: &str| {
        http.post(format!("{base}/api/v1/submit"))
            .header("authorization", "Bearer client-7")
            .header("idempotency-key", "order-7")
            .json(&json!({"payload": {"operation": "echo", "data": "once"}}))
            .send()
            .await
            .expect("submit")
    };
    let mut listener = start_as("listener", dir.path(), port, &[]);
    wait_ready(&http, &listener.base).await;
    let first = send(&listener.base).await;
    signal(&listener.child, "-KILL");
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("json");
    wait_exit(&mut listener.child, Duration::from_secs(10));

    let listener = start_as("listener", dir.path(), port, &[]);
    wait_ready(&http, &listener.base).await;
    let repeat = send(&listener.base).await;
    assert_eq!(repeat.status(), 202);
    assert_eq!(
        repeat
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let repeat: Value = repeat.json().await.expect("json");
    assert_eq!(repeat["correlation_id"], first["correlation_id"]);
}

/// A listener or worker alone beside other processes needs both the queue
/// and the store shared: half of the work kept in one process is refused,
/// naming what to change.
#[test]
fn split_roles_with_only_one_of_queue_and_store_embedded_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (mode, set, names) in [
        ("listener", "cache.type=redis", "queue.type embedded"),
        ("worker", "queue.type=redis", "cache.type embedded"),
    ] {
        let out = Command::new(BIN)
            .args([mode, "--port", "0", "--set", set, "--data-dir"])
            .arg(dir.path())
            .env_remove("OPENHQM_CONFIG")
            .output()
            .expect("run");
        assert!(!out.status.success(), "{mode} with {set}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(names) && stderr.contains("openhqm serve"),
            "{mode} with {set}: {stderr}"
        );
    }
}

/// The usual soft limit on open files (often 1024) does not cap
/// connections: the server raises it to the hard limit at start. Here the
/// soft limit is 64, which the runtime, storage and listener already use
/// a good part of, and 300 connections are held open at once.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_soft_open_file_limit_does_not_cap_connections() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    // This test holds 300 sockets itself.
    let own = rlimit::increase_nofile_limit(1024).expect("raise the test's own limit");
    assert!(
        own >= 512,
        "the hard limit on open files ({own}) is too low for this test"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let server = Server {
        child: Command::new("sh")
            .args(["-c", "ulimit -Sn 64 && exec \"$0\" \"$@\"", BIN, "serve"])
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .env_remove("OPENHQM_CONFIG")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn openhqm under a low limit"),
        base: format!("http://127.0.0.1:{port}"),
        log: log_path,
    };
    wait_ready(&http_client(), &server.base).await;

    let answered = tokio::task::spawn_blocking(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // One deadline for everything: a connection the server cannot
        // accept waits in the kernel's backlog, or in connect() once that
        // is full, and is never answered.
        let deadline = Instant::now() + Duration::from_secs(15);
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let mut conns = Vec::new();
        while conns.len() < 300 && Instant::now() < deadline {
            let Ok(mut conn) = TcpStream::connect_timeout(&addr, left()) else {
                break;
            };
            conn.write_all(b"GET /health/live HTTP/1.1\r\nHost: openhqm\r\n\r\n")
                .expect("send");
            conns.push(conn);
        }
        let opened = conns.len();
        let mut answered = 0;
        for conn in &mut conns {
            conn.set_read_timeout(Some(left())).expect("timeout");
            let mut head = [0u8; 12];
            if conn.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200" {
                answered += 1;
            }
        }
        (opened, answered)
    })
    .await
    .expect("join");
    let (opened, answered) = answered;
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert_eq!(
        answered, 300,
        "of 300 connections {opened} opened and {answered} were answered under a soft limit of 64; server log:\n{log}"
    );
}
