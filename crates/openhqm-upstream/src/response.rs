//! Turning a backend's answer into a stored result.
//!
//! The body is read chunk by chunk and abandoned as soon as it passes
//! `proxy.max_response_size`, so an oversized answer never sits in memory
//! whole. What is kept follows CONTRACT.md: JSON as JSON (any value, arrays
//! and scalars included), text as `{"response", "content_type"}`, and, new,
//! binary as `{"response_base64", "content_type"}`. Headers keep every value:
//! a repeated header (`Set-Cookie`) becomes a JSON array.

use base64::Engine as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use serde_json::{Map, Value, json};

use crate::error::UpstreamError;

/// Reads the whole body, failing once it passes `limit` bytes. `bodiless`:
/// the answer has no body whatever its `Content-Length` says (the answer to
/// a `HEAD`, a 304), so the length is not held against the limit.
///
/// # Errors
/// [`UpstreamError::ResponseTooLarge`], or a network error while reading.
pub async fn read_limited(
    headers: &HeaderMap,
    bodiless: bool,
    mut incoming: Incoming,
    limit: usize,
) -> Result<Vec<u8>, UpstreamError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .filter(|_| !bodiless)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(UpstreamError::ResponseTooLarge { limit });
    }
    let mut body = Vec::with_capacity(declared.map_or(8 * 1024, |l| l as usize).min(limit));
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| UpstreamError::network(&e))?;
        // Trailers carry no body bytes.
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if body.len() + chunk.len() > limit {
            return Err(UpstreamError::ResponseTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Response headers as JSON: lower-case names, a string per single value, an
/// array of strings for a repeated header.
#[must_use]
pub fn headers_to_json(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for name in headers.keys() {
        let mut values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.swap_remove(0)
        } else {
            Value::Array(values)
        };
        out.insert(name.as_str().to_owned(), value);
    }
    out
}

/// The `Content-Type` of an answer, if it has a readable one.
#[must_use]
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// The result kept for a body with this content type.
#[must_use]
pub fn body_to_result(content_type: Option<&str>, body: &[u8]) -> Value {
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
            "response_base64": base64::engine::general_purpose::STANDARD.encode(body),
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
pub(crate) fn is_json(essence: &str) -> bool {
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
    use hyper::header::HeaderValue;

    fn check(ct: Option<&str>, body: &[u8], expected: Value) {
        assert_eq!(body_to_result(ct, body), expected, "{ct:?} {body:?}");
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

    #[test]
    fn repeated_headers_become_arrays() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.append("content-type", HeaderValue::from_static("text/plain"));
        let got = headers_to_json(&h);
        assert_eq!(got["set-cookie"], json!(["a=1", "b=2"]));
        assert_eq!(got["content-type"], json!("text/plain"));
    }
}
