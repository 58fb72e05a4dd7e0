//! What an overloaded listener refuses, and that it refuses it before it
//! reads a body: the real binary, clients on raw TCP sockets that send a
//! request's head and hold its body back.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{Server, free_port, http_client};

/// `openhqm listener` on the embedded engine in `dir`, with `sets` as
/// `--set` overrides; its port.
fn listener(dir: &std::path::Path, sets: &[&str]) -> (Server, u16) {
    let port = free_port();
    let port_arg = port.to_string();
    let data = dir.join("data").to_string_lossy().into_owned();
    let mut args = vec!["listener", "--port", &port_arg, "--data-dir", &data];
    for set in sets {
        args.extend(["--set", set]);
    }
    (Server::spawn(dir, port, &args, &[]), port)
}

/// A submit body of exactly `len` bytes.
fn submit_body(len: usize) -> String {
    let frame = r#"{"payload":""}"#;
    format!(r#"{{"payload":"{}"}}"#, "x".repeat(len - frame.len()))
}

/// A connection that sent a submit's head, declaring `len` body bytes, and
/// the first `sent` of them.
async fn held_submit(port: u16, body: &str, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/submit HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&body.as_bytes()[..sent])
        .await
        .expect("part of the body");
    stream
}

/// The status line's code of the answer on `stream`, within 5 s.
async fn status_on(stream: &mut TcpStream) -> u16 {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer within 5 s");
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line")
}

/// Whether the listener answered (or closed) `stream` already.
fn answered(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn post(http: &reqwest::Client, base: &str, body: String) -> reqwest::Response {
    http.post(format!("{base}/api/v1/submit"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("submit")
}

/// 503 `receiving-too-much` with `Retry-After`, answered without waiting.
async fn expect_receiving_too_much(response: reqwest::Response, asked: Instant) {
    assert!(asked.elapsed() < Duration::from_secs(2), "refused at once");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["code"], "receiving-too-much", "{problem}");
}

#[tokio::test]
async fn bodies_held_at_once_are_bounded_and_given_back() {
    const MAX_BODY: usize = 64 * 1024;
    // What each stalled upload sent: only bytes that arrived are charged.
    const SENT: usize = 60 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, port) = listener(
        dir.path(),
        &[
            "server.max_body_size=65536",
            "server.max_buffered_bytes=131072",
        ],
    );
    let http = http_client();
    server.ready(&http).await;
    let body = submit_body(MAX_BODY);
    // Two uploads of the largest size, stalled near their end: 120 KiB of
    // the 128 KiB budget is theirs, too little for a 16 KiB body. (One
    // whose head is read while a probe's body is held is refused, rightly:
    // it is opened again.)
    let mut held = vec![
        held_submit(port, &body, SENT).await,
        held_submit(port, &body, SENT).await,
    ];
    let full = async || {
        for upload in &mut held {
            if answered(upload) {
                *upload = held_submit(port, &body, SENT).await;
            }
        }
        let asked = Instant::now();
        let r = post(&http, &server.base, submit_body(16 * 1024)).await;
        (r.status() == 503).then_some((r, asked))
    };
    let (refused, asked) = common::until("the budget spent", full).await;
    expect_receiving_too_much(refused, asked).await;
    let asked = Instant::now();
    expect_receiving_too_much(post(&http, &server.base, body.clone()).await, asked).await;

    let (mut first, second) = (held.remove(0), held.remove(0));
    // The first upload completes: stored, and its share given back.
    first
        .write_all(&body.as_bytes()[SENT..])
        .await
        .expect("rest");
    assert_eq!(status_on(&mut first).await, 202);
    assert_eq!(post(&http, &server.base, body.clone()).await.status(), 202);
    // A client that goes away gives its share back too.
    drop(second);
    let both = async || {
        let held = held_submit(port, &body, SENT).await;
        let r = post(&http, &server.base, body.clone()).await;
        drop(held);
        (r.status() == 202).then_some(())
    };
    common::until("the second share given back", both).await;
    let refusals = server
        .metric(&http, "openhqm_api_admission_refused_total")
        .await;
    assert!(refusals >= 2.0, "{refusals}");
    assert!(server.stop().success());
}

/// At `server.max_pending`, a submit is refused from its head: a client that
/// declared a body and sends none still gets its 429 at once (read first,
/// it would wait for the body until `server.read_timeout_seconds`).
#[tokio::test]
async fn at_max_pending_a_submit_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A listener alone: nothing takes the queued request away.
    let (server, port) = listener(dir.path(), &["server.max_pending=1"]);
    let http = http_client();
    server.ready(&http).await;
    assert_eq!(
        post(&http, &server.base, submit_body(100)).await.status(),
        202
    );
    let mut stalled = held_submit(port, &submit_body(100_000), 0).await;
    assert_eq!(status_on(&mut stalled).await, 429);
    assert!(server.stop().success());
}
