//! Forwarding against real backends: auth, headers, bodies and outcomes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::any;
use common::*;
use openhqm_core::{FailureKind, Secret};
use openhqm_upstream::{AuthType, EndpointConfig, UpstreamConfig};
use serde_json::json;

async fn echo_endpoint() -> EndpointConfig {
    EndpointConfig::with_url(url(serve(echo()).await))
}

#[tokio::test]
async fn every_auth_type_injects_its_header() {
    let base = echo_endpoint().await;
    let cases: [(AuthType, Option<&str>, &str, &str); 5] = [
        (AuthType::Bearer, None, "authorization", "Bearer s3cret"),
        (
            AuthType::Basic,
            None,
            "authorization",
            "Basic dXNlcjpzM2NyZXQ=",
        ),
        (AuthType::ApiKey, None, "x-api-key", "s3cret"),
        (AuthType::ApiKey, Some("X-Key"), "x-key", "s3cret"),
        (
            AuthType::Custom,
            Some("X-Custom-Auth"),
            "x-custom-auth",
            "s3cret",
        ),
    ];
    for (kind, header, seen_name, seen_value) in cases {
        let mut e = base.clone();
        e.auth_type = Some(kind);
        e.auth_header_name = header.map(str::to_owned);
        if kind == AuthType::Basic {
            e.auth_username = Some("user".into());
            e.auth_password = Secret::from("s3cret");
        } else {
            e.auth_token = Secret::from("s3cret");
        }
        let p = processor(&config(e));
        let out = call(&p, &envelope("{}", &[])).await.unwrap();
        assert_eq!(
            seen_headers(&out).get(seen_name).map(String::as_str),
            Some(seen_value),
            "{kind:?}"
        );
        // Secrets never show in Debug output.
        assert!(!format!("{p:?}").contains("s3cret"), "{kind:?}");
        assert!(!format!("{p:?}").contains("dXNlcjpzM2NyZXQ="), "{kind:?}");
    }
}

#[tokio::test]
async fn user_info_in_a_target_url_is_sent_as_basic_auth_unless_auth_is_configured() {
    let addr = serve(echo()).await;
    let e = EndpointConfig::with_url(format!("http://svc%40corp:p%3Ass@{addr}/"));
    let out = call(&processor(&config(e.clone())), &envelope("{}", &[]))
        .await
        .unwrap();
    // base64("svc@corp:p:ss"): decoded from the URL, as curl sends it.
    assert_eq!(
        seen_headers(&out).get("authorization").map(String::as_str),
        Some("Basic c3ZjQGNvcnA6cDpzcw==")
    );
    let mut configured = e;
    configured.auth_type = Some(AuthType::Bearer);
    configured.auth_token = Secret::from("endpoint-token");
    let out = call(&processor(&config(configured)), &envelope("{}", &[]))
        .await
        .unwrap();
    assert_eq!(
        seen_headers(&out).get("authorization").map(String::as_str),
        Some("Bearer endpoint-token")
    );
}

#[tokio::test]
async fn the_idempotency_key_is_passed_on_unless_stripped_and_a_get_has_no_content_type() {
    let e = echo_endpoint().await;
    let mut env = envelope("{}", &[]);
    env.idempotency_key = Some("order-7".into());
    let out = call(&processor(&config(e.clone())), &env).await.unwrap();
    assert_eq!(
        seen_headers(&out)
            .get("idempotency-key")
            .map(String::as_str),
        Some("order-7")
    );
    let mut stripping = config(e);
    stripping.strip_headers.push("Idempotency-Key".into());
    env.metadata.method = Some("GET".into());
    let out = call(&processor(&stripping), &env).await.unwrap();
    let seen = seen_headers(&out);
    assert!(!seen.contains_key("idempotency-key"), "{seen:?}");
    assert!(
        !seen.contains_key("content-type"),
        "no body, no type: {seen:?}"
    );
}

