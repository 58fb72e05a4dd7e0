//! `Idempotency-Key` (IETF draft-ietf-httpapi-idempotency-key-header).
//!
//! A key is scoped to the caller's identity: the store key is a SHA-256 of
//! the identity header's value (by default `Authorization`) and the key, so
//! two callers cannot collide and no credential is ever stored. The
//! fingerprint is a SHA-256 of what was asked (method, path, query, body), so
//! reusing a key for a different request is caught (422).
//!
//! What a repeat gets, by the state of the first request:
//! - accepted: the same correlation id, and the same 202 (or, on the
//!   passthrough path, the same wait for the same answer); once finished,
//!   the same result;
//! - still being accepted (a concurrent duplicate): 409 with `Retry-After`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use ring::digest::{Context, SHA256};

use crate::Problem;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// Longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// Settings of idempotency keys.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// How long a key is remembered.
    pub ttl: Duration,
    /// The header that identifies the caller; keys are scoped by its value.
    pub identity_header: HeaderName,
}

/// A request's key, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Keyed {
    /// The store key: scope and key, hashed.
    pub digest: String,
    /// What was asked, hashed.
    pub fingerprint: String,
}

/// The request's key, to deduplicate on, if it sent one and says who it is.
/// `parts` are what the fingerprint covers.
///
/// A caller without the identity header is not deduplicated here (its key
/// still reaches the backend): anonymous callers would otherwise share one
/// scope, and one could replay another's answer by guessing its key.
pub(crate) fn keyed(
    config: &IdempotencyConfig,
    headers: &HeaderMap,
    parts: &[&[u8]],
) -> Result<Option<Keyed>, Problem> {
    let mut lines = headers.get_all(HEADER).iter();
    let Some(raw) = lines.next() else {
        return Ok(None);
    };
    // The field is one structured-field Item: several lines are no key, and
    // taking one of them would deduplicate on a key the client did not mean.
    if lines.next().is_some() {
        return Err(Problem::invalid_idempotency_key(
            "the header is sent more than once; send one key",
        ));
    }
    let key = parse_key(raw.as_bytes())?;
    let Some(identity) = identity(config, headers) else {
        tracing::debug!("Idempotency-Key without an identity header: passed on, not deduplicated");
        return Ok(None);
    };
    Ok(Some(Keyed {
        digest: scoped_key(identity.as_bytes(), &key),
        fingerprint: hex_sha256(parts),
    }))
}

/// The caller's identity, which scopes its keys. An empty value identifies
/// no one: every caller sending it would share one scope.
pub(crate) fn identity<'h>(
    config: &IdempotencyConfig,
    headers: &'h HeaderMap,
) -> Option<&'h axum::http::HeaderValue> {
    headers
        .get(&config.identity_header)
        .filter(|v| !v.as_bytes().trim_ascii().is_empty())
}

