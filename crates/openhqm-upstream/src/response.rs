//! Reading a backend's answer for the stored result.
//!
//! The body is read chunk by chunk and abandoned as soon as it passes
//! `proxy.max_response_size`, so an oversized answer never sits in memory
//! whole (how a body is shown is `openhqm_core::body`). Headers keep every
//! value: a repeated header (`Set-Cookie`) becomes a JSON array.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use openhqm_core::RawHeaders;
use serde_json::{Map, Value};

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
        return Err(UpstreamError::ResponseTooLarge {
            limit,
            response: None,
        });
    }
    let mut body = Vec::with_capacity(declared.map_or(8 * 1024, |l| l as usize).min(limit));
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| UpstreamError::network(&e))?;
        // Trailers carry no body bytes.
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        if body.len() + chunk.len() > limit {
            return Err(UpstreamError::ResponseTooLarge {
                limit,
                response: None,
            });
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

/// The headers [`headers_to_json`] can show only lossily, byte for byte:
/// every value (base64) of each name that has one that is not UTF-8.
#[must_use]
pub fn raw_headers(headers: &HeaderMap) -> RawHeaders {
    let mut out = RawHeaders::new();
    for name in headers.keys() {
        let values = headers.get_all(name);
        if values
            .iter()
            .any(|v| std::str::from_utf8(v.as_bytes()).is_err())
        {
            let bytes = values.iter().map(|v| BASE64.encode(v.as_bytes()));
            out.insert(name.as_str().to_owned(), bytes.collect());
        }
    }
    out
}

/// The `Content-Type` of an answer, if it has a readable one.
#[must_use]
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;
    use serde_json::json;

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

    #[test]
    fn only_headers_with_bytes_json_cannot_hold_are_kept_raw() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append(
            "set-cookie",
            HeaderValue::from_bytes(b"n=caf\xe9").expect("obs-text"),
        );
        h.append(
            "x-plain",
            HeaderValue::from_bytes("café".as_bytes()).expect("utf-8"),
        );
        let raw = raw_headers(&h);
        let cookies: Vec<Vec<u8>> = raw["set-cookie"]
            .iter()
            .map(|v| BASE64.decode(v).expect("base64"))
            .collect();
        assert_eq!(cookies, [b"a=1".to_vec(), b"n=caf\xe9".to_vec()]);
        assert_eq!(raw.len(), 1, "{raw:?}");
    }
}
