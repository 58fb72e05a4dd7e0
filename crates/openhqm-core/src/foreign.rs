//! Messages an outside producer wrote in its own shape, turned into envelopes.
//!
//! A worker-only deployment can bridge a queue that other systems write to
//! ("Kafka-to-REST bridge", "webhook relay"). `queue.message_format` says
//! what is on it:
//! - `envelope` (the default): OpenHQM's envelope, as submitted through the
//!   API or written by a producer (`XADD ... payload '<envelope JSON>'`);
//! - `raw`: any JSON value, forwarded as the body;
//! - `cloudevents`: CloudEvents 1.0 in structured mode (the JSON format,
//!   [`cloudevents`]) or binary mode (attributes as `ce_*` / `ce-*` message
//!   attributes, the body is the data);
//! - `auto`: each message is looked at: `ce_specversion` / `ce-specversion`
//!   attribute → binary CloudEvent; a `content-type` attribute of
//!   `application/cloudevents+json`, or a JSON object with `specversion` →
//!   structured CloudEvent; a JSON object with `correlation_id` and `payload`
//!   → envelope; anything else → raw.
//!
//! A foreign message becomes an envelope whose correlation id is derived
//! ([`CorrelationId::derived`]) so that a redelivery is the same request:
//! from the CloudEvent's `source` and `id` (which the spec makes unique per
//! event) or else from the queue and the queue's message id. Its headers go
//! to [`Envelope::derived_headers`]: a CloudEvent's attributes as the HTTP
//! binding's binary mode (`ce-<name>`, `Content-Type` from
//! `datacontenttype`), plus the configured `attribute → header` mappings.
//!
//! Decoding is a pure function: anything it refuses is a message no retry can
//! fix, and the error says why (the dead-letter reason).

pub mod cloudevents;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::ENVELOPE_VERSION;
use crate::{CorrelationId, Envelope, Metadata};
use cloudevents::{CloudEvent, Data};

/// What the request queue carries (`queue.message_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageFormat {
    /// OpenHQM envelopes only.
    #[default]
    Envelope,
    /// Any JSON value (or other bytes with a `content-type` attribute).
    Raw,
    /// CloudEvents 1.0, structured or binary mode.
    Cloudevents,
    /// Decided per message.
    Auto,
}

impl MessageFormat {
    /// The config spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Envelope => "envelope",
            Self::Raw => "raw",
            Self::Cloudevents => "cloudevents",
            Self::Auto => "auto",
        }
    }
}

/// The shape a message turned out to have; bounded, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An OpenHQM envelope.
    Envelope,
    /// A raw body.
    Raw,
    /// A CloudEvent in the JSON format.
    CloudEventStructured,
    /// A CloudEvent whose attributes are message attributes.
    CloudEventBinary,
}

/// A message as the queue delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The queue's id for the message, stable across redeliveries.
    pub id: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// The message's attributes (for Redis Streams, the entry's other fields).
    pub attributes: &'a BTreeMap<String, String>,
}

/// A decoded message.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// What it was.
    pub shape: Shape,
    /// The request it stands for.
    pub envelope: Envelope,
}

/// Why a message cannot become a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not an OpenHQM envelope.
    #[error("malformed envelope: {0}")]
    Envelope(String),
    /// Not a valid CloudEvent.
    #[error("malformed CloudEvent: {0}")]
    CloudEvent(String),
    /// A raw message whose body cannot be forwarded as it is.
    #[error("malformed raw message: {0}")]
    Raw(String),
}

/// Turns queue messages into envelopes (`queue.message_format` and
/// `worker.foreign.*`).
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// What the queue carries.
    pub format: MessageFormat,
    /// The queue's name; part of a raw message's derived id.
    pub queue: String,
    /// Endpoint for foreign messages (`metadata.endpoint`); `None` = default.
    pub endpoint: Option<String>,
    /// Attribute name → header name, for foreign messages. A CloudEvent's own
    /// attributes are looked up first, then the message's attributes.
    pub attribute_headers: BTreeMap<String, String>,
}

impl Decoder {
    /// Decodes one message.
    ///
    /// # Errors
    /// Why the message is not of the configured format; it cannot succeed later.
    pub fn decode(&self, m: &Incoming<'_>) -> Result<Decoded, DecodeError> {
        let shape = match self.format {
            MessageFormat::Envelope => Shape::Envelope,
            MessageFormat::Raw => Shape::Raw,
            MessageFormat::Cloudevents if is_binary_cloudevent(m.attributes) => {
                Shape::CloudEventBinary
            }
            MessageFormat::Cloudevents => Shape::CloudEventStructured,
            MessageFormat::Auto => detect(m),
        };
        let envelope = match shape {
            Shape::Envelope => {
                Envelope::from_json(m.body).map_err(|e| DecodeError::Envelope(e.to_string()))?
            }
            Shape::Raw => self.raw(m)?,
            Shape::CloudEventStructured => {
                let ce = CloudEvent::structured(m.body).map_err(DecodeError::CloudEvent)?;
                self.cloud_event(&ce, m)
            }
            Shape::CloudEventBinary => {
                let ce =
                    CloudEvent::binary(m.attributes, m.body).map_err(DecodeError::CloudEvent)?;
                self.cloud_event(&ce, m)
            }
        };
        Ok(Decoded { shape, envelope })
    }

