//! The processor trait: what a worker does with one request.
//!
//! Implement [`Processor`] to plug in your own logic (see
//! `examples/custom_processor.rs`). A processor returns an [`Output`] or a
//! [`Failure`]: the worker turns a failure into a retry or a dead letter by
//! its kind, so a processor never retries by itself.

use std::time::Duration;

use async_trait::async_trait;
use openhqm_core::{Envelope, Failure, ResultData};
use serde_json::{Map, Value};

/// One attempt at one request.
#[derive(Debug)]
pub struct Request<'a> {
    /// The request as submitted.
    pub envelope: &'a Envelope,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// How long this attempt may take; the worker enforces it.
    pub timeout: Duration,
}

/// What a successful attempt produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// The result body: any JSON value.
    pub result: Value,
    /// An HTTP status to report, if the processor talked HTTP.
    pub status_code: Option<u16>,
    /// Response headers to report.
    pub headers: Option<Map<String, Value>>,
    /// The body's exact bytes (base64), when the caller needs them back
    /// verbatim (passthrough requests). When set, they are the body: the
    /// result is shown from them by the `content-type` of `headers`, and
    /// `result` is not stored.
    pub raw_body: Option<String>,
    /// With `raw_body`: the headers `headers` shows lossily, byte for byte.
    pub raw_headers: Option<openhqm_core::RawHeaders>,
}

impl Output {
    /// A result with just a body.
    #[must_use]
    pub fn json(result: Value) -> Self {
        Self {
            result,
            ..Self::default()
        }
    }

    /// The result as clients will see it: `raw_body`, if set, shown by its
    /// content type, else `result`.
    #[must_use]
    pub fn shown_result(&self) -> Value {
        self.raw_body
            .as_deref()
            .and_then(|raw| openhqm_core::body::shown_exact(raw, self.headers.as_ref()))
            .unwrap_or_else(|| self.result.clone())
    }

    pub(crate) fn into_result_data(
        self,
        processing_time_ms: u64,
        completed_at_ms: u64,
    ) -> ResultData {
        let mut data = ResultData {
            headers: self.headers,
            status_code: self.status_code,
            processing_time_ms: Some(processing_time_ms),
            completed_at_ms: Some(completed_at_ms),
            ..ResultData::default()
        };
        data.set_body(self.result, self.raw_body);
        data.raw_headers = self.raw_headers;
        data
    }
}

/// Processing logic run by the worker pool.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// Processes one attempt.
    ///
    /// # Errors
    /// A [`Failure`] whose kind says whether trying again can help.
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure>;

    /// Retries this request may have instead of `worker.max_retries` (e.g. a
    /// proxy endpoint's own `max_retries`); `None` keeps the pool's setting.
    fn max_retries(&self, envelope: &Envelope) -> Option<u32> {
        let _ = envelope;
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn exact_bytes_are_the_one_stored_body() {
        let out = Output {
            result: json!({"parsed": true}),
            headers: json!({"content-type": "application/json"})
                .as_object()
                .cloned(),
            raw_body: Some("eyJhIjoxfQ==".into()),
            ..Output::default()
        };
        assert_eq!(out.shown_result(), json!({"a": 1}));
        let stored = out.into_result_data(1, 2);
        assert_eq!(stored.result, None, "not stored twice");
        assert_eq!(stored.shown_result(), Some(json!({"a": 1})));
        let plain = Output::json(json!([1])).into_result_data(1, 2);
        assert_eq!(plain.shown_result(), Some(json!([1])));
    }
}
