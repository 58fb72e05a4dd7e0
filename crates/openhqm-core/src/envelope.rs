//! The submit body and the versioned queue envelope.
//!
//! The envelope is JSON so that producers outside OpenHQM can write it
//! (CONTRACT.md: `{"correlation_id", "payload", "headers", "timestamp",
//! "metadata"}`). Ours adds `v` (the envelope version). The payload is kept as
//! raw JSON text end to end: it is never parsed into a tree on the hot path and
//! reaches the processor byte for byte as the client sent it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::CorrelationId;

/// The current envelope version written by OpenHQM.
pub const ENVELOPE_VERSION: u32 = 1;

/// Highest priority a client may ask for.
pub const MAX_PRIORITY: u8 = 9;

/// Deepest nesting of arrays and objects a payload may have: the most
/// serde_json reads (its recursion limit), so every processor can read what
/// was accepted.
pub const MAX_PAYLOAD_DEPTH: usize = 127;

/// Processing timeout when the request does not set one (seconds).
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// Per-request options (`metadata` in the submit body).
///
/// Unknown keys (`type`, `session_id`, `partition_key`, ...) are kept in
/// [`Metadata::extra`] and travel with the message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Name of a configured proxy endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// HTTP method override for forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// 0 (default) to 9; higher is taken first.
    #[serde(default, deserialize_with = "crate::null_as_default")]
    pub priority: u8,
    /// Per-attempt processing timeout in seconds, capped by the worker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Attempts already made before this submit.
    #[serde(default, deserialize_with = "crate::null_as_default")]
    pub retry_count: u32,
    /// Where to POST the result once the request is finished; its host must
    /// be on `callbacks.allowed_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Every other key, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Metadata {
    /// Checks the ranges CONTRACT.md gives; the message says which field is wrong.
    ///
    /// # Errors
    /// A human-readable description of the first out-of-range field.
    pub fn validate(&self) -> Result<(), String> {
        if self.priority > MAX_PRIORITY {
            return Err(format!(
                "metadata.priority must be between 0 and {MAX_PRIORITY}, got {}",
                self.priority
            ));
        }
        if self.timeout == Some(0) {
            return Err("metadata.timeout must be a positive number of seconds".into());
        }
        for key in ["path", "query"] {
            if let Some(v) = self.extra.get(key)
                && !(v.is_string() || v.is_null())
            {
                return Err(format!(
                    "metadata.{key} must be a string (as in a URL), got {v}"
                ));
            }
        }
        Ok(())
    }
}

/// The body of `POST /api/v1/submit`.
#[derive(Debug, Deserialize)]
pub struct SubmitRequest {
    /// Any JSON value, kept verbatim.
    pub payload: Box<RawValue>,
    /// Headers to forward to a backend.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Options; absent means defaults.
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// A request as it travels on a queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope version; absent on messages from the earlier implementation.
    #[serde(default)]
    pub v: u32,
    /// The request's id; a producer's own text that is not a UUID maps to
    /// one ([`CorrelationId::from_text`]).
    #[serde(deserialize_with = "CorrelationId::deserialize_text")]
    pub correlation_id: CorrelationId,
    /// The client's payload, verbatim.
    pub payload: Box<RawValue>,
    /// Headers to forward.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// When the request was accepted: RFC 3339 for OpenHQM, anything for others.
    #[serde(default)]
    pub timestamp: Option<Value>,
    /// Options.
    #[serde(default, deserialize_with = "crate::null_as_default")]
    pub metadata: Metadata,
    /// The exact body bytes, base64-encoded, when the request body was not
    /// JSON (a sidecar passthrough, a producer forwarding binary). When set,
    /// the forwarder sends these bytes instead of `payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<String>,
    /// A passthrough caller's headers whose values are not UTF-8 (obs-text,
    /// RFC 9110 §5.5), which `headers` cannot hold: base64 of the bytes,
    /// replayed as they came, with the precedence of `headers`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_headers: BTreeMap<String, String>,
    /// Taken whole by the transparent (sidecar) ingress: the forward replays
    /// the caller's method, path (`metadata.path`), query (`metadata.query`),
    /// headers and exact body, and the backend's exact body is kept so the
    /// waiting caller gets it back byte for byte.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
    /// The caller's `Idempotency-Key`, passed on to the backend so it can
    /// deduplicate too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Headers the worker derived by configuration from a foreign message
    /// (CloudEvents `ce-*`, `Content-Type`, `worker.foreign.attribute_headers`;
    /// see [`crate::foreign`]). The operator chose them, so they bypass the
    /// forward list that filters [`Envelope::headers`]. Never read from nor
    /// written to the wire: a producer cannot set them.
    #[serde(skip)]
    pub derived_headers: BTreeMap<String, String>,
}