    /// The derived id of a raw message: `msg:<queue length>:<queue><message id>`.
    #[must_use]
    pub fn raw_id(&self, message_id: &str) -> CorrelationId {
        let name = format!("msg:{}:{}{message_id}", self.queue.len(), self.queue);
        CorrelationId::derived(name.as_bytes())
    }

    fn raw(&self, m: &Incoming<'_>) -> Result<Envelope, DecodeError> {
        let declared = content_type_attribute(m.attributes);
        let mut headers = BTreeMap::new();
        // A body declared as something other than JSON goes byte for byte,
        // even if it happens to parse as JSON.
        let json = declared
            .is_none_or(cloudevents::is_json_type)
            .then(|| std::str::from_utf8(m.body).ok())
            .flatten()
            .and_then(|text| RawValue::from_string(text.trim().to_owned()).ok());
        let data = match (json, declared) {
            (Some(json), declared) => {
                let ct = declared.unwrap_or("application/json");
                headers.insert("Content-Type".to_owned(), ct.to_owned());
                Data::Json(json)
            }
            (None, Some(ct)) => {
                headers.insert("Content-Type".to_owned(), ct.to_owned());
                Data::Bytes(m.body.to_vec())
            }
            (None, None) => {
                return Err(DecodeError::Raw(
                    "the body is not JSON and no `content-type` attribute says what it is".into(),
                ));
            }
        };
        self.map_attributes(&BTreeMap::new(), m.attributes, &mut headers);
        Ok(self.envelope(self.raw_id(m.id), data, headers, None))
    }

    fn cloud_event(&self, ce: &CloudEvent, m: &Incoming<'_>) -> Envelope {
        let mut headers = ce.http_headers();
        self.map_attributes(&ce.attributes, m.attributes, &mut headers);
        let time = ce.attributes.get("time").cloned().map(Into::into);
        self.envelope(ce.correlation_id(), ce.data.clone(), headers, time)
    }

    fn map_attributes(
        &self,
        first: &BTreeMap<String, String>,
        then: &BTreeMap<String, String>,
        headers: &mut BTreeMap<String, String>,
    ) {
        for (attribute, header) in &self.attribute_headers {
            if let Some(v) = first.get(attribute).or_else(|| then.get(attribute)) {
                headers.retain(|k, _| !k.eq_ignore_ascii_case(header));
                headers.insert(header.clone(), cloudevents::field_value(v));
            }
        }
    }

    fn envelope(
        &self,
        id: CorrelationId,
        data: Data,
        headers: BTreeMap<String, String>,
        timestamp: Option<serde_json::Value>,
    ) -> Envelope {
        let (payload, raw_body) = match data {
            Data::Json(json) => (json, None),
            Data::Bytes(bytes) => (null(), Some(BASE64.encode(bytes))),
            Data::None => (null(), Some(String::new())),
        };
        Envelope {
            v: ENVELOPE_VERSION,
            correlation_id: id,
            payload,
            headers: None,
            timestamp,
            metadata: Metadata {
                endpoint: self.endpoint.clone(),
                ..Metadata::default()
            },
            raw_body,
            binary_headers: std::collections::BTreeMap::new(),
            passthrough: false,
            idempotency_key: None,
            derived_headers: headers,
        }
    }
}

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("`null` is JSON"))
}

/// The message's `content-type` (or `content_type`) attribute.
fn content_type_attribute(attributes: &BTreeMap<String, String>) -> Option<&str> {
    attributes
        .iter()
        .find(|(k, _)| {
            k.eq_ignore_ascii_case("content-type") || k.eq_ignore_ascii_case("content_type")
        })
        .map(|(_, v)| v.as_str())
}

fn is_binary_cloudevent(attributes: &BTreeMap<String, String>) -> bool {
    attributes.keys().any(|k| {
        k.eq_ignore_ascii_case("ce_specversion") || k.eq_ignore_ascii_case("ce-specversion")
    })
}

/// The members `auto` looks at; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Probe {
    specversion: Option<serde::de::IgnoredAny>,
    correlation_id: Option<serde::de::IgnoredAny>,
    payload: Option<serde::de::IgnoredAny>,
}

fn detect(m: &Incoming<'_>) -> Shape {
    if is_binary_cloudevent(m.attributes) {
        return Shape::CloudEventBinary;
    }
    if content_type_attribute(m.attributes).is_some_and(cloudevents::is_structured_type) {
        return Shape::CloudEventStructured;
    }
    let object = m.body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match serde_json::from_slice::<Probe>(m.body) {
        Ok(p) if object && p.specversion.is_some() => Shape::CloudEventStructured,
        Ok(p) if object && p.correlation_id.is_some() && p.payload.is_some() => Shape::Envelope,
        _ => Shape::Raw,
    }
}

#[cfg(test)]
mod tests;
