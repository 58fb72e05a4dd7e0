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

/// Why a message's body cannot be taken as hyper reads it: hyper removes
/// one `chunked` transfer coding and no other (RFC 9112 §6.1), and
/// `Transfer-Encoding` itself is never passed on, so anything more would be
/// kept still coded with nothing saying so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferCoding {
    /// A coding other than `chunked` (its name, as sent).
    #[error("transfer coding `{0}` is not supported, only chunked")]
    Unsupported(String),
    /// `chunked` more than once.
    #[error("the body is chunked more than once (RFC 9112 §6.1)")]
    ChunkedTwice,
}

/// Checks a message's `Transfer-Encoding` values (a value that is not text
/// should be given as `"?"`).
///
/// # Errors
/// The first coding the body cannot be read through.
pub fn check_transfer_codings<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<(), TransferCoding> {
    let mut chunked = false;
    for coding in values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        if !coding.eq_ignore_ascii_case("chunked") {
            return Err(TransferCoding::Unsupported(coding.to_owned()));
        }
        if std::mem::replace(&mut chunked, true) {
            return Err(TransferCoding::ChunkedTwice);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_chunked_coding_is_readable() {
        let check = |values: &[&str]| check_transfer_codings(values.iter().copied());
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&["chunked"]), Ok(()));
        assert_eq!(check(&["Chunked", ""]), Ok(()));
        assert_eq!(
            check(&["gzip, chunked"]),
            Err(TransferCoding::Unsupported("gzip".into()))
        );
        assert_eq!(
            check(&["deflate", "chunked"]),
            Err(TransferCoding::Unsupported("deflate".into()))
        );
        assert_eq!(
            check(&["chunked, chunked"]),
            Err(TransferCoding::ChunkedTwice)
        );
        assert_eq!(
            check(&["chunked", "chunked"]),
            Err(TransferCoding::ChunkedTwice)
        );
    }

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
