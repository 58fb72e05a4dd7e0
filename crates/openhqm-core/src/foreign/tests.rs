use super::*;

const QUEUE: &str = "openhqm-requests";

fn decoder(format: MessageFormat) -> Decoder {
    Decoder {
        format,
        queue: QUEUE.into(),
        endpoint: Some("events".into()),
        attribute_headers: [("type", "X-Event-Type"), ("tenant", "X-Tenant")]
            .into_iter()
            .map(|(a, h)| (a.to_owned(), h.to_owned()))
            .collect(),
    }
}

/// What a decoded message forwards: its shape, body bytes and headers.
#[derive(Debug, PartialEq)]
struct Forward {
    shape: Shape,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

fn forward(shape: Shape, body: &str, headers: &[(&str, &str)]) -> Forward {
    Forward {
        shape,
        body: body.as_bytes().to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn run(
    format: MessageFormat,
    body: &str,
    attributes: &[(&str, &str)],
) -> Result<(Forward, Envelope), String> {
    let attributes: BTreeMap<String, String> = attributes
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let m = Incoming {
        id: "1700000000000-0",
        body: body.as_bytes(),
        attributes: &attributes,
    };
    let d = decoder(format).decode(&m).map_err(|e| e.to_string())?;
    let env = d.envelope;
    let body = match &env.raw_body {
        Some(b64) => BASE64.decode(b64).map_err(|e| e.to_string())?,
        None => env.payload.get().as_bytes().to_vec(),
    };
    let headers = env
        .derived_headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((
        Forward {
            shape: d.shape,
            body,
            headers,
        },
        env,
    ))
}

/// Decodes and compares what would be forwarded, or the error's text.
fn check(
    format: MessageFormat,
    body: &str,
    attributes: &[(&str, &str)],
    expected: Result<Forward, &str>,
) {
    match (run(format, body, attributes), expected) {
        (Ok((got, _)), Ok(want)) => assert_eq!(got, want, "{body}"),
        (Err(got), Err(want)) => assert!(got.contains(want), "{body}: {got}"),
        (got, want) => panic!("{body}: got {:?}, want {want:?}", got.map(|g| g.0)),
    }
}

const CE: &str = r#""specversion":"1.0","id":"A-1","source":"/orders","type":"order.created""#;

fn ce_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("X-Event-Type", "order.created"),
        ("ce-id", "A-1"),
        ("ce-source", "/orders"),
        ("ce-specversion", "1.0"),
        ("ce-type", "order.created"),
    ];
    h.extend_from_slice(extra);
    h.sort_unstable();
    h
}

#[test]
fn structured_cloudevents_become_binary_mode_http() {
    use MessageFormat::{Auto, Cloudevents};
    use Shape::CloudEventStructured as S;
    let json = [("Content-Type", "application/json")];
    for format in [Cloudevents, Auto] {
        check(
            format,
            &format!(r#"{{{CE},"data":{{"n":1}}}}"#),
            &[],
            Ok(forward(S, r#"{"n":1}"#, &ce_headers(&json))),
        );
        // A JSON string stays a JSON string (quoted) under a JSON type.
        check(
            format,
            &format!(r#"{{{CE},"data":"hi"}}"#),
            &[],
            Ok(forward(S, r#""hi""#, &ce_headers(&json))),
        );
    }
    let xml = [("Content-Type", "application/xml")];
    check(
        Cloudevents,
        &format!(r#"{{{CE},"datacontenttype":"application/xml","data":"<a x=\"1\"/>"}}"#),
        &[],
        Ok(forward(S, r#"<a x="1"/>"#, &ce_headers(&xml))),
    );
    let bin = [("Content-Type", "application/octet-stream")];
    check(
        Cloudevents,
        &format!(
            r#"{{{CE},"datacontenttype":"application/octet-stream","data_base64":"AAEC/w=="}}"#
        ),
        &[],
        Ok(Forward {
            body: vec![0, 1, 2, 255],
            ..forward(S, "", &ce_headers(&bin))
        }),
    );
    // Extensions, nulls and percent-encoding of header values.
    check(
        Cloudevents,
        &format!(
            r#"{{{CE},"subject":"a b\"%é","time":"2026-01-02T03:04:05.6+01:00","tenant":"acme","n":5,"ok":true,"dataschema":null}}"#
        ),
        &[],
        Ok(forward(
            S,
            "",
            &ce_headers(&[
                ("X-Tenant", "acme"),
                ("ce-n", "5"),
                ("ce-ok", "true"),
                ("ce-subject", "a%20b%22%25%C3%A9"),
                ("ce-tenant", "acme"),
                ("ce-time", "2026-01-02T03:04:05.6+01:00"),
            ]),
        )),
    );
}

#[test]
fn invalid_cloudevents_say_what_is_wrong() {
    let cases = [
        (
            r#"{"id":"1","source":"/s","type":"t"}"#,
            "`specversion` is missing",
        ),
        (
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            "not supported",
        ),
        (
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#,
            "`id` is missing",
        ),
        (
            r#"{"specversion":"1.0","id":"1","type":"t"}"#,
            "`source` is missing",
        ),
        (
            r#"{"specversion":"1.0","id":"1","source":"/s"}"#,
            "`type` is missing",
        ),
        (
            r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
            "`id` must not be empty",
        ),
        (
            r#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#,
            "`id` must be a string",
        ),
        (
            &format!(r#"{{{CE},"data":1,"data_base64":"AA=="}}"#),
            "must not both",
        ),
        (&format!(r#"{{{CE},"data_base64":"***"}}"#), "not base64"),
        (&format!(r#"{{{CE},"data_base64":5}}"#), "must be a string"),
        (
            &format!(r#"{{{CE},"datacontenttype":"text/plain","data":{{}}}}"#),
            "must be a string when",
        ),
        (
            &format!(r#"{{{CE},"datacontenttype":"plain"}}"#),
            "not a media type",
        ),
        (&format!(r#"{{{CE},"time":"yesterday"}}"#), "RFC 3339"),
        (
            &format!(r#"{{{CE},"Bad-Name":"x"}}"#),
            "lowercase letters and digits",
        ),
        (
            &format!(r#"{{{CE},"ext":{{"a":1}}}}"#),
            "a string, a boolean or an integer",
        ),
        (&format!(r#"{{{CE},"ext":1.5}}"#), "32-bit integer"),
        ("[1,2]", "not a JSON object"),
        ("not json", "not a JSON object"),
    ];
    for (body, reason) in cases {
        check(MessageFormat::Cloudevents, body, &[], Err(reason));
    }
}

#[test]
fn binary_cloudevents_take_attributes_from_the_message() {
    use Shape::CloudEventBinary as B;
    let attrs = [
        ("ce_specversion", "1.0"),
        ("ce_id", "A-1"),
        ("CE-Source", "/orders"),
        ("ce_type", "order.created"),
        ("content-type", "application/json; charset=utf-8"),
        ("tenant", "acme"),
    ];
    let headers = ce_headers(&[
        ("Content-Type", "application/json; charset=utf-8"),
        ("X-Tenant", "acme"),
    ]);
    for format in [MessageFormat::Cloudevents, MessageFormat::Auto] {
        check(
            format,
            r#"{"n":1}"#,
            &attrs,
            Ok(forward(B, r#"{"n":1}"#, &headers)),
        );
    }
    let text = [
        ("ce_specversion", "1.0"),
        ("ce_id", "A-1"),
        ("ce_source", "/orders"),
        ("ce_type", "order.created"),
        ("content_type", "text/plain"),
    ];
    let headers = ce_headers(&[("Content-Type", "text/plain")]);
    check(
        MessageFormat::Cloudevents,
        "{not json",
        &text,
        Ok(forward(B, "{not json", &headers)),
    );
    check(
        MessageFormat::Cloudevents,
        "{}",
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "A-1"),
            ("ce_type", "t"),
        ],
        Err("`source` is missing"),
    );
    check(
        MessageFormat::Cloudevents,
        "{}",
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "1"),
            ("ce_source", "s"),
            ("ce_type", "t"),
            ("ce_my-ext", "x"),
        ],
        Err("lowercase letters and digits"),
    );
}

#[test]
fn raw_messages_forward_their_body() {
    use MessageFormat::{Auto, Raw};
    let json = [("Content-Type", "application/json")];
    for format in [Raw, Auto] {
        for body in [r#"{"order":7}"#, "[1,2]", "42", r#""text""#, "null"] {
            check(format, body, &[], Ok(forward(Shape::Raw, body, &json)));
        }
        // Attributes map to headers only where configured.
        check(
            format,
            "{}",
            &[("tenant", "acme\u{1}"), ("other", "x")],
            Ok(forward(
                Shape::Raw,
                "{}",
                &[
                    ("Content-Type", "application/json"),
                    ("X-Tenant", "acme%01"),
                ],
            )),
        );
    }
    // A declared non-JSON type keeps the bytes exactly, JSON-looking or not.
    let xml = [("Content-Type", "text/plain")];
    check(
        Raw,
        r#""hi""#,
        &[("content-type", "text/plain")],
        Ok(forward(Shape::Raw, r#""hi""#, &xml)),
    );
    check(
        Raw,
        "<a/>",
        &[("content-type", "text/plain")],
        Ok(forward(Shape::Raw, "<a/>", &xml)),
    );
    check(Raw, "<a/>", &[], Err("not JSON and no `content-type`"));
    // `raw` never looks inside: an envelope-shaped body is forwarded whole.
    let env = r#"{"correlation_id":"x","payload":1}"#;
    check(Raw, env, &[], Ok(forward(Shape::Raw, env, &json)));
}

#[test]
fn envelopes_decode_as_before_and_auto_recognises_them() {
    let id = CorrelationId::new();
    let env = format!(
        r#"{{"correlation_id":"{id}","payload":{{"x":1}},"metadata":{{"endpoint":"mine"}}}}"#
    );
    for format in [MessageFormat::Envelope, MessageFormat::Auto] {
        let (f, e) = run(format, &env, &[]).expect("envelope");
        assert_eq!((f.shape, e.correlation_id), (Shape::Envelope, id));
        assert_eq!(e.metadata.endpoint.as_deref(), Some("mine"));
        assert!(e.derived_headers.is_empty());
    }
    check(
        MessageFormat::Envelope,
        r#"{"x":1}"#,
        &[],
        Err("malformed envelope: missing field"),
    );
    check(
        MessageFormat::Envelope,
        &format!(r#"{{{CE}}}"#),
        &[],
        Err("malformed envelope"),
    );
    // A broken envelope is still an envelope under `auto`: dead-lettered, not forwarded.
    check(
        MessageFormat::Auto,
        r#"{"correlation_id":17,"payload":1}"#,
        &[],
        Err("malformed envelope"),
    );
    // A producer's own id that is not a UUID is its request's name.
    let (f, e) = run(
        MessageFormat::Auto,
        r#"{"correlation_id":"order-17","payload":1}"#,
        &[],
    )
    .expect("envelope");
    assert_eq!(
        (f.shape, e.correlation_id),
        (Shape::Envelope, CorrelationId::from_text("order-17"))
    );
    // Structured mode is recognised by content type too.
    check(
        MessageFormat::Auto,
        r#"{"id":"1"}"#,
        &[("content-type", "application/cloudevents+json")],
        Err("`specversion` is missing"),
    );
}

#[test]
fn foreign_messages_get_stable_ids_and_the_configured_endpoint() {
    let ce = format!(r#"{{{CE},"data":1}}"#);
    let (_, a) = run(MessageFormat::Cloudevents, &ce, &[]).expect("ce");
    let (_, b) = run(MessageFormat::Auto, &ce, &[]).expect("ce");
    assert_eq!(
        a.correlation_id, b.correlation_id,
        "a redelivery is the same request"
    );
    let name = "ce:7:/ordersA-1";
    assert_eq!(a.correlation_id, CorrelationId::derived(name.as_bytes()));
    assert_eq!(a.metadata.endpoint.as_deref(), Some("events"));
    let other = format!(r#"{{{},"data":1}}"#, CE.replace("A-1", "A-2"));
    let (_, c) = run(MessageFormat::Cloudevents, &other, &[]).expect("ce");
    assert_ne!(a.correlation_id, c.correlation_id);

    let (_, raw) = run(MessageFormat::Raw, "{}", &[]).expect("raw");
    let expected = format!("msg:{}:{QUEUE}1700000000000-0", QUEUE.len());
    assert_eq!(
        raw.correlation_id,
        CorrelationId::derived(expected.as_bytes())
    );
    assert_eq!(
        raw.correlation_id,
        decoder(MessageFormat::Raw).raw_id("1700000000000-0")
    );
    // The documented value, so producers can compute it too.
    assert_eq!(
        CorrelationId::derived(b"ce:7:/ordersA-1").to_string(),
        "1e1a1b82-02a9-5a03-855c-742fcb0de0f5",
    );
}
