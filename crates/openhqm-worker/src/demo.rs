//! The built-in demo processor: the operations of the quick start.
//!
//! A payload `{"operation": "...", "data": ...}` runs the operation; any other
//! payload is echoed. `sleep` and `fail` exist to show timeouts, draining,
//! retries and dead letters with nothing but curl.

use std::time::Duration;

use async_trait::async_trait;
use openhqm_core::{Failure, FailureKind};
use serde_json::{Value, json};

use crate::{Output, Processor, Request};

/// Longest `sleep` the demo honours.
const MAX_SLEEP_MS: u64 = 600_000;

/// Answers `echo`, `uppercase`, `reverse`, `sleep` and `fail`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DemoProcessor;

fn permanent(message: String) -> Failure {
    Failure::new(FailureKind::Permanent, message)
}

fn uppercase(data: &Value) -> Result<Value, Failure> {
    match data {
        Value::String(s) => Ok(Value::String(s.to_uppercase())),
        Value::Array(items) => items
            .iter()
            .map(uppercase)
            .collect::<Result<_, _>>()
            .map(Value::Array),
        other => Err(permanent(format!(
            "uppercase needs a string or an array of strings, got {other}"
        ))),
    }
}

fn reverse(data: &Value) -> Result<Value, Failure> {
    match data {
        Value::String(s) => Ok(Value::String(s.chars().rev().collect())),
        Value::Array(items) => Ok(Value::Array(items.iter().rev().cloned().collect())),
        other => Err(permanent(format!(
            "reverse needs a string or an array, got {other}"
        ))),
    }
}

#[async_trait]
impl Processor for DemoProcessor {
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure> {
        // The payload was valid JSON at submit; what can still fail here is
        // serde_json's nesting limit (128 levels), which proxy mode, sending
        // the text as it came, does not have.
        let payload: Value = serde_json::from_str(request.envelope.payload.get())
            .map_err(|e| permanent(format!("the demo processor cannot read the payload: {e}")))?;
        let Some(operation) = payload.get("operation").and_then(Value::as_str) else {
            return Ok(Output::json(json!({ "output": payload })));
        };
        let data = payload.get("data").unwrap_or(&Value::Null);
        let output = match operation {
            "echo" => data.clone(),
            "uppercase" => uppercase(data)?,
            "reverse" => reverse(data)?,
            "sleep" => {
                let ms = match payload.get("ms") {
                    None | Some(Value::Null) => 1000,
                    Some(v) => v.as_u64().ok_or_else(|| {
                        permanent(format!(
                            "sleep needs `ms` as a whole number of milliseconds, got {v}"
                        ))
                    })?,
                }
                .min(MAX_SLEEP_MS);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                data.clone()
            }
            "fail" => {
                let message = payload
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("demo failure");
                let kind = match payload.get("permanent") {
                    None | Some(Value::Null | Value::Bool(false)) => FailureKind::Transient,
                    Some(Value::Bool(true)) => FailureKind::Permanent,
                    Some(v) => {
                        return Err(permanent(format!(
                            "fail needs `permanent` as true or false, got {v}"
                        )));
                    }
                };
                return Err(Failure::new(kind, message));
            }
            other => return Err(permanent(format!("unknown operation `{other}`"))),
        };
        Ok(Output::json(
            json!({ "operation": operation, "output": output }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use openhqm_core::{CorrelationId, Envelope, SubmitRequest};
    use serde_json::json;

    use super::*;

    async fn run(payload: Value) -> Result<Value, FailureKind> {
        let req: SubmitRequest =
            serde_json::from_value(json!({ "payload": payload })).expect("submit");
        let envelope = Envelope::from_submit(CorrelationId::new(), req, "now");
        let request = Request {
            envelope: &envelope,
            attempt: 1,
            timeout: Duration::from_secs(1),
        };
        DemoProcessor
            .process(&request)
            .await
            .map(|o| o.result)
            .map_err(|f| f.kind)
    }

    async fn check(payload: Value, expected: Result<Value, FailureKind>) {
        assert_eq!(run(payload.clone()).await, expected, "{payload}");
    }

    #[tokio::test]
    async fn operations() {
        check(
            json!({"operation": "echo", "data": "Hello"}),
            Ok(json!({"operation": "echo", "output": "Hello"})),
        )
        .await;
        check(
            json!({"operation": "uppercase", "data": "Hello"}),
            Ok(json!({"operation": "uppercase", "output": "HELLO"})),
        )
        .await;
        check(
            json!({"operation": "reverse", "data": "abc"}),
            Ok(json!({"operation": "reverse", "output": "cba"})),
        )
        .await;
        check(
            json!({"operation": "reverse", "data": [1, 2]}),
            Ok(json!({"operation": "reverse", "output": [2, 1]})),
        )
        .await;
        check(json!([1, 2, 3]), Ok(json!({"output": [1, 2, 3]}))).await;
        check(
            json!({"operation": "uppercase", "data": 1}),
            Err(FailureKind::Permanent),
        )
        .await;
        check(json!({"operation": "nope"}), Err(FailureKind::Permanent)).await;
        check(json!({"operation": "fail"}), Err(FailureKind::Transient)).await;
        check(
            json!({"operation": "fail", "permanent": true}),
            Err(FailureKind::Permanent),
        )
        .await;
        // Parameters of the wrong type fail for good, never a silent default.
        check(
            json!({"operation": "fail", "permanent": "no"}),
            Err(FailureKind::Permanent),
        )
        .await;
        for ms in [json!(-5), json!("abc"), json!(1.5)] {
            check(
                json!({"operation": "sleep", "ms": ms}),
                Err(FailureKind::Permanent),
            )
            .await;
        }
        check(
            json!({"operation": "sleep", "ms": 1, "data": "x"}),
            Ok(json!({"operation": "sleep", "output": "x"})),
        )
        .await;
    }
}