#[tokio::test]
async fn headers_follow_precedence_case_insensitively_and_drop_hop_by_hop() {
    let mut e = echo_endpoint().await;
    e.headers.insert("x-service".into(), "static".into());
    e.headers
        .insert("Authorization".into(), "Bearer static".into());
    e.auth_type = Some(AuthType::Bearer);
    e.auth_token = Secret::from("endpoint-token");
    let mut cfg = config(e);
    cfg.forward_headers = vec![
        "accept".into(),
        "X-SERVICE".into(),
        "x-client".into(),
        "authorization".into(),
        "Keep-Alive".into(),
        "Upgrade".into(),
        "x-private".into(),
    ];
    cfg.strip_headers = vec!["X-Client".into()];
    let p = processor(&cfg);
    let env = envelope(
        r#"{"a":1}"#,
        &[
            ("Accept", "text/csv"),
            ("X-Service", "client"),
            ("X-Client", "stripped"),
            ("Authorization", "Bearer client"),
            ("Keep-Alive", "timeout=5"),
            ("Upgrade", "websocket"),
            ("Connection", "x-private"),
            ("X-Private", "named-by-connection"),
            ("X-Unlisted", "nope"),
        ],
    );
    let out = call(&p, &env).await.unwrap();
    let seen = seen_headers(&out);
    assert_eq!(seen["accept"], "text/csv");
    assert_eq!(seen["x-service"], "static");
    assert_eq!(seen["authorization"], "Bearer endpoint-token");
    assert_eq!(seen["content-type"], "application/json");
    assert_eq!(seen["x-correlation-id"], env.correlation_id.to_string());
    assert!(seen["traceparent"].starts_with("00-"), "{seen:?}");
    for absent in [
        "x-client",
        "keep-alive",
        "upgrade",
        "x-private",
        "x-unlisted",
    ] {
        assert!(!seen.contains_key(absent), "{absent} leaked: {seen:?}");
    }
}

#[tokio::test]
async fn star_forwards_everything_and_payload_is_verbatim_with_method_override() {
    let mut cfg = config(echo_endpoint().await);
    cfg.forward_headers = vec!["*".into()];
    let p = processor(&cfg);
    let payload = r#"{ "keep":  "spacing", "n": 1.50 }"#;
    let mut env = envelope(
        payload,
        &[
            ("X-Anything", "1"),
            ("Content-Type", "application/vnd.x+json"),
            ("Host", "evil"),
        ],
    );
    env.metadata.method = Some("put".into());
    let out = call(&p, &env).await.unwrap();
    assert_eq!(out.result["body"], payload);
    assert_eq!(out.result["method"], "PUT");
    let seen = seen_headers(&out);
    assert_eq!(seen["x-anything"], "1");
    assert_eq!(seen["content-type"], "application/vnd.x+json");
    assert_ne!(seen["host"], "evil");
    assert_eq!(out.status_code, Some(200));
}