/// The `Idempotency-Key` header exactly as the caller sent it, for the backend.
pub(crate) fn passed_on(headers: &HeaderMap) -> Option<String> {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The store key of `key` sent by the caller identified by `identity`.
#[must_use]
pub fn scoped_key(identity: &[u8], key: &str) -> String {
    hex_sha256(&[identity, key.as_bytes()])
}

/// The key: a structured-field String (`"abc"`, RFC 8941 §3.3.3) per the
/// draft, or bare printable ASCII as many clients send it. Anything else is
/// refused rather than guessed at: a list (`"a", "b"`, as a proxy joins a
/// header sent twice), an unbalanced quote, text after the closing quote
/// (structured-field parameters too: the draft defines none).
fn parse_key(raw: &[u8]) -> Result<String, Problem> {
    let invalid = |why: &str| Problem::invalid_idempotency_key(why.to_owned());
    let text = std::str::from_utf8(raw)
        .ok()
        .filter(|t| t.is_ascii())
        .map(str::trim)
        .ok_or_else(|| invalid("the key is not ASCII text"))?;
    let key = match text.strip_prefix('"') {
        Some(quoted) => sf_string(quoted).ok_or_else(|| {
            invalid("the key must be one quoted string and nothing after it (send one key)")
        })?,
        None if text.contains([',', '"']) => {
            return Err(invalid(
                "a bare key cannot hold a comma or a quote (send one key; quote it if needed)",
            ));
        }
        None => text.to_owned(),
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Problem::invalid_idempotency_key(format!(
            "the key must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(invalid("the key must be printable ASCII"));
    }
    Ok(key)
}

/// The content of a structured-field String whose opening quote is gone:
/// `\"` and `\\` unescaped, and nothing may follow the closing quote.
fn sf_string(rest: &str) -> Option<String> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                escaped @ ('"' | '\\') => out.push(escaped),
                _ => return None,
            },
            '"' => return chars.as_str().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    // No closing quote.
    None
}

/// SHA-256 over the parts, each length-prefixed so boundaries count.
fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut ctx = Context::new(&SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config() -> IdempotencyConfig {
        IdempotencyConfig {
            ttl: Duration::from_secs(60),
            identity_header: HeaderName::from_static("authorization"),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn keys_parse_quoted_or_bare_and_bad_ones_are_refused() {
        assert_eq!(parse_key(b"\"abc-1\"").ok().as_deref(), Some("abc-1"));
        assert_eq!(parse_key(b" abc-1 ").ok().as_deref(), Some("abc-1"));
        assert_eq!(
            parse_key(br#""a \"b\" \\c""#).ok().as_deref(),
            Some(r#"a "b" \c"#)
        );
        for bad in [
            &b""[..],
            b"\"\"",
            b"caf\xc3\xa9",
            &[b'x'; 256][..],
            // A list, as a proxy joins the header sent twice.
            b"\"a\", \"b\"",
            b"a, b",
            // An unbalanced quote, text after the string, a bad escape.
            b"\"k1",
            b"k1\"",
            b"\"a\" ; x=1",
            // Parameters: the draft defines none, and a key with them is
            // refused rather than taken without them.
            b"\"a\";x=1",
            b"\"a\\n\"",
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scope_separates_callers_and_the_fingerprint_separates_requests() {
        let c = config();
        let alice = headers(&[(HEADER, "k"), ("authorization", "Bearer a")]);
        let bob = headers(&[(HEADER, "k"), ("authorization", "Bearer b")]);
        let a1 = keyed(&c, &alice, &[b"POST", b"{}"])
            .expect("valid")
            .expect("keyed");
        let a2 = keyed(&c, &alice, &[b"POST", b"{ }"])
            .expect("valid")
            .expect("keyed");
        let b1 = keyed(&c, &bob, &[b"POST", b"{}"])
            .expect("valid")
            .expect("keyed");
        assert_eq!(a1.digest, a2.digest, "same caller, same key");
        assert_ne!(a1.fingerprint, a2.fingerprint, "different body");
        assert_ne!(a1.digest, b1.digest, "different caller");
        assert!(!a1.digest.contains("Bearer"), "no credential in the key");
        assert!(keyed(&c, &headers(&[]), &[]).expect("valid").is_none());
        let anonymous = headers(&[(HEADER, "k")]);
        assert!(
            keyed(&c, &anonymous, &[]).expect("valid").is_none(),
            "no identity, no shared scope"
        );
        assert_eq!(passed_on(&anonymous).as_deref(), Some("k"));
        let empty = headers(&[(HEADER, "k"), ("authorization", " ")]);
        assert!(
            keyed(&c, &empty, &[]).expect("valid").is_none(),
            "an empty identity is no identity"
        );
    }

    #[test]
    fn a_key_sent_twice_is_no_key() {
        let mut twice = headers(&[("authorization", "Bearer a")]);
        twice.append(HEADER, HeaderValue::from_static("first"));
        twice.append(HEADER, HeaderValue::from_static("second"));
        assert!(keyed(&config(), &twice, &[b"{}"]).is_err());
    }

    #[test]
    fn part_boundaries_count() {
        assert_ne!(hex_sha256(&[b"ab", b"c"]), hex_sha256(&[b"a", b"bc"]));
    }
}
