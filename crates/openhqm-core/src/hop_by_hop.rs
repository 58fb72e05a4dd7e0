//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not
//! the message, so no header of this kind is queued, forwarded, stored or
//! replayed. The ingress and the forwarder share this one definition.

/// The standard hop-by-hop headers, plus the de-facto `Keep-Alive` and
/// `Proxy-Connection`, lower-case.
pub const HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
];

/// Whether `name` (any case) is a standard hop-by-hop header.
#[must_use]
pub fn is_hop_by_hop(name: &str) -> bool {
    HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The header names a message's `Connection` values list (lower-case): they
/// are hop-by-hop for that message too.
pub fn named_by_connection<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_names_match_in_any_case() {
        for name in [
            "Connection",
            "TE",
            "transfer-encoding",
            "Proxy-Authorization",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["content-type", "authorization", "x-te", "cookie"] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn connection_lists_are_split_trimmed_and_lowered() {
        assert_eq!(
            named_by_connection(["close, X-Trace ,", "Keep-Alive"]),
            ["close", "x-trace", "keep-alive"]
        );
        assert!(named_by_connection([]).is_empty());
    }
}
