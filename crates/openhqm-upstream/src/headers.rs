//! Which headers reach the backend, and in what order of precedence.
//!
//! The policy is a pure function over strings so the whole of it fits in one
//! table of tests: client headers pass only if on the forward list (`"*"` for
//! all) and not on the strip list, names compared case-insensitively; headers
//! the worker derived from a foreign message by configuration (CloudEvents
//! `ce-*`, mapped attributes) skip those lists and override client headers;
//! the endpoint's static headers override both; the auth header is injected last;
//! hop-by-hop headers (RFC 9110 §7.6.1) never pass, from any source, nor do
//! `Host`, `Content-Length` and `Expect`, which belong to the forward itself. Every
//! request also carries `X-Correlation-ID` and a W3C `traceparent`.

use std::collections::BTreeMap;

use base64::Engine as _;
pub use openhqm_core::hop_by_hop::is_hop_by_hop;
use openhqm_core::hop_by_hop::named_by_connection;
use openhqm_core::{CorrelationId, Secret};

use crate::config::{AuthType, EndpointConfig};

/// Describe the client's own request to the ingress, not the forward: the
/// target's host and the payload's length are set by the HTTP client, and
/// an `Expect: 100-continue` was answered when the body reached us (the
/// forward sends the whole body at once, as nginx does).
const MANAGED: &[&str] = &["host", "content-length", "expect"];

/// Set by the forwarder itself; a client or static value is replaced.
pub const CORRELATION_HEADER: &str = "X-Correlation-ID";

/// Whether the forwarder sets `name` itself or drops it, whatever a message
/// or the configuration says (`Host`, `Content-Length`, `Expect`, the
/// correlation header): a configured value would never be sent.
#[must_use]
pub fn set_by_forwarder(name: &str) -> bool {
    MANAGED.iter().any(|m| m.eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case(CORRELATION_HEADER)
}
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The forward and strip lists, ready to apply.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    forward_all: bool,
    forward: Vec<String>,
    strip: Vec<String>,
}

impl HeaderPolicy {
    /// Builds the policy from `proxy.forward_headers` and `proxy.strip_headers`.
    #[must_use]
    pub fn new(forward: &[String], strip: &[String]) -> Self {
        Self {
            forward_all: forward.iter().any(|h| h.trim() == "*"),
            forward: forward
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            strip: strip
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `proxy.strip_headers` names `name` (lower case).
    #[must_use]
    pub fn strips(&self, name: &str) -> bool {
        self.strip.iter().any(|s| s == name)
    }

    /// Whether a client header `name` passes, where no `Connection` header
    /// names it (the passthrough ingress drops those it names on arrival).
    #[must_use]
    pub fn forwards(&self, name: &str) -> bool {
        self.passes(name, &[])
    }

    fn passes(&self, name: &str, connection_named: &[String]) -> bool {
        let lower = name.to_ascii_lowercase();
        !is_hop_by_hop(&lower)
            && !MANAGED.contains(&lower.as_str())
            && !connection_named.contains(&lower)
            && !self.strip.contains(&lower)
            && (self.forward_all || self.forward.contains(&lower))
    }
}

/// The header an endpoint authenticates with, value kept secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    /// Header name.
    pub name: String,
    /// Header value, including any scheme (`Bearer ...`).
    pub value: Secret,
}

/// An `Authorization: Basic` value (RFC 7617).
#[must_use]
pub fn basic_credentials(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// The auth header an endpoint's config asks for, if any.
#[must_use]
pub fn auth_header(e: &EndpointConfig) -> Option<AuthHeader> {
    let token = e.auth_token.expose();
    let (name, value) = match e.auth_type? {
        AuthType::Bearer => ("Authorization".to_owned(), format!("Bearer {token}")),
        AuthType::Basic => (
            "Authorization".to_owned(),
            basic_credentials(
                e.auth_username.as_deref().unwrap_or_default(),
                e.auth_password.expose(),
            ),
        ),
        AuthType::ApiKey => (
            e.auth_header_name
                .clone()
                .unwrap_or_else(|| "X-API-Key".to_owned()),
            token.to_owned(),
        ),
        AuthType::Custom => (e.auth_header_name.clone()?, token.to_owned()),
    };
    Some(AuthHeader {
        name,
        value: Secret::from(value.as_str()),
    })
}

/// Everything that contributes headers to one forward.
#[derive(Debug, Clone, Copy)]
pub struct HeaderSources<'a> {
    /// The client's headers from the envelope.
    pub client: Option<&'a BTreeMap<String, String>>,
    /// Headers derived from a foreign message ([`openhqm_core::Envelope::derived_headers`]).
    pub derived: &'a BTreeMap<String, String>,
    /// The endpoint's static headers.
    pub endpoint: &'a BTreeMap<String, String>,
    /// The endpoint's auth header.
    pub auth: Option<&'a AuthHeader>,
    /// The request's id.
    pub correlation_id: CorrelationId,
}

/// One outgoing header. The value of the auth header is secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutHeader {
    /// A header that may be logged.
    Plain(String, String),
    /// The auth header.
    Secret(String, Secret),
}