#[tokio::test]
async fn response_bodies_are_kept_by_content_type() {
    let big = vec![b'x'; 4096];
    let router = Router::new()
        .route(
            "/array",
            any(|| async { answer(200, &[("content-type", "application/json")], "[1,2,3]") }),
        )
        .route(
            "/text",
            any(|| async { answer(200, &[("content-type", "text/plain")], "hello") }),
        )
        .route(
            "/binary",
            any(|| async {
                answer(
                    200,
                    &[("content-type", "image/png")],
                    vec![0x89u8, 0x50, 0x4e, 0x47],
                )
            }),
        )
        .route(
            "/cookies",
            any(|| async { answer(201, &[("set-cookie", "a=1"), ("set-cookie", "b=2")], "") }),
        )
        .route(
            "/big",
            any(move || {
                let big = big.clone();
                async move { answer(200, &[], big) }
            }),
        )
        .route(
            "/stream",
            any(|| async {
                // No Content-Length: the limit must hold while streaming.
                let chunks = futures::stream::iter(
                    (0..64).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 1024])),
                );
                answer(200, &[], axum::body::Body::from_stream(chunks))
            }),
        );
    let addr = serve(router).await;
    let mut cfg = UpstreamConfig {
        max_response_size: 2048,
        ..UpstreamConfig::default()
    };
    for path in ["array", "text", "binary", "cookies", "big", "stream"] {
        cfg.endpoints.insert(
            path.into(),
            EndpointConfig::with_url(format!("http://{addr}/{path}")),
        );
    }
    let p = processor(&cfg);
    let run = |name: &str| {
        let mut env = envelope("{}", &[]);
        env.metadata.endpoint = Some(name.into());
        env
    };
    let out = call(&p, &run("array")).await.unwrap();
    assert_eq!(out.result, json!([1, 2, 3]));
    let out = call(&p, &run("text")).await.unwrap();
    assert_eq!(
        out.result,
        json!({"response": "hello", "content_type": "text/plain"})
    );
    let out = call(&p, &run("binary")).await.unwrap();
    assert_eq!(
        out.result,
        json!({"response_base64": "iVBORw==", "content_type": "image/png"})
    );
    let out = call(&p, &run("cookies")).await.unwrap();
    assert_eq!(out.status_code, Some(201));
    assert_eq!(out.headers.unwrap()["set-cookie"], json!(["a=1", "b=2"]));
    // A HEAD's answer has no body, whatever length it announces.
    let mut head = run("big");
    head.metadata.method = Some("HEAD".into());
    let out = call(&p, &head).await.unwrap();
    assert_eq!(out.status_code, Some(200));
    assert_eq!(
        out.headers.unwrap()["content-length"],
        json!((4 * 1024).to_string()),
        "the announced length is kept"
    );
    for name in ["big", "stream"] {
        let err = call(&p, &run(name)).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Permanent, "{name}");
        assert!(
            err.message.contains("max_response_size (2048 bytes)"),
            "{name}: {}",
            err.message
        );
        // What the backend said stays visible; the body it could not keep does not.
        let last = err.response.as_deref().expect("the answer's head is kept");
        assert_eq!(last.status_code, 200, "{name}");
        assert_eq!(last.body, serde_json::Value::Null, "{name}");
    }
}

/// `max_response_size` holds while the body is read: a backend that sends
/// one byte past the limit and then stalls, never ending its body, fails
/// the forward at once, not at the endpoint's timeout.
#[tokio::test]
async fn a_body_past_the_limit_fails_at_once_though_it_never_ends() {
    use futures::StreamExt as _;
    const LIMIT: usize = 2048;
    let router = Router::new().fallback(|| async {
        let sent = [vec![b'y'; LIMIT], vec![b'y']].map(Ok::<_, std::io::Error>);
        let stalled = futures::stream::iter(sent).chain(futures::stream::pending());
        answer(200, &[], axum::body::Body::from_stream(stalled))
    });
    let mut e = EndpointConfig::with_url(url(serve(router).await));
    e.timeout = 60;
    let cfg = UpstreamConfig {
        max_response_size: LIMIT,
        ..config(e)
    };
    let p = processor(&cfg);
    let env = envelope("{}", &[]);
    let started = std::time::Instant::now();
    let forward = call_within(&p, &env, Duration::from_secs(60));
    let err = tokio::time::timeout(Duration::from_secs(10), forward)
        .await
        .expect("cut off well before the 60 s timeout")
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{}", err.message);
    assert!(
        err.message.contains("max_response_size (2048 bytes)"),
        "{}",
        err.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn statuses_are_delivered_or_retried_with_retry_after() {
    let router = Router::new()
        .route(
            "/missing",
            any(|| async {
                answer(
                    404,
                    &[("content-type", "application/json")],
                    r#"{"error":"nope"}"#,
                )
            }),
        )
        .route(
            "/busy",
            any(|| async { answer(503, &[("retry-after", "7")], "overloaded") }),
        )
        .route(
            "/slow",
            any(|| async { answer(429, &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], "") }),
        );
    let addr = serve(router).await;
    let mut cfg = UpstreamConfig::default();
    for path in ["missing", "busy", "slow"] {
        cfg.endpoints.insert(
            path.into(),
            EndpointConfig::with_url(format!("http://{addr}/{path}")),
        );
    }
    let p = processor(&cfg);
    let run = |name: &str| {
        let mut env = envelope("{}", &[]);
        env.metadata.endpoint = Some(name.into());
        env
    };
    let out = call(&p, &run("missing")).await.unwrap();
    assert_eq!(out.status_code, Some(404));
    assert_eq!(out.result, json!({"error": "nope"}));
    let err = call(&p, &run("busy")).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transient);
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    assert!(
        err.message.contains("503") && err.message.contains("overloaded"),
        "{}",
        err.message
    );
    let last = err.response.as_deref().expect("the 503 answer is kept");
    assert_eq!(last.status_code, 503);
    assert_eq!(last.headers["retry-after"], "7");
    assert_eq!(last.body["response"], "overloaded");
    // An HTTP-date in the past means "retry now".
    let err = call(&p, &run("slow")).await.unwrap_err();
    assert_eq!(err.retry_after, Some(Duration::ZERO));
}

