//! Plugging your own processing logic into OpenHQM.
//!
//! This is a complete OpenHQM binary (same CLI, config, API, queue and
//! retries) whose workers count words instead of running the demo operations.
//! Run it with `cargo run --example custom_processor -- serve`, then submit
//! `{"payload": {"text": "to be or not to be"}}`.
//!
//! A processor returns an `Output` or a `Failure`; the worker pool decides
//! retries from the failure's kind, so the processor never retries itself.

use std::sync::Arc;

use async_trait::async_trait;
use openhqm::{Output, Processor, Request};
use openhqm_core::{Failure, FailureKind};
use serde_json::{Value, json};

struct WordCount;

#[async_trait]
impl Processor for WordCount {
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure> {
        let payload: Value = serde_json::from_str(request.envelope.payload.get()).map_err(|e| {
            Failure::new(FailureKind::Permanent, format!("payload is not JSON: {e}"))
        })?;
        let text = payload
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::new(FailureKind::Permanent, "payload needs a string `text`"))?;
        Ok(Output::json(
            json!({ "words": text.split_whitespace().count() }),
        ))
    }
}

fn main() -> std::process::ExitCode {
    openhqm::main_with(Arc::new(WordCount))
}