impl OutHeader {
    /// The header's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Plain(n, _) | Self::Secret(n, _) => n,
        }
    }

    /// The header's value, for the one place that sends it.
    #[must_use]
    pub fn value(&self) -> &str {
        match self {
            Self::Plain(_, v) => v,
            Self::Secret(_, v) => v.expose(),
        }
    }
}

/// The headers to send, in order, each name once.
#[must_use]
pub fn outgoing(policy: &HeaderPolicy, src: &HeaderSources<'_>) -> Vec<OutHeader> {
    let mut out: Vec<OutHeader> = Vec::new();
    let mut set = |h: OutHeader| {
        out.retain(|o| !o.name().eq_ignore_ascii_case(h.name()));
        out.push(h);
    };
    let empty = BTreeMap::new();
    let client = src.client.unwrap_or(&empty);
    let connection_named = named_by_connection(
        client
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v.as_str()),
    );
    for (name, value) in client {
        if policy.passes(name, &connection_named) {
            set(OutHeader::Plain(name.clone(), value.clone()));
        }
    }
    let configured =
        |name: &str| !is_hop_by_hop(name) && !MANAGED.iter().any(|m| m.eq_ignore_ascii_case(name));
    for (name, value) in src.derived.iter().chain(src.endpoint) {
        if configured(name) {
            set(OutHeader::Plain(name.clone(), value.clone()));
        }
    }
    if let Some(auth) = src.auth {
        set(OutHeader::Secret(auth.name.clone(), auth.value.clone()));
    }
    set(OutHeader::Plain(
        CORRELATION_HEADER.into(),
        src.correlation_id.to_string(),
    ));
    // The client's trace is continued whatever the forward list says, unless
    // the operator strips `traceparent`: then a new trace starts here. Its
    // `tracestate` goes with it, and never with a trace of our own (W3C
    // Trace Context: vendor state belongs to its trace).
    let parent = client
        .iter()
        .find(|(k, v)| {
            k.eq_ignore_ascii_case(TRACEPARENT)
                && !policy.strip.iter().any(|s| s == TRACEPARENT)
                && valid_traceparent(v)
        })
        .map(|(_, v)| v.clone());
    // Stripped, vendor state stays behind even with its trace continued.
    let state = client
        .iter()
        .find(|(k, v)| {
            k.eq_ignore_ascii_case(TRACESTATE)
                && !policy.strip.iter().any(|s| s == TRACESTATE)
                && !v.is_empty()
        })
        .map(|(_, v)| v.clone());
    match (parent, state) {
        (Some(parent), state) => {
            set(OutHeader::Plain(TRACEPARENT.into(), parent));
            if let Some(state) = state {
                set(OutHeader::Plain(TRACESTATE.into(), state));
            }
        }
        (None, _) => {
            out.retain(|h| !h.name().eq_ignore_ascii_case(TRACESTATE));
            let parent = new_traceparent(src.correlation_id, fastrand::u64(1..));
            out.push(OutHeader::Plain(TRACEPARENT.into(), parent));
        }
    }
    out
}

/// A traceparent whose trace id is the correlation id, so traces and request
/// records can be joined.
#[must_use]
pub fn new_traceparent(id: CorrelationId, span: u64) -> String {
    let trace = u128::from_be_bytes(*id.as_bytes());
    format!("00-{trace:032x}-{span:016x}-01")
}

/// Whether `v` is a well-formed version-00 W3C traceparent.
#[must_use]
pub fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && parts[3].len() == 2
        && parts[3].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests;
