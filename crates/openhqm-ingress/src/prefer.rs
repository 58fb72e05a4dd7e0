//! The parts of RFC 7240 `Prefer` that OpenHQM honours.
//!
//! A client may send several `Prefer` headers, each a comma-separated list of
//! preferences; tokens compare case-insensitively and values may be quoted
//! strings, inside which a comma or `;` separates nothing (RFC 7240 §2).
//! Unknown preferences are ignored, as the RFC asks. A `?wait=N` query
//! parameter is accepted too, for clients that cannot set headers; being
//! our own API rather than a preference, a malformed one is an error.

use std::time::Duration;

use axum::http::header::HeaderName;
use axum::http::{HeaderMap, HeaderValue};

/// `Prefer`.
pub static PREFER: HeaderName = HeaderName::from_static("prefer");

/// `Preference-Applied`.
pub static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The `Preference-Applied` value for what was honoured (RFC 7240 §3):
/// `respond-async` when the caller got the 202 it asked for, `wait=N` (N as
/// capped) when it was held for up to N seconds. `None` when neither.
#[must_use]
pub fn applied(respond_async: bool, waited: Option<Duration>) -> Option<HeaderValue> {
    let mut applied = Vec::new();
    if respond_async {
        applied.push("respond-async".to_owned());
    }
    if let Some(wait) = waited {
        applied.push(format!("wait={}", wait.as_secs()));
    }
    HeaderValue::from_str(&applied.join(", "))
        .ok()
        .filter(|v| !v.is_empty())
}

/// The preferences we act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preferences {
    /// `wait=N`: how long the client is willing to wait for a final answer.
    pub wait: Option<Duration>,
    /// `respond-async`: answer 202 at once rather than waiting.
    pub respond_async: bool,
}

impl Preferences {
    /// Reads every `Prefer` header (the first `wait` counts, RFC 7240 §2).
    #[must_use]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut prefs = Self::default();
        for value in headers.get_all(&PREFER) {
            if let Ok(text) = value.to_str() {
                prefs.merge(text);
            }
        }
        prefs
    }

    /// As [`Preferences::from_headers`], then `wait` from the query, which wins.
    ///
    /// # Errors
    /// A `wait` parameter that is not a whole number of seconds: a client
    /// that asked to wait is told it will not, rather than answered at once.
    pub fn from_request(headers: &HeaderMap, query: Option<&str>) -> Result<Self, String> {
        let mut prefs = Self::from_headers(headers);
        if let Some(given) = query.and_then(|q| crate::query_param(q, "wait")) {
            let secs = seconds(&given).ok_or_else(|| {
                format!("query parameter `wait` must be a whole number of seconds, not `{given}`")
            })?;
            prefs.wait = Some(Duration::from_secs(secs));
        }
        Ok(prefs)
    }

    fn merge(&mut self, header: &str) {
        for preference in unquoted_split(header, b',') {
            // Parameters after `;` qualify a preference; none matter to us.
            let head = unquoted_split(preference, b';').next().unwrap_or("").trim();
            let (token, value) = match head.split_once('=') {
                Some((t, v)) => (t.trim(), Some(v.trim().trim_matches('"'))),
                None => (head, None),
            };
            if token.eq_ignore_ascii_case("respond-async") {
                self.respond_async = true;
            } else if token.eq_ignore_ascii_case("wait")
                && self.wait.is_none()
                && let Some(secs) = value.and_then(seconds)
            {
                self.wait = Some(Duration::from_secs(secs));
            }
        }
    }
}