#[tokio::test]
async fn raw_bodies_keep_their_bytes_and_content_type() {
    let p = processor(&config(echo_endpoint().await));
    // A JSON string sent as XML goes as the XML text, not as a quoted string.
    let xml = r#"<order id="7">café</order>"#;
    let payload = serde_json::to_string(xml).unwrap();
    let env = envelope(&payload, &[("Content-Type", "text/xml")]);
    let out = call(&p, &env).await.unwrap();
    assert_eq!(out.result["body"], xml);
    assert_eq!(seen_headers(&out)["content-type"], "text/xml");
    // Under a JSON content type the same string stays a JSON string.
    let env = envelope(r#""just text""#, &[]);
    let out = call(&p, &env).await.unwrap();
    assert_eq!(out.result["body"], r#""just text""#);
    // Exact bytes recorded as raw_body are sent verbatim.
    let mut env = envelope("null", &[("Content-Type", "text/plain")]);
    env.raw_body = Some("aGVsbG8sIHJhdyB3b3JsZA==".into());
    let out = call(&p, &env).await.unwrap();
    assert_eq!(out.result["body"], "hello, raw world");
    // Without a type of their own they get none: they need not be JSON.
    let mut untyped = envelope("null", &[]);
    untyped.raw_body = Some("PHhtbC8+".into());
    let out = call(&p, &untyped)
        .await
        .expect("forwarded without a content type");
    assert_eq!(out.result["body"], "<xml/>");
    assert!(!seen_headers(&out).contains_key("content-type"), "{out:?}");
    env.raw_body = Some("not base64!".into());
    let err = call(&p, &env).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent);
}

#[tokio::test]
async fn network_errors_and_timeouts_are_retryable_and_carry_no_secrets() {
    // A port that was just free: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let slow = serve(Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        "late"
    }))
    .await;
    let mut cfg = UpstreamConfig::default();
    let mut refused =
        EndpointConfig::with_url(format!("http://user:pw-secret@{dead}/?api_key=q-secret"));
    refused.auth_type = Some(AuthType::Bearer);
    refused.auth_token = Secret::from("tok-secret");
    cfg.endpoints.insert("refused".into(), refused);
    let mut timeout = EndpointConfig::with_url(url(slow));
    timeout.timeout = 1;
    cfg.endpoints.insert("slow".into(), timeout);
    let p = processor(&cfg);
    let mut env = envelope("{}", &[]);
    env.metadata.endpoint = Some("refused".into());
    let err = call(&p, &env).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transient, "{}", err.message);
    for secret in ["pw-secret", "q-secret", "tok-secret"] {
        assert!(!err.message.contains(secret), "{}", err.message);
        assert!(!format!("{p:?}").contains("tok-secret"));
    }
    env.metadata.endpoint = Some("slow".into());
    let started = std::time::Instant::now();
    let err = call(&p, &env).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Timeout, "{}", err.message);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn unknown_or_missing_endpoint_is_permanent_and_default_url_works() {
    let addr = serve(echo()).await;
    let p = processor(&UpstreamConfig::default());
    let mut env = envelope("{}", &[]);
    env.metadata.endpoint = Some("nope".into());
    let err = call(&p, &env).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(err.message.contains("unknown proxy endpoint `nope`"));
    assert!(!p.has_endpoint("nope"));
    env.metadata.endpoint = None;
    assert_eq!(
        call(&p, &env).await.unwrap_err().kind,
        FailureKind::Permanent
    );
    let cfg = UpstreamConfig {
        default_endpoint: Some(format!("http://{addr}/base")),
        ..UpstreamConfig::default()
    };
    let p = processor(&cfg);
    let out = call(&p, &env).await.unwrap();
    assert_eq!(out.result["path"], "/base");
    assert_eq!(out.result["method"], "POST");
}

