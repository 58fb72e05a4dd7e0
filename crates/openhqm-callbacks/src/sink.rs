//! The completion sink that turns a finished request into a callback job.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use openhqm_core::{CallbackPolicy, CorrelationId, Envelope, RequestRecord};
use openhqm_metrics::{CallbackMetrics, QueueMetrics};
use openhqm_queue::{OutgoingMessage, QueueBackend};
use openhqm_worker::{CompletionSink, SinkError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One callback to deliver, as it travels on the callback queue.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallbackJob {
    /// The `webhook-id` header: `msg_<correlation id>_<status>` (with
    /// `_r<redrive time>` once the request was redriven), the same for every
    /// attempt and every duplicate.
    pub webhook_id: String,
    /// Where to POST.
    pub url: String,
    /// The request reported on.
    pub correlation_id: CorrelationId,
    /// The POST body: the JSON of `GET /api/v1/response/{id}`, byte for byte
    /// as signed.
    pub body: Box<RawValue>,
}

impl CallbackJob {
    /// The job reporting `record` to `url`.
    ///
    /// # Errors
    /// Only if the record cannot be rendered as JSON, which its types rule out.
    pub fn new(url: String, record: &RequestRecord) -> serde_json::Result<Self> {
        let body = RawValue::from_string(record.response_body().to_string())?;
        let mut webhook_id = format!(
            "msg_{}_{}",
            record.correlation_id,
            record.status.as_str().to_ascii_lowercase()
        );
        // A redriven request finishes again, maybe differently: a new
        // message for receivers that deduplicate by id.
        if let Some(at) = record.redriven_at_ms {
            let _ = write!(webhook_id, "_r{at}");
        }
        Ok(Self {
            webhook_id,
            url,
            correlation_id: record.correlation_id,
            body,
        })
    }
}

/// Per-endpoint callback URLs (`proxy.endpoints.<name>.callback_url`), used
/// when a request names none itself.
#[derive(Debug, Clone, Default)]
pub struct EndpointCallbacks {
    /// Endpoint name → callback URL.
    pub urls: BTreeMap<String, String>,
    /// The endpoint a request without `metadata.endpoint` goes to.
    pub default_endpoint: Option<String>,
}

impl EndpointCallbacks {
    fn url_for(&self, envelope: &Envelope) -> Option<&str> {
        let endpoint = envelope
            .metadata
            .endpoint
            .as_ref()
            .or(self.default_endpoint.as_ref())?;
        self.urls.get(endpoint).map(String::as_str)
    }
}

/// Publishes a [`CallbackJob`] for each finished request that asked for one.
pub struct CallbackSink {
    queue: Arc<dyn QueueBackend>,
    policy: CallbackPolicy,
    endpoints: EndpointCallbacks,
    queue_metrics: QueueMetrics,
    metrics: CallbackMetrics,
}

impl CallbackSink {
    /// A sink publishing on `queue` (the callback queue).
    #[must_use]
    pub fn new(
        queue: Arc<dyn QueueBackend>,
        policy: CallbackPolicy,
        endpoints: EndpointCallbacks,
        metrics: (QueueMetrics, CallbackMetrics),
    ) -> Self {
        let (queue_metrics, metrics) = metrics;
        Self {
            queue,
            policy,
            endpoints,
            queue_metrics,
            metrics,
        }
    }
}

#[async_trait]
impl CompletionSink for CallbackSink {
    fn name(&self) -> &'static str {
        "callbacks"
    }

    async fn finished(&self, envelope: &Envelope, record: &RequestRecord) -> Result<(), SinkError> {
        let Some(url) = envelope
            .metadata
            .callback_url
            .as_deref()
            .or_else(|| self.endpoints.url_for(envelope))
        else {
            return Ok(());
        };
        let error = |message: String, retryable: bool| SinkError {
            sink: "callbacks",
            message,
            retryable,
        };
        // Submit checked it already, but a foreign producer's message never
        // went through submit, and the list may have changed since.
        if let Err(e) = self.policy.check(url) {
            self.metrics.skipped.inc();
            tracing::warn!(error = %e, "callback not queued");
            return Ok(());
        }
        let job =
            CallbackJob::new(url.to_owned(), record).map_err(|e| error(e.to_string(), false))?;
        let body = serde_json::to_vec(&job).map_err(|e| error(e.to_string(), false))?;
        let message = OutgoingMessage {
            body: body.into(),
            attributes: [(
                "correlation_id".to_owned(),
                record.correlation_id.to_string(),
            )]
            .into(),
            ..OutgoingMessage::default()
        };
        match self.queue.publish(message).await {
            Ok(()) => {
                self.queue_metrics.publish_ok.inc();
                self.metrics.enqueued.inc();
                tracing::debug!(webhook_id = %job.webhook_id, "callback queued");
                Ok(())
            }
            Err(e) => {
                self.queue_metrics.publish_error.inc();
                Err(error(e.to_string(), !e.never_fits()))
            }
        }
    }
}
