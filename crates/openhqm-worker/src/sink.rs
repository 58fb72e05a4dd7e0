//! Completion sinks: what else happens when a request finishes.
//!
//! The pool calls every [`CompletionSink`] once the terminal status is stored
//! and before the delivery is settled ("store before settle", extended). If a
//! sink fails, the delivery is handed back for a retry instead of being
//! settled; the redelivery finds the request finished and runs the sinks
//! again before acking. So a sink sees every finished request at least once,
//! and sometimes twice: a sink must tolerate duplicates, and should do no more
//! than a durable hand-off (a queue publish), leaving slow work such as HTTP
//! calls to whoever consumes what it published.
//!
//! Only COMPLETED, FAILED and TIMEOUT reach the sinks ([`notifies`]); a
//! CANCELLED request was never processed and has nothing to report.

use std::sync::Arc;

use async_trait::async_trait;
use openhqm_core::{Envelope, RequestRecord, RequestStatus};
use openhqm_metrics::QueueMetrics;
use openhqm_queue::{OutgoingMessage, QueueBackend};

/// Why a sink could not take a finished request; the delivery is retried.
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// The sink's [`CompletionSink::name`].
    pub sink: &'static str,
    /// What went wrong, for the logs.
    pub message: String,
    /// Whether trying again may help. A sink that can never take this
    /// request (a reply too large for its queue) does not hold its message:
    /// the request is settled without it, and the error logged and counted.
    pub retryable: bool,
}

/// Something told about every finished request.
#[async_trait]
pub trait CompletionSink: Send + Sync + 'static {
    /// A short, stable name for logs.
    fn name(&self) -> &'static str;

    /// Takes a finished request. Called after its terminal record is stored
    /// and before its delivery is settled, possibly more than once.
    ///
    /// # Errors
    /// If the hand-off did not happen; the pool then retries the delivery.
    async fn finished(&self, envelope: &Envelope, record: &RequestRecord) -> Result<(), SinkError>;
}

/// Whether a request in `status` is reported to the sinks.
#[must_use]
pub fn notifies(status: RequestStatus) -> bool {
    matches!(
        status,
        RequestStatus::Completed | RequestStatus::Failed | RequestStatus::Timeout
    )
}

/// Publishes each finished request to a reply queue (`queue.response_queue_name`)
/// for consumers on the queue side.
///
/// The body is the JSON of `GET /api/v1/response/{id}`; the attributes carry
/// `correlation_id` and `status`, so a consumer can route without parsing.
pub struct ReplyQueueSink {
    queue: Arc<dyn QueueBackend>,
    metrics: QueueMetrics,
}

impl ReplyQueueSink {
    /// A sink publishing on `queue`, counted in `metrics` (the reply queue's).
    #[must_use]
    pub fn new(queue: Arc<dyn QueueBackend>, metrics: QueueMetrics) -> Self {
        Self { queue, metrics }
    }
}

#[async_trait]
impl CompletionSink for ReplyQueueSink {
    fn name(&self) -> &'static str {
        "reply_queue"
    }

    async fn finished(&self, _: &Envelope, record: &RequestRecord) -> Result<(), SinkError> {
        let message = OutgoingMessage {
            body: record.response_body().to_string().into(),
            attributes: [
                (
                    "correlation_id".to_owned(),
                    record.correlation_id.to_string(),
                ),
                ("status".to_owned(), record.status.to_string()),
            ]
            .into(),
            ..OutgoingMessage::default()
        };
        match self.queue.publish(message).await {
            Ok(()) => {
                self.metrics.publish_ok.inc();
                Ok(())
            }
            Err(e) => {
                self.metrics.publish_error.inc();
                Err(SinkError {
                    sink: self.name(),
                    message: e.to_string(),
                    retryable: !e.never_fits(),
                })
            }
        }
    }
}