#[tokio::test]
async fn request_path_and_query_are_rewritten_onto_the_target() {
    let mut e = EndpointConfig::with_url(format!("http://{}/svc", serve(echo()).await));
    e.path_rewrite = Some(openhqm_upstream::PathRewrite {
        strip_prefix: Some("/api".into()),
        ..Default::default()
    });
    let p = processor(&config(e));
    let mut env = envelope("{}", &[]);
    env.metadata
        .extra
        .insert("path".into(), json!("/api/orders/7"));
    env.metadata.extra.insert("query".into(), json!("x=1"));
    let out = call(&p, &env).await.unwrap();
    assert_eq!(out.result["path"], "/svc/orders/7");
    assert_eq!(out.result["query"], "x=1");
}

#[tokio::test]
async fn encoded_slashes_pass_as_sent_and_only_a_climb_out_is_refused() {
    let p = processor(&config(echo_endpoint().await));
    let mut env = envelope("{}", &[]);
    env.passthrough = true;
    env.metadata.method = Some("GET".into());
    let path = "/api/v4/projects/group%2Fsub%2Fproject/files/a%5Cb";
    env.metadata.extra.insert("path".into(), json!(path));
    let out = call(&p, &env).await.unwrap();
    assert_eq!(out.shown_result()["path"], path, "the bytes as sent");
    // A path that would climb out once the backend decodes `%2F`: the
    // caller's fault, refused for good and without a forward.
    env.metadata
        .extra
        .insert("path".into(), json!("/files/..%2F..%2Fadmin"));
    let err = call(&p, &env).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent);
    assert!(err.message.contains("climbs out"), "{}", err.message);
    assert!(err.response.is_none(), "no backend answer to report");
}