impl Envelope {
    /// Builds the envelope for an accepted submit.
    #[must_use]
    pub fn from_submit(id: CorrelationId, req: SubmitRequest, accepted_at: &str) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            correlation_id: id,
            payload: req.payload,
            headers: req.headers,
            timestamp: Some(Value::String(accepted_at.to_owned())),
            metadata: req.metadata.unwrap_or_default(),
            raw_body: None,
            binary_headers: BTreeMap::new(),
            passthrough: false,
            idempotency_key: None,
            derived_headers: BTreeMap::new(),
        }
    }

    /// Serializes to the wire form.
    ///
    /// # Errors
    /// Only if a value cannot be represented as JSON, which our types rule out.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    /// Parses the wire form, ours or a foreign producer's.
    ///
    /// # Errors
    /// The parse error, which names the offending field.
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    /// The `correlation_id` of an envelope that may not decode as a whole:
    /// read without building the rest, so a payload no `Value` can hold (a
    /// number out of `f64` range, a lone surrogate) or a bad field elsewhere
    /// still leaves the request findable by its id.
    #[must_use]
    pub fn correlation_id_in(bytes: &[u8]) -> Option<CorrelationId> {
        #[derive(Deserialize)]
        struct IdOnly<'a> {
            #[serde(borrow)]
            correlation_id: Option<std::borrow::Cow<'a, str>>,
        }
        serde_json::from_slice::<IdOnly<'_>>(bytes)
            .ok()
            .and_then(|envelope| envelope.correlation_id)
            .map(|text| CorrelationId::from_text(&text))
    }
}

