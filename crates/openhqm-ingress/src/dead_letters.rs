//! The dead-letter queue, for operators. `GET /api/v1/dead-letters` lists the
//! oldest dead letters with why each was given up on;
//! `POST /api/v1/dead-letters/redrive` moves them back to the queue, where a
//! worker reopens each one's FAILED or TIMEOUT request and processes it again.
//! Both take `?limit=N` (default 100, at most 1000), oldest first.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use openhqm_core::time::rfc3339_ms;
use openhqm_core::{Decoder, Envelope, Incoming};
use openhqm_queue::DeadLetter;
use serde_json::{Value, json};

use crate::handlers::json_response;
use crate::{ApiState, Problem};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// `?limit=N`, checked.
fn limit(query: Option<&str>) -> Result<usize, Problem> {
    let Some(raw) = crate::query_param(query.unwrap_or_default(), "limit") else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(Problem::invalid_parameter(format!(
            "`limit` must be a whole number from 1 to {MAX_LIMIT}, not `{raw}`"
        ))),
    }
}

fn unavailable(state: &ApiState, e: &openhqm_queue::QueueError) -> Problem {
    tracing::warn!(error = %e, "dead-letter queue unavailable; answered 503");
    Problem::unavailable("queue", state.config.retry_after_secs)
}

/// One dead letter as the API shows it, with the request it stands for: its
/// message decoded as a worker decodes it (a foreign message's id is
/// derived), else the id an undecodable envelope names, if any.
fn describe(decoder: &Decoder, dead: &DeadLetter) -> Value {
    let message = &dead.message;
    let incoming = Incoming {
        id: &message.id,
        body: &message.body,
        attributes: &message.attributes,
    };
    let id = decoder
        .decode(&incoming)
        .map(|d| d.envelope.correlation_id)
        .ok()
        .or_else(|| Envelope::correlation_id_in(&message.body));
    json!({
        "message_id": message.id,
        "correlation_id": id,
        "reason": dead.reason,
        "attempt": dead.message.attempt,
        "dead_lettered_at": rfc3339_ms(dead.dead_lettered_at_ms),
    })
}

/// `GET /api/v1/dead-letters`.
pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let limit = limit(query.as_deref())?;
    let depth = state
        .queue
        .dead_letter_depth()
        .await
        .map_err(|e| unavailable(&state, &e))?;
    let dead = state
        .queue
        .dead_letters(limit)
        .await
        .map_err(|e| unavailable(&state, &e))?;
    let body = json!({
        "depth": depth,
        "dead_letters": dead
            .iter()
            .map(|d| describe(&state.config.decoder, d))
            .collect::<Vec<_>>(),
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// `POST /api/v1/dead-letters/redrive`.
pub(crate) async fn redrive(
    State(state): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let limit = limit(query.as_deref())?;
    let moved = state
        .queue
        .redrive(limit)
        .await
        .map_err(|e| unavailable(&state, &e))?;
    tracing::info!(moved, "dead letters redriven");
    Ok(json_response(StatusCode::OK, &json!({ "redriven": moved })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(id: &str, body: &str) -> DeadLetter {
        DeadLetter {
            message: openhqm_queue::Message {
                id: id.into(),
                body: body.as_bytes().to_vec().into(),
                attributes: Default::default(),
                attempt: 3,
            },
            reason: "backend answered 500".into(),
            dead_lettered_at_ms: 0,
        }
    }

    #[test]
    fn a_dead_letter_names_its_request_foreign_or_not() {
        let cloudevents = Decoder {
            format: openhqm_core::MessageFormat::Cloudevents,
            queue: "openhqm-requests".into(),
            ..Decoder::default()
        };
        let event = r#"{"specversion":"1.0","id":"v1","source":"/s","type":"t","data":{}}"#;
        let derived = cloudevents
            .decode(&Incoming {
                id: "1-0",
                body: event.as_bytes(),
                attributes: &Default::default(),
            })
            .expect("decodes")
            .envelope
            .correlation_id;
        let shown = describe(&cloudevents, &dead("1-0", event));
        assert_eq!(shown["correlation_id"], derived.to_string());
        // An envelope that no longer decodes still names its request.
        let id = openhqm_core::CorrelationId::new();
        let broken = format!(r#"{{"correlation_id":"{id}"}}"#);
        let shown = describe(&Decoder::default(), &dead("2", &broken));
        assert_eq!(shown["correlation_id"], id.to_string());
    }

    #[test]
    fn limit_defaults_and_is_bounded() {
        assert_eq!(limit(None).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(limit(Some("x=1")).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(limit(Some("limit=5")).ok(), Some(5));
        assert_eq!(limit(Some("a=b&limit=1000")).ok(), Some(1000));
        // Percent-encoded, in the name or the value.
        assert_eq!(limit(Some("limit=%31%30")).ok(), Some(10));
        assert_eq!(limit(Some("lim%69t=7")).ok(), Some(7));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=ten",
            "limit=",
            "limit",
        ] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
