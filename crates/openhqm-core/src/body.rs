//! A backend's body as a result shows it (CONTRACT.md): JSON as JSON (any
//! value, arrays and scalars included), text as `{"response",
//! "content_type"}`, binary as `{"response_base64", "content_type"}`. Pure,
//! so the forwarder that captures an answer and the record that shows an
//! answer kept as exact bytes agree.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

/// Exact body bytes kept as base64 (a passthrough answer), shown as
/// [`to_result`] shows them, by the `content-type` among the answer's
/// stored `headers`; `None` if they are not base64.
#[must_use]
pub fn shown_exact(base64: &str, headers: Option<&Map<String, Value>>) -> Option<Value> {
    let bytes = BASE64.decode(base64).ok()?;
    let content_type = headers
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        })
        .and_then(|(_, v)| match v {
            Value::Array(many) => many.first()?.as_str(),
            one => one.as_str(),
        });
    // Shown as base64 after all: the stored text is that already.
    Some(shown(content_type, &bytes, || base64.to_owned()))
}

/// The result kept for a body with this content type.
#[must_use]
pub fn to_result(content_type: Option<&str>, body: &[u8]) -> Value {
    shown(content_type, body, || BASE64.encode(body))
}

/// [`to_result`], given how to get the body's base64 should it be shown so.
fn shown(content_type: Option<&str>, body: &[u8], base64: impl FnOnce() -> String) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|e| e.trim().to_ascii_lowercase());
    let kind = essence.as_deref().map_or(Kind::Unknown, kind_of);
    if matches!(kind, Kind::Json | Kind::Unknown)
        && let Ok(v) = serde_json::from_slice::<Value>(body)
    {
        return v;
    }
    let ct = content_type.map_or(Value::Null, |c| Value::String(c.to_owned()));
    match (kind, std::str::from_utf8(body)) {
        (Kind::Json | Kind::Text | Kind::Unknown, Ok(text)) => {
            json!({"response": text, "content_type": ct})
        }
        _ => json!({
            "response_base64": base64(),
            "content_type": ct,
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Text,
    Binary,
    Unknown,
}

/// Whether a media type essence (lower-case, no parameters) is JSON:
/// `*/json` or `*/*+json`, as the CloudEvents JSON format defines it. One
/// rule for what is sent and what is captured.
pub fn is_json(essence: &str) -> bool {
    essence
        .split_once('/')
        .is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
}

fn kind_of(essence: &str) -> Kind {
    if is_json(essence) {
        Kind::Json
    } else if essence.starts_with("text/")
        || essence.ends_with("+xml")
        || matches!(
            essence,
            "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/yaml"
                | "application/graphql"
        )
    {
        Kind::Text
    } else {
        Kind::Binary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes_are_shown_by_the_stored_content_type() {
        let headers = |ct: Value| json!({"content-type": ct}).as_object().cloned();
        let json_body = BASE64.encode(b"{ \"a\" : [1] }");
        assert_eq!(
            shown_exact(&json_body, headers(json!("application/json")).as_ref()),
            Some(json!({"a": [1]}))
        );
        // A repeated header: its first value.
        assert_eq!(
            shown_exact(&json_body, headers(json!(["text/plain", "x/y"])).as_ref()),
            Some(json!({"response": "{ \"a\" : [1] }", "content_type": "text/plain"}))
        );
        assert_eq!(
            shown_exact(&BASE64.encode([0xff]), None),
            Some(json!({"response_base64": "/w==", "content_type": null}))
        );
        assert_eq!(shown_exact("not base64!", None), None);
        // Header names as a custom processor may have spelled them.
        let spelled = json!({"Content-Type": "application/octet-stream"});
        assert_eq!(
            shown_exact(&json_body, spelled.as_object()),
            Some(json!({"response_base64": json_body, "content_type": "application/octet-stream"}))
        );
    }

    fn check(ct: Option<&str>, body: &[u8], expected: Value) {
        assert_eq!(to_result(ct, body), expected, "{ct:?} {body:?}");
    }

    #[test]
    fn body_table() {
        check(Some("application/json"), b"[1,2,3]", json!([1, 2, 3]));
        check(
            Some("text/json; charset=utf-8"),
            b"{\"a\":1}",
            json!({"a": 1}),
        );
        check(Some("application/json; charset=utf-8"), b"42", json!(42));
        check(
            Some("application/problem+json"),
            br#"{"a":1}"#,
            json!({"a": 1}),
        );
        check(None, br#""s""#, json!("s"));
        check(Some("application/json"), b"", Value::Null);
        check(
            Some("application/json"),
            b"not json",
            json!({"response": "not json", "content_type": "application/json"}),
        );
        check(
            Some("text/plain"),
            b"[1]",
            json!({"response": "[1]", "content_type": "text/plain"}),
        );
        check(
            Some("application/xml"),
            b"<a/>",
            json!({"response": "<a/>", "content_type": "application/xml"}),
        );
        check(
            None,
            b"hi there",
            json!({"response": "hi there", "content_type": null}),
        );
        check(
            Some("image/png"),
            &[0x89, b'P', b'N', b'G'],
            json!({"response_base64": "iVBORw==", "content_type": "image/png"}),
        );
        check(
            Some("application/octet-stream"),
            b"abc",
            json!({"response_base64": "YWJj", "content_type": "application/octet-stream"}),
        );
        check(
            Some("text/plain"),
            &[0xff, 0xfe],
            json!({"response_base64": "//4=", "content_type": "text/plain"}),
        );
        check(
            None,
            &[0xff],
            json!({"response_base64": "/w==", "content_type": null}),
        );
    }
}
