use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

const ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

/// What `policy` sends for a client's headers alone.
fn sent_for(policy: &HeaderPolicy, client: &BTreeMap<String, String>) -> Vec<OutHeader> {
    outgoing(
        policy,
        &HeaderSources {
            client: Some(client),
            derived: &BTreeMap::new(),
            endpoint: &BTreeMap::new(),
            auth: None,
            correlation_id: CorrelationId::new(),
        },
    )
}

/// Runs the policy and checks the outgoing headers other than the two the
/// forwarder always adds, which are checked separately.
fn check(
    forward: &[&str],
    strip: &[&str],
    client: &[(&str, &str)],
    endpoint: &[(&str, &str)],
    auth: Option<(&str, &str)>,
    expected: &[(&str, &str)],
) {
    let policy = HeaderPolicy::new(&strings(forward), &strings(strip));
    let client = map(client);
    let endpoint = map(endpoint);
    let auth = auth.map(|(n, v)| AuthHeader {
        name: n.into(),
        value: Secret::from(v),
    });
    let id: CorrelationId = serde_json::from_value(serde_json::json!(ID)).expect("id");
    let out = outgoing(
        &policy,
        &HeaderSources {
            client: Some(&client),
            derived: &BTreeMap::new(),
            endpoint: &endpoint,
            auth: auth.as_ref(),
            correlation_id: id,
        },
    );
    let got: Vec<(String, String)> = out
        .iter()
        .filter(|h| {
            !h.name().eq_ignore_ascii_case(CORRELATION_HEADER)
                && !h.name().eq_ignore_ascii_case(TRACEPARENT)
        })
        .map(|h| (h.name().to_owned(), h.value().to_owned()))
        .collect();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(got, want, "client {client:?}");
    let corr: Vec<&OutHeader> = out
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(CORRELATION_HEADER))
        .collect();
    assert_eq!(corr.len(), 1);
    assert_eq!(corr[0].value(), ID);
}

const DEFAULT_FWD: &[&str] = &["Content-Type", "Accept", "User-Agent"];
const DEFAULT_STRIP: &[&str] = &["Host", "Connection"];

#[test]
fn header_policy_table() {
    // Only listed headers pass, names compared case-insensitively.
    check(
        DEFAULT_FWD,
        DEFAULT_STRIP,
        &[("accept", "a/b"), ("X-Other", "1"), ("HOST", "h")],
        &[],
        None,
        &[("accept", "a/b")],
    );
    // "*" forwards everything but stripped and hop-by-hop headers.
    check(
        &["*"],
        DEFAULT_STRIP,
        &[
            ("X-Other", "1"),
            ("host", "h"),
            ("Keep-Alive", "5"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "x"),
            ("Trailer", "x"),
            ("Content-Length", "999"),
            ("Expect", "100-continue"),
        ],
        &[],
        None,
        &[("X-Other", "1")],
    );
    // Headers named by Connection are hop-by-hop too.
    check(
        &["*"],
        &[],
        &[
            ("Connection", "close, X-Private"),
            ("x-private", "p"),
            ("X-Public", "1"),
        ],
        &[],
        None,
        &[("X-Public", "1")],
    );
    // The strip list wins over the forward list.
    check(
        &["*", "Accept"],
        &["ACCEPT"],
        &[("Accept", "x")],
        &[],
        None,
        &[],
    );
    // Static headers override forwarded ones, whatever the case.
    check(
        &["*"],
        &[],
        &[("x-service", "client"), ("Accept", "a")],
        &[("X-Service", "static")],
        None,
        &[("Accept", "a"), ("X-Service", "static")],
    );
    // The auth header is injected last and overrides both.
    check(
        &["*"],
        &[],
        &[("authorization", "Bearer client")],
        &[("Authorization", "Bearer static")],
        Some(("Authorization", "Bearer endpoint")),
        &[("Authorization", "Bearer endpoint")],
    );
    // Static hop-by-hop headers are dropped as well.
    check(
        &[],
        &[],
        &[],
        &[("Upgrade", "x"), ("X-A", "1")],
        None,
        &[("X-A", "1")],
    );
    // A client cannot forge the correlation id (checked inside `check`).
    check(
        &["*"],
        &[],
        &[("x-correlation-id", "forged")],
        &[],
        None,
        &[],
    );
}