/// `text` split at each `separator` outside a quoted string (where `\`
/// escapes the next character), as RFC 9110 §5.6 lists are.
fn unquoted_split(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in current.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == separator && !quoted => {
                    rest = Some(&current[i + 1..]);
                    return Some(&current[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
}

/// A `Prefer` value without the preferences OpenHQM answers itself (`wait`,
/// `respond-async`): what is left is the application's (`return=minimal`,
/// `handling=strict`, ...) and travels with the request. `None` when nothing
/// is left.
#[must_use]
pub fn for_the_application(header: &str) -> Option<String> {
    let kept: Vec<&str> = unquoted_split(header, b',')
        .map(str::trim)
        .filter(|p| {
            // A token ends at `;` or `=`, and so before any quoted string.
            let token = p.split([';', '=']).next().unwrap_or("").trim();
            !token.is_empty()
                && !token.eq_ignore_ascii_case("wait")
                && !token.eq_ignore_ascii_case("respond-async")
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// A `wait` value: digits only; one too large to count is as long as can
/// be, and is then capped like any other.
fn seconds(v: &str) -> Option<u64> {
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn prefer(headers: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for h in headers {
            map.append(&PREFER, HeaderValue::from_str(h).expect("header"));
        }
        map
    }

    fn check(headers: &[&str], query: Option<&str>, wait: Option<u64>, respond_async: bool) {
        assert_eq!(
            Preferences::from_request(&prefer(headers), query),
            Ok(Preferences {
                wait: wait.map(Duration::from_secs),
                respond_async
            }),
            "{headers:?} {query:?}"
        );
    }

    #[test]
    fn preferences_table() {
        check(&[], None, None, false);
        check(&["wait=10"], None, Some(10), false);
        check(&["WAIT = \"5\""], None, Some(5), false);
        check(&["respond-async, wait=3"], None, Some(3), true);
        check(&["Respond-Async"], None, None, true);
        check(
            &["handling=lenient", "wait=7; foo=bar"],
            None,
            Some(7),
            false,
        );
        check(&["wait=soon"], None, None, false);
        check(&["wait=-1"], None, None, false);
        check(&["wait=+1"], None, None, false);
        check(&["wait=99999999999999999999"], None, Some(u64::MAX), false);
        check(&["wait=10"], Some("x=1&wait=2"), Some(2), false);
        check(&[], Some("x=1"), None, false);
        check(&[], Some("wait=30"), Some(30), false);
        check(&[], Some("w%61it=%33"), Some(3), false);
        // Only the first `wait` counts.
        check(&["wait=5", "wait=60"], None, Some(5), false);
        check(&["wait=5, wait=60"], None, Some(5), false);
        // Inside a quoted value, `,` and `;` are text, not separators.
        check(&[r#"foo="a, respond-async, b""#], None, None, false);
        check(&[r#"foo="a, wait=1; b", wait=4"#], None, Some(4), false);
        check(&[r#"foo="x\", wait=2", respond-async"#], None, None, true);
    }

    #[test]
    fn a_malformed_wait_parameter_is_an_error_naming_it() {
        for query in ["wait=abc", "wait=", "wait=-1", "x=1&wait=1.5"] {
            let error =
                Preferences::from_request(&prefer(&["wait=5"]), Some(query)).expect_err(query);
            assert!(error.contains("`wait`"), "{query}: {error}");
        }
        // In `Prefer`, the same value is a preference to ignore (RFC 7240).
        assert_eq!(
            Preferences::from_request(&prefer(&["wait=abc"]), None).map(|p| p.wait),
            Ok(None)
        );
    }

    #[test]
    fn the_applications_preferences_are_kept() {
        let cases = [
            ("return=representation", Some("return=representation")),
            (
                "respond-async, return=minimal; foo=bar, wait=10",
                Some("return=minimal; foo=bar"),
            ),
            ("WAIT=5, Respond-Async", None),
            (
                "handling=strict,count=exact",
                Some("handling=strict, count=exact"),
            ),
            (" , ", None),
            (r#"return="a,b", wait=3"#, Some(r#"return="a,b""#)),
            (
                r#"foo="a, wait=1; respond-async""#,
                Some(r#"foo="a, wait=1; respond-async""#),
            ),
        ];
        for (given, kept) in cases {
            assert_eq!(for_the_application(given).as_deref(), kept, "{given}");
        }
    }
}
