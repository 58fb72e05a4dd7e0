//! What the result store keeps about one request.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::rfc3339_ms;
use crate::{CorrelationId, RequestStatus, body};

/// The outcome of a finished request (the `/response` fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultData {
    /// The backend's or processor's body: JSON as JSON, text as
    /// `{"response", "content_type"}`.
    #[serde(default)]
    pub result: Option<Value>,
    /// Response headers; a repeated header is a JSON array of its values.
    #[serde(default)]
    pub headers: Option<serde_json::Map<String, Value>>,
    /// The backend's HTTP status, if there was one.
    #[serde(default)]
    pub status_code: Option<u16>,
    /// Why the request failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Time spent in the last attempt.
    #[serde(default)]
    pub processing_time_ms: Option<u64>,
    /// When the request reached a terminal status (epoch ms).
    #[serde(default)]
    pub completed_at_ms: Option<u64>,
    /// The backend's body byte for byte (base64), kept only for passthrough
    /// requests, whose caller gets the backend's exact answer back. When
    /// set, it is the body, and `result` is shown from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<String>,
    /// Kept with `raw_body`: the headers whose values are not UTF-8
    /// (obs-text, RFC 9110 §5.5), which `headers` can only show lossily.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_headers: Option<RawHeaders>,
}

/// Header values byte for byte: every value (base64) of each name that has
/// one that is not UTF-8.
pub type RawHeaders = std::collections::BTreeMap<String, Vec<String>>;

impl ResultData {
    /// Keeps a body: its exact bytes (base64) if there are any, which are
    /// then the body and `result` is not stored, else `result`.
    pub fn set_body(&mut self, result: Value, raw_body: Option<String>) {
        self.result = raw_body.is_none().then_some(result);
        self.raw_body = raw_body;
    }

    /// The result as clients see it: kept exact bytes shown by the
    /// `content-type` among `headers` (the body is stored once, however
    /// large), else `result` (also if the bytes are not base64).
    #[must_use]
    pub fn shown_result(&self) -> Option<Value> {
        self.raw_body
            .as_deref()
            .and_then(|raw| body::shown_exact(raw, self.headers.as_ref()))
            .or_else(|| self.result.clone())
    }
}

/// Status and, once finished, result of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The request.
    pub correlation_id: CorrelationId,
    /// Where it is.
    pub status: RequestStatus,
    /// Accepted at (epoch ms).
    pub submitted_at_ms: u64,
    /// Last status change (epoch ms).
    pub updated_at_ms: u64,
    /// Delivery attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    /// Set once the request is terminal (and for the last error of a retry).
    /// Boxed: a record is moved many times on its way through the store and
    /// its waiters, and 96 bytes move inline where 272 take a `memcpy`.
    #[serde(default)]
    pub outcome: Option<Box<ResultData>>,
    /// The redrive (its time, epoch ms) that last reopened the request: each
    /// redrive reopens it once, however often its message is redelivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redriven_at_ms: Option<u64>,
    /// While PROCESSING: whose delivery runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<Hold>,
}

/// The message whose delivery is processing a request, until its attempt's
/// deadline at the latest. Another message naming the same request (a
/// producer's duplicate, a foreign message sent twice) waits meanwhile
/// instead of running it a second time; the same message, redelivered
/// after its worker died, takes over at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The queue's stable id of the message.
    pub message_id: String,
    /// Epoch ms after which the hold is void (its worker is gone).
    pub until_ms: u64,
}

impl RequestRecord {
    /// A freshly accepted request.
    #[must_use]
    pub fn pending(correlation_id: CorrelationId, submitted_at_ms: u64) -> Self {
        Self {
            correlation_id,
            status: RequestStatus::Pending,
            submitted_at_ms,
            updated_at_ms: submitted_at_ms,
            attempts: 0,
            outcome: None,
            redriven_at_ms: None,
            held_by: None,
        }
    }

    /// Reads a record a store wrote, however deep its result nests.
    ///
    /// serde_json refuses JSON nested deeper than 128 levels, and a result
    /// parsed within that limit (a processor's output, a backend's JSON
    /// answer) sits a few levels down in its record: read with the limit, a
    /// record could be written but never read back. The limit stays off only
    /// here, for JSON this process family wrote, whose depth is bounded by
    /// those parsers, so the stack is safe.
    ///
    /// # Errors
    /// When `json` is not a record.
    pub fn from_stored(json: &[u8]) -> serde_json::Result<Self> {
        let mut de = serde_json::Deserializer::from_slice(json);
        de.disable_recursion_limit();
        let record = Self::deserialize(&mut de)?;
        de.end()?;
        Ok(record)
    }

    /// The body of `GET /api/v1/response/{id}` for a finished request; the
    /// same JSON is what completion callbacks and the reply queue carry.
    #[must_use]
    pub fn response_body(&self) -> Value {
        let none = ResultData::default();
        let outcome = self.outcome.as_deref().unwrap_or(&none);
        serde_json::json!({
            "correlation_id": self.correlation_id,
            "status": self.status,
            "result": outcome.shown_result(),
            "headers": outcome.headers,
            "status_code": outcome.status_code,
            "error": outcome.error,
            "processing_time_ms": outcome.processing_time_ms,
            "completed_at": outcome.completed_at_ms.map(rfc3339_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_result_is_shown_from_the_exact_bytes_else_as_stored() {
        let headers = json!({"content-type": "application/json"})
            .as_object()
            .cloned();
        // An older build stored both: the bytes win, and agree.
        let both = ResultData {
            result: Some(json!({"a": 1})),
            raw_body: Some("eyJhIjoxfQ==".into()),
            headers: headers.clone(),
            ..ResultData::default()
        };
        assert_eq!(both.shown_result(), Some(json!({"a": 1})));
        let garbled = ResultData {
            result: Some(json!("kept")),
            raw_body: Some("not base64!".into()),
            headers,
            ..ResultData::default()
        };
        assert_eq!(garbled.shown_result(), Some(json!("kept")));
    }
}