#[test]
fn traceparent_is_kept_when_valid_and_generated_otherwise() {
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (input, keep) in [
        (good, true),
        (
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            false,
        ),
        (
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            false,
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            false,
        ),
        ("garbage", false),
    ] {
        assert_eq!(valid_traceparent(input), keep, "{input}");
        let client = map(&[("TraceParent", input)]);
        let out = sent_for(&HeaderPolicy::new(&[], &[]), &client);
        let tp = out
            .iter()
            .find(|h| h.name() == TRACEPARENT)
            .map(|h| h.value().to_owned())
            .expect("traceparent");
        assert!(valid_traceparent(&tp), "{tp}");
        assert_eq!(tp == input, keep, "{input} -> {tp}");
    }
    // Stripped by the operator: a new trace starts here.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let client = map(&[("traceparent", given)]);
    let out = sent_for(
        &HeaderPolicy::new(&["*".into()], &["TraceParent".into()]),
        &client,
    );
    let sent: Vec<_> = out.iter().filter(|h| h.name() == TRACEPARENT).collect();
    assert_eq!(sent.len(), 1);
    assert_ne!(sent[0].value(), given);
    // A continued trace takes its tracestate along, even off the forward
    // list; a new trace drops one that came with the client's headers.
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let with_state = map(&[("traceparent", valid), ("TraceState", "vendor=abc")]);
    let out = sent_for(&HeaderPolicy::new(&[], &[]), &with_state);
    let state: Vec<_> = out.iter().filter(|h| h.name() == "tracestate").collect();
    assert_eq!(state.len(), 1, "{out:?}");
    assert_eq!(state[0].value(), "vendor=abc");
    // On the strip list, it stays behind while the trace goes on.
    let out = sent_for(
        &HeaderPolicy::new(&["*".into()], &["TraceState".into()]),
        &with_state,
    );
    assert!(
        out.iter()
            .any(|h| h.name() == TRACEPARENT && h.value() == valid)
    );
    assert!(
        out.iter()
            .all(|h| !h.name().eq_ignore_ascii_case("tracestate")),
        "{out:?}"
    );
    let broken = map(&[("traceparent", "00-bad"), ("tracestate", "vendor=abc")]);
    let out = sent_for(&HeaderPolicy::new(&["*".into()], &[]), &broken);
    assert!(
        out.iter()
            .all(|h| !h.name().eq_ignore_ascii_case("tracestate")),
        "{out:?}"
    );
    let id: CorrelationId = serde_json::from_value(serde_json::json!(ID)).expect("id");
    assert_eq!(
        new_traceparent(id, 0xab),
        "00-01890a5dac96774bbcceb302099a8057-00000000000000ab-01"
    );
}

/// auth type, auth_header_name, expected header
type AuthCase<'a> = (
    Option<AuthType>,
    Option<&'a str>,
    Option<(&'a str, &'a str)>,
);

#[test]
fn auth_headers_by_type() {
    let mut e = EndpointConfig::with_url("http://x");
    let cases: &[AuthCase<'_>] = &[
        (None, None, None),
        (
            Some(AuthType::Bearer),
            None,
            Some(("Authorization", "Bearer tok")),
        ),
        (Some(AuthType::ApiKey), None, Some(("X-API-Key", "tok"))),
        (
            Some(AuthType::ApiKey),
            Some("X-Key"),
            Some(("X-Key", "tok")),
        ),
        (
            Some(AuthType::Custom),
            Some("X-Auth"),
            Some(("X-Auth", "tok")),
        ),
        (Some(AuthType::Custom), None, None),
        (
            Some(AuthType::Basic),
            None,
            Some(("Authorization", "Basic dXNlcjpwYXNz")),
        ),
    ];
    e.auth_token = Secret::from("tok");
    e.auth_username = Some("user".into());
    e.auth_password = Secret::from("pass");
    for (kind, header, expected) in cases {
        e.auth_type = *kind;
        e.auth_header_name = header.map(str::to_owned);
        let got = auth_header(&e);
        let got = got.as_ref().map(|a| (a.name.as_str(), a.value.expose()));
        assert_eq!(got, *expected, "{kind:?}");
        if let Some(a) = auth_header(&e) {
            assert!(!format!("{a:?}").contains("tok"));
            assert!(!format!("{a:?}").contains("dXNlcjpwYXNz"));
        }
    }
}

#[test]
fn derived_headers_skip_the_forward_list_but_not_hop_by_hop_or_static_headers() {
    let client = map(&[("ce-id", "from-client"), ("Accept", "a")]);
    let derived = map(&[
        ("ce-id", "1"),
        ("Content-Type", "application/xml"),
        ("Connection", "close"),
        ("Host", "evil"),
        ("X-Tenant", "derived"),
    ]);
    let endpoint = map(&[("x-tenant", "static")]);
    let out = outgoing(
        &HeaderPolicy::new(&strings(&["Accept"]), &[]),
        &HeaderSources {
            client: Some(&client),
            derived: &derived,
            endpoint: &endpoint,
            auth: None,
            correlation_id: CorrelationId::new(),
        },
    );
    let got: Vec<(&str, &str)> = out
        .iter()
        .filter(|h| h.name() != CORRELATION_HEADER && h.name() != TRACEPARENT)
        .map(|h| (h.name(), h.value()))
        .collect();
    assert_eq!(
        got,
        [
            ("Accept", "a"),
            ("Content-Type", "application/xml"),
            ("ce-id", "1"),
            ("x-tenant", "static"),
        ]
    );
}