/// How deep arrays and objects nest in `json`, text already known to be
/// valid JSON (a [`RawValue`]): a scan, not a parse, so it costs no tree and
/// has no limit of its own.
#[must_use]
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why a processor could not read `json`, valid JSON text (a
/// [`RawValue`]), with serde_json, as every processor here reads a payload:
/// a number beyond `f64` (`1e999`), or a string with an escaped lone
/// surrogate (`"\ud800"`), which is no Unicode text. `None` when it reads.
/// (Nesting is [`nesting_depth`]'s to report.) A walk: no tree is built.
#[must_use]
pub fn unreadable(json: &str) -> Option<serde_json::Error> {
    serde_json::from_str::<Walk>(json).err()
}

/// Reads a JSON value through `deserialize_any`, as a `Value` would be read
/// (numbers as numbers, strings unescaped), and keeps nothing.
struct Walk;

impl<'de> Deserialize<'de> for Walk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Walk)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk {
    type Value = Self;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(Walk)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(Walk)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(Walk)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(Walk)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(Walk)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(Walk)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Walk>()?.is_some() {}
        Ok(Walk)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<Walk, Walk>()?.is_some() {}
        Ok(Walk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_no_processor_could_read_are_named() {
        for json in [
            r#"{"a": [1, -2, 3.5, "\u00e9", null, true]}"#,
            "1e308",
            r#""\ud83d\ude00""#,
        ] {
            assert!(unreadable(json).is_none(), "{json}");
        }
        for (json, why) in [
            ("1e999", "number out of range"),
            ("[1, -1e999]", "number out of range"),
            (r#"{"k": "\ud800"}"#, "hex escape"),
            (r#"{"\udc00": 1}"#, "surrogate"),
        ] {
            let error = unreadable(json).map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(why), "{json}: {error}");
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        for (json, depth) in [
            ("1", 0),
            ("[]", 1),
            (r#"{"a": [1, {"b": []}], "c": {}}"#, 4),
            (r#"["[[[", "\\", "\"{{"]"#, 1),
            (r#"{"k\"[": "]]]"}"#, 1),
        ] {
            assert_eq!(nesting_depth(json), depth, "{json}");
        }
        let deepest = format!(
            "{}{}",
            "[".repeat(MAX_PAYLOAD_DEPTH),
            "]".repeat(MAX_PAYLOAD_DEPTH)
        );
        assert_eq!(nesting_depth(&deepest), MAX_PAYLOAD_DEPTH);
        // The limit is what serde_json reads: one level more is refused.
        assert!(serde_json::from_str::<Value>(&deepest).is_ok());
        let deeper = format!("[{deepest}]");
        assert!(serde_json::from_str::<Value>(&deeper).is_err());
    }

    #[test]
    fn the_id_is_read_whatever_else_the_envelope_holds() {
        let id = CorrelationId::new();
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        // Payloads a `Value` cannot hold, and a field that fails decoding.
        for (payload, metadata) in [
            ("1e400", "{}"),
            (r#""\ud800""#, "{}"),
            (deep.as_str(), "{}"),
            ("1", r#"{"priority": "high"}"#),
        ] {
            let body =
                format!(r#"{{"payload":{payload},"correlation_id":"{id}","metadata":{metadata}}}"#);
            assert_eq!(
                Envelope::correlation_id_in(body.as_bytes()),
                Some(id),
                "{body}"
            );
        }
        let bad_field =
            format!(r#"{{"payload":1,"correlation_id":"{id}","metadata":{{"priority":"high"}}}}"#);
        assert!(Envelope::from_json(bad_field.as_bytes()).is_err());
        assert_eq!(Envelope::correlation_id_in(br#"{"data": 1}"#), None);
        // A producer's own id that is not a UUID stands for its derived one.
        assert_eq!(
            Envelope::correlation_id_in(br#"{"correlation_id": "x"}"#),
            Some(CorrelationId::from_text("x"))
        );
        let own = Envelope::from_json(br#"{"correlation_id": "order-17", "payload": 1}"#)
            .expect("a producer's own id is kept");
        assert_eq!(own.correlation_id, CorrelationId::from_text("order-17"));
        assert_eq!(Envelope::correlation_id_in(b"not json"), None);
    }

    fn submit(json: &str) -> Result<SubmitRequest, String> {
        let req: SubmitRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if let Some(m) = &req.metadata {
            m.validate()?;
        }
        Ok(req)
    }

    #[test]
    fn null_metadata_fields_read_as_absent() {
        // Clients of the earlier implementation send unset fields as null.
        let req = submit(
            r#"{"payload": 1, "metadata": {"priority": null, "retry_count": null,
                "timeout": null, "endpoint": null, "method": null, "callback_url": null}}"#,
        )
        .expect("nulls are defaults");
        assert_eq!(req.metadata, Some(Metadata::default()));
    }

    #[test]
    fn any_json_payload_is_kept_verbatim() {
        for payload in [r#"{"a": 1}"#, "[1, 2, 3]", "\"text\"", "42", "null", "true"] {
            let req = submit(&format!(r#"{{"payload": {payload}}}"#)).expect("valid");
            assert_eq!(req.payload.get(), payload);
        }
    }

    #[test]
    fn extra_metadata_keys_travel_with_the_envelope() {
        let req = submit(
            r#"{"payload": 1, "metadata": {"priority": 3, "type": "order", "session_id": "s1"}}"#,
        )
        .expect("valid");
        let env = Envelope::from_submit(CorrelationId::new(), req, "2026-01-01T00:00:00.000Z");
        let back = Envelope::from_json(&env.to_json().expect("json")).expect("parse");
        assert_eq!(back.metadata.priority, 3);
        assert_eq!(back.metadata.extra.get("type"), Some(&Value::from("order")));
        assert_eq!(
            back.metadata.extra.get("session_id"),
            Some(&Value::from("s1"))
        );
        assert_eq!(back.v, ENVELOPE_VERSION);
    }

    #[test]
    fn bad_submits_say_what_is_wrong() {
        let cases = [
            (r#"{"metadata": {}}"#, "missing field `payload`"),
            (
                r#"{"payload": 1, "metadata": {"priority": 12}}"#,
                "metadata.priority",
            ),
            (
                r#"{"payload": 1, "metadata": {"timeout": 0}}"#,
                "metadata.timeout",
            ),
            (r#"{"payload": 1, "headers": {"a": 1}}"#, "invalid type"),
            (r#"{"payload": "#, "EOF"),
        ];
        for (input, expected) in cases {
            let err = submit(input).expect_err(input);
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn foreign_envelope_from_the_earlier_implementation_parses() {
        let id = CorrelationId::new();
        let raw = format!(
            r#"{{"correlation_id":"{id}","payload":{{"x":1}},"headers":null,"timestamp":1700000000.5,"metadata":{{"type":"t"}}}}"#
        );
        let env = Envelope::from_json(raw.as_bytes()).expect("parse");
        assert_eq!(env.correlation_id, id);
        assert_eq!(env.v, 0);
        assert_eq!(env.payload.get(), r#"{"x":1}"#);
    }

    #[test]
    fn an_envelope_with_null_metadata_has_the_default_options() {
        let id = CorrelationId::new();
        let raw = format!(r#"{{"correlation_id":"{id}","payload":1,"metadata":null}}"#);
        let env = Envelope::from_json(raw.as_bytes()).expect("null metadata parses");
        assert_eq!(env.metadata, Metadata::default());
    }
}
