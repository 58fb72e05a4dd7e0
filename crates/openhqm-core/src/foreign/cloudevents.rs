//! CloudEvents 1.0: the JSON format (structured mode), binary mode from
//! message attributes, and the HTTP binding's binary-mode headers.
//!
//! Hand-written rather than the `cloudevents-sdk` crate, which brings chrono,
//! url, snafu and a second base64 for what is a handful of rules:
//! - `specversion` (`1.0`), `id`, `source` and `type` are required non-empty
//!   strings; `datacontenttype`, `dataschema`, `subject` and `time` are
//!   optional strings (`time` RFC 3339); a JSON `null` is an absent
//!   attribute. Attribute names are lowercase letters and digits; extension
//!   values are strings, booleans or 32-bit integers.
//! - `data` and `data_base64` exclude each other. `data_base64` is decoded to
//!   bytes. `data` is the JSON value itself when `datacontenttype` is absent
//!   or declares JSON (`*/json`, `*/*+json`), and otherwise must be a string
//!   holding the encoded content.
//! - In the HTTP binding's binary mode each attribute is a `ce-<name>` header
//!   whose value is percent-encoded (space, `"`, `%` and anything outside
//!   printable ASCII), and `datacontenttype` is `Content-Type` (set to
//!   `application/json` when the JSON format implied it).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::CorrelationId;

/// The spec version this module reads.
pub const SPEC_VERSION: &str = "1.0";

/// Attributes of the spec whose values are strings whatever the format.
const STRING_ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// Standard base64, padding optional: some producers leave it out.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An event's data, as it will be forwarded.
#[derive(Debug, Clone)]
pub enum Data {
    /// No data: an empty body.
    None,
    /// A JSON value, forwarded as its text.
    Json(Box<RawValue>),
    /// Bytes, forwarded exactly.
    Bytes(Vec<u8>),
}

/// A validated CloudEvent.
#[derive(Debug, Clone)]
pub struct CloudEvent {
    /// Every context attribute, in its canonical string form.
    pub attributes: BTreeMap<String, String>,
    /// The data.
    pub data: Data,
}

impl CloudEvent {
    /// Reads an event in the JSON format (`application/cloudevents+json`).
    ///
    /// # Errors
    /// What makes it not a valid CloudEvent.
    pub fn structured(body: &[u8]) -> Result<Self, String> {
        let members: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not a JSON object: {e}"))?;
        let mut attributes = BTreeMap::new();
        let (mut data, mut data_base64) = (None, None);
        for (name, raw) in members {
            match name.as_str() {
                "data" => data = Some(raw),
                "data_base64" => data_base64 = Some(raw),
                _ => {
                    if let Some(v) = attribute_value(&name, &raw)? {
                        attributes.insert(name, v);
                    }
                }
            }
        }
        check_attributes(&attributes)?;
        let data = match (data, data_base64) {
            (Some(_), Some(_)) => {
                return Err("`data` and `data_base64` must not both be present".into());
            }
            (None, None) => Data::None,
            (None, Some(encoded)) => decode_base64(&encoded)?,
            (Some(data), None) => json_data(data, attributes.get("datacontenttype"))?,
        };
        Ok(Self { attributes, data })
    }

    /// Reads an event in binary mode: attributes from `ce_<name>` or
    /// `ce-<name>` message attributes (any case), `datacontenttype` from
    /// `content-type` (or `content_type`), the body as the data.
    ///
    /// # Errors
    /// What makes it not a valid CloudEvent.
    pub fn binary(message: &BTreeMap<String, String>, body: &[u8]) -> Result<Self, String> {
        let mut attributes = BTreeMap::new();
        for (key, value) in message {
            let lower = key.to_ascii_lowercase();
            let name = match lower
                .strip_prefix("ce_")
                .or_else(|| lower.strip_prefix("ce-"))
            {
                Some(name) => name,
                None if lower == "content-type" || lower == "content_type" => "datacontenttype",
                None => continue,
            };
            check_name(name)?;
            attributes.insert(name.to_owned(), value.clone());
        }
        check_attributes(&attributes)?;
        let declared_json = attributes
            .get("datacontenttype")
            .is_some_and(|ct| is_json_type(ct));
        let json = declared_json
            .then(|| std::str::from_utf8(body).ok())
            .flatten()
            .and_then(|text| RawValue::from_string(text.trim().to_owned()).ok());
        let data = match json {
            Some(json) => Data::Json(json),
            None if body.is_empty() => Data::None,
            None => Data::Bytes(body.to_vec()),
        };
        Ok(Self { attributes, data })
    }

    /// The derived correlation id: `ce:<source length>:<source><id>`, so
    /// every delivery of one event (unique by `source` + `id`) is one request.
    #[must_use]
    pub fn correlation_id(&self) -> CorrelationId {
        let source = self.attr("source");
        let name = format!("ce:{}:{source}{}", source.len(), self.attr("id"));
        CorrelationId::derived(name.as_bytes())
    }

    fn attr(&self, name: &str) -> &str {
        self.attributes.get(name).map_or("", String::as_str)
    }