#[tokio::test]
async fn an_empty_body_goes_with_content_length_zero_where_a_body_is_expected() {
    let p = processor(&config(echo_endpoint().await));
    for (method, length) in [
        ("POST", Some("0")),
        ("PUT", Some("0")),
        ("PATCH", Some("0")),
        ("GET", None),
        ("DELETE", None),
        ("OPTIONS", None),
    ] {
        let mut env = envelope("null", &[]);
        env.passthrough = true;
        env.raw_body = Some(String::new());
        env.metadata.method = Some(method.into());
        let out = call(&p, &env).await.unwrap();
        let seen = seen_headers(&out);
        assert_eq!(
            seen.get("content-length").map(String::as_str),
            length,
            "{method}: {seen:?}"
        );
        assert!(
            !seen.contains_key("transfer-encoding"),
            "{method}: {seen:?}"
        );
    }
    // Outside passthrough: a JSON string sent as text can be empty too.
    let env = envelope(r#""""#, &[("Content-Type", "text/plain")]);
    let seen = seen_headers(&call(&p, &env).await.unwrap());
    assert_eq!(seen.get("content-length").map(String::as_str), Some("0"));
}

#[tokio::test]
async fn a_secret_echoed_in_an_error_page_is_masked_in_the_error() {
    // An error page that prints the request it got, auth header included.
    let addr = serve(
        Router::new().fallback(|req: axum::extract::Request| async move {
            let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
            answer(
                500,
                &[("content-type", "text/plain")],
                format!("oops; authorization: {auth}"),
            )
        }),
    )
    .await;
    let mut e = EndpointConfig::with_url(url(addr));
    e.auth_type = Some(AuthType::Bearer);
    e.auth_token = Secret::from("supersecret123");
    let p = processor(&config(e));
    let err = call(&p, &envelope("{}", &[])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Transient);
    assert!(!err.message.contains("supersecret123"), "{}", err.message);
    assert!(
        err.message.ends_with("authorization: ***"),
        "{}",
        err.message
    );
}

/// An answer whose head hyper cannot read (here 101 `Set-Cookie` headers,
/// past its 100) fails the request for good, saying why: the backend ran
/// it, so sending it again would only run it again.
#[tokio::test]
async fn an_answer_head_too_large_to_read_is_permanent_and_sent_once() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&hits);
    let router = Router::new().fallback(move || {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            let cookies: Vec<(String, String)> = (0..101)
                .map(|i| ("set-cookie".to_owned(), format!("c{i}=1")))
                .collect();
            let headers: Vec<(&str, &str)> = cookies
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            answer(200, &headers, "{}")
        }
    });
    let p = processor(&config(EndpointConfig::with_url(url(serve(router).await))));
    let err = call(&p, &envelope("{}", &[])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{}", err.message);
    assert!(
        err.message.contains("response head is too large"),
        "{}",
        err.message
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A transfer coding hyper does not remove (`gzip` under `chunked`) would
/// leave the body stored still coded, with no header saying so: the request
/// fails for good, saying why and keeping the answer's head, where nginx
/// answers 502. An answer without a body (to a HEAD) has nothing to misread
/// and is kept. The backend is a raw socket: hyper's own server would not
/// frame an answer that way.
#[tokio::test]
async fn an_answer_in_a_transfer_coding_other_than_chunked_is_permanent() {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        for mut socket in listener.incoming().map_while(Result::ok) {
            let mut request = vec![0; 64 * 1024];
            let n = socket.read(&mut request).unwrap_or(0);
            seen.fetch_add(1, Ordering::SeqCst);
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-app: 1\r\n\
                transfer-encoding: gzip, chunked\r\n\r\n";
            let body = if request[..n].starts_with(b"HEAD ") {
                ""
            } else {
                "5\r\nhello\r\n0\r\n\r\n"
            };
            let _ = socket.write_all(format!("{head}{body}").as_bytes());
        }
    });
    let p = processor(&config(EndpointConfig::with_url(format!("http://{addr}"))));
    let err = call(&p, &envelope("{}", &[])).await.unwrap_err();
    assert_eq!(err.kind, FailureKind::Permanent, "{}", err.message);
    assert!(
        err.message
            .contains("transfer coding `gzip` is not supported"),
        "{}",
        err.message
    );
    let last = err.response.as_deref().expect("the answer's head is kept");
    assert_eq!(last.status_code, 200);
    assert_eq!(last.headers["x-app"], "1");
    assert_eq!(last.body, serde_json::Value::Null, "its body is not");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "sent once");

    let mut head = envelope("{}", &[]);
    head.metadata.method = Some("HEAD".into());
    let out = call(&p, &head).await.expect("a bodiless answer is kept");
    assert_eq!(out.status_code, Some(200));
}
