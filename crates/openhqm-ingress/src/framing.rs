//! What hyper lets through of a request's framing but RFC 9112 refuses:
//! an HTTP/1.1 request without a `Host`, or with several, or with one that
//! is no `host[:port]` (§3.2: 400); and a transfer coding other than
//! `chunked` (§6.1: 501), whose body would reach the queue, or the app
//! behind the sidecar, still coded and labelled as if it were not.

use std::net::Ipv6Addr;

use axum::extract::Request;
use axum::http::uri::Authority;
use axum::http::{HeaderValue, Version, header};

use openhqm_core::hop_by_hop::{TransferCoding, check_transfer_codings};

use crate::Problem;

/// Checks `request`'s `Host` and `Transfer-Encoding`: the metrics layer
/// under every router ([`crate::telemetry`]) answers a request that fails
/// with its problem, counted, before any handler reads it.
pub(crate) fn check(request: &Request) -> Result<(), Problem> {
    check_host(request)?;
    check_transfer_coding(request)
}

fn check_host(request: &Request) -> Result<(), Problem> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if request.version() == Version::HTTP_11 => Err(Problem::invalid_host(
            "an HTTP/1.1 request must carry a Host header",
        )),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(Problem::invalid_host(
            "the request carries more than one Host header",
        )),
        (Some(host), None) if is_host(host) => Ok(()),
        (Some(_), None) => Err(Problem::invalid_host(
            "the Host header is not a host name or address with an optional port",
        )),
    }
}

/// `uri-host [":" port]`, or empty (a target without an authority).
fn is_host(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    if text.is_empty() {
        return true;
    }
    // `Authority` takes user info too, anything after a `:` as a port, an
    // empty host before one, and any text in brackets.
    let Ok(authority) = text.parse::<Authority>() else {
        return false;
    };
    let host = authority.host();
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // An IPv6 literal, with an RFC 6874 zone (`%25eth0`) if any.
        Some(literal) => literal
            .split("%25")
            .next()
            .is_some_and(|address| address.parse::<Ipv6Addr>().is_ok()),
        None => !host.is_empty() && !host.contains(['[', ']']),
    };
    let port_ok = match text.strip_prefix(host) {
        Some("") => true,
        Some(port) => port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    };
    host_ok && port_ok
}

fn check_transfer_coding(request: &Request) -> Result<(), Problem> {
    let values = request
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"));
    check_transfer_codings(values).map_err(|e| match e {
        TransferCoding::Unsupported(coding) => Problem::unsupported_transfer_coding(&coding),
        // hyper removes one chunking: a second would be stored as framing.
        TransferCoding::ChunkedTwice => Problem::unreadable_body(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri("/x").version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).expect("request")
    }

    fn code(result: Result<(), Problem>) -> Option<&'static str> {
        result.err().map(|p| p.code())
    }

    #[test]
    fn host_rules_of_rfc_9112() {
        let v11 = Version::HTTP_11;
        for (version, headers, refused) in [
            (v11, vec![("host", "example.com")], false),
            (v11, vec![("host", "127.0.0.1:8000")], false),
            (v11, vec![("host", "[::1]:80")], false),
            (v11, vec![("host", "")], false),
            (Version::HTTP_10, vec![], false),
            (v11, vec![], true),
            (v11, vec![("host", "a"), ("host", "b")], true),
            (v11, vec![("host", "a b/c@d")], true),
            (v11, vec![("host", "user@example.com")], true),
            (v11, vec![("host", "example.com/path")], true),
            (v11, vec![("host", "example.com:port")], true),
            (v11, vec![("host", "example.com.:")], false),
            (v11, vec![("host", "[fe80::1%25eth0]:8080")], false),
            (v11, vec![("host", ":80")], true),
            (v11, vec![("host", "[zzz]")], true),
            (v11, vec![("host", "[1::2::3]")], true),
            (v11, vec![("host", "a[b]")], true),
            (Version::HTTP_10, vec![("host", "a"), ("host", "b")], true),
        ] {
            let got = code(check(&request(version, &headers)));
            let want = refused.then_some("invalid-host");
            assert_eq!(got, want, "{version:?} {headers:?}");
        }
    }

    #[test]
    fn only_the_chunked_transfer_coding_is_taken() {
        for (te, refused) in [
            (None, false),
            (Some("chunked"), false),
            (Some("Chunked"), false),
            (Some("gzip, chunked"), true),
            (Some("deflate,chunked"), true),
        ] {
            let mut headers = vec![("host", "x")];
            headers.extend(te.map(|t| ("transfer-encoding", t)));
            let got = code(check(&request(Version::HTTP_11, &headers)));
            let want = refused.then_some("unsupported-transfer-coding");
            assert_eq!(got, want, "{te:?}");
        }
        let twice = [("host", "x"), ("transfer-encoding", "chunked, chunked")];
        let got = code(check(&request(Version::HTTP_11, &twice)));
        assert_eq!(got, Some("unreadable-body"));
    }
}