    /// The event's headers in the HTTP binding's binary mode.
    #[must_use]
    pub fn http_headers(&self) -> BTreeMap<String, String> {
        let mut headers = BTreeMap::new();
        for (name, value) in &self.attributes {
            if name == "datacontenttype" {
                headers.insert("Content-Type".to_owned(), value.clone());
            } else {
                headers.insert(format!("ce-{name}"), header_value(value));
            }
        }
        if matches!(self.data, Data::Json(_)) && !self.attributes.contains_key("datacontenttype") {
            headers.insert("Content-Type".to_owned(), "application/json".to_owned());
        }
        headers
    }
}

/// Whether a media type declares JSON: `*/json` or `*/*+json`, parameters aside.
#[must_use]
pub fn is_json_type(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence
        .split_once('/')
        .is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
}

/// Whether a media type is a structured-mode CloudEvent.
#[must_use]
pub fn is_structured_type(content_type: &str) -> bool {
    essence(content_type) == "application/cloudevents+json"
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A `ce-*` header value: space, `"`, `%` and every byte outside printable
/// ASCII percent-encoded (HTTP binding §3.1.3.2).
#[must_use]
pub fn header_value(value: &str) -> String {
    encode(value, |b| {
        b == b' ' || b == b'"' || b == b'%' || !(0x21..=0x7e).contains(&b)
    })
}

/// A configured header's value: as it is, except bytes an HTTP field value
/// cannot carry (controls, DEL, non-ASCII), which are percent-encoded.
#[must_use]
pub fn field_value(value: &str) -> String {
    encode(value, |b| (b < 0x20 && b != b'\t') || b >= 0x7f)
}

fn encode(value: &str, escape: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if escape(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "attribute name `{name}` must be lowercase letters and digits"
        ))
    }
}

/// One member's value as a canonical attribute string; `None` for `null`.
fn attribute_value(name: &str, raw: &RawValue) -> Result<Option<String>, String> {
    check_name(name)?;
    let value: Value = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let must_be_string = STRING_ATTRIBUTES.contains(&name);
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ if must_be_string => Err(format!("`{name}` must be a string")),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Ok(Some(i.to_string())),
            None => Err(format!("`{name}` must be a 32-bit integer, got {n}")),
        },
        Value::Array(_) | Value::Object(_) => Err(format!(
            "`{name}` must be a string, a boolean or an integer"
        )),
    }
}

fn check_attributes(a: &BTreeMap<String, String>) -> Result<(), String> {
    match a.get("specversion").map(String::as_str) {
        Some(SPEC_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "specversion `{other}` is not supported (only {SPEC_VERSION})"
            ));
        }
        None => return Err("required attribute `specversion` is missing".into()),
    }
    for required in ["id", "source", "type"] {
        match a.get(required) {
            None => return Err(format!("required attribute `{required}` is missing")),
            Some(v) if v.is_empty() => return Err(format!("`{required}` must not be empty")),
            Some(_) => {}
        }
    }
    for optional in ["subject", "dataschema", "datacontenttype"] {
        if a.get(optional).is_some_and(String::is_empty) {
            return Err(format!("`{optional}` must not be empty when present"));
        }
    }
    if let Some(ct) = a.get("datacontenttype")
        && !essence(ct).contains('/')
    {
        return Err(format!("`datacontenttype` `{ct}` is not a media type"));
    }
    if let Some(t) = a.get("time")
        && !is_rfc3339(t)
    {
        return Err(format!("`time` `{t}` is not an RFC 3339 timestamp"));
    }
    Ok(())
}

fn decode_base64(encoded: &RawValue) -> Result<Data, String> {
    let text: Option<String> = serde_json::from_str(encoded.get())
        .map_err(|_| "`data_base64` must be a string".to_owned())?;
    match text {
        None => Ok(Data::None),
        Some(text) => BASE64
            .decode(text.trim())
            .map(Data::Bytes)
            .map_err(|e| format!("`data_base64` is not base64: {e}")),
    }
}

fn json_data(data: Box<RawValue>, content_type: Option<&String>) -> Result<Data, String> {
    if content_type.is_none_or(|ct| is_json_type(ct)) {
        return Ok(Data::Json(data));
    }
    match serde_json::from_str::<String>(data.get()) {
        Ok(text) => Ok(Data::Bytes(text.into_bytes())),
        Err(_) => Err(format!(
            "`data` must be a string when `datacontenttype` ({}) is not JSON",
            content_type.map_or("", String::as_str)
        )),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, as RFC 3339 §5.6 gives it.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|d| d.len() == range.len() && d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    let date_time = digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19);
    if !date_time {
        return false;
    }
    let mut i = 19;
    if at(i, b".") {
        let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return false;
        }
        i += 1 + frac;
    }
    let zone = &b[i..];
    zone.eq_ignore_ascii_case(b"z")
        || (zone.len() == 6
            && at(i, b"+-")
            && digits(i + 1..i + 3)
            && at(i + 3, b":")
            && digits(i + 4..i + 6))
}
