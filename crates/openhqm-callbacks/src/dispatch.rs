//! The dispatcher: consumes the callback queue and POSTs each job.
//!
//! It runs the queue's [`consume`] loop, as the worker pool does, with
//! `callbacks.concurrency` jobs at once, and every job is settled by the queue
//! (ack, `Retry { delay }` or dead letter). Nothing waits in memory between
//! attempts, so a restart loses no callback and a long backoff costs nothing.
//! On shutdown POSTs in flight get the drain time; any cut off are
//! redelivered later.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openhqm_core::{Backoff, CallbackPolicy, Decision, Failure, FailureKind, decide};
use openhqm_metrics::{CallbackMetrics, QueueMetrics};
use openhqm_queue::{ConsumeConfig, Delivery, Nack, QueueBackend, consume};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use reqwest::{Client, StatusCode, redirect};
use tokio::sync::watch;
use tracing::Instrument;

use crate::signature::SigningKey;
use crate::sink::CallbackJob;

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// POSTs in flight at once.
    pub concurrency: usize,
    /// How long one POST may take; must stay under the queue's lease.
    pub timeout: Duration,
    /// Delays between attempts; `max_retries` is `callbacks.max_attempts - 1`.
    pub backoff: Backoff,
    /// How long POSTs in flight may finish after shutdown begins.
    pub drain: Duration,
    /// Delay before receiving again after the queue failed.
    pub unavailable_backoff: Duration,
}

/// Delivers the jobs of the callback queue.
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<dyn QueueBackend>,
    policy: CallbackPolicy,
    key: SigningKey,
    client: Client,
    config: DispatchConfig,
    metrics: CallbackMetrics,
    /// The callback queue's `openhqm_queue_*` counters.
    queue_metrics: QueueMetrics,
}

/// How one POST went.
enum Attempt {
    Delivered,
    Failed(Failure),
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Dispatcher {
    /// Assembles a dispatcher; nothing runs until [`Dispatcher::run`].
    ///
    /// # Errors
    /// If the HTTP client cannot be built (TLS setup).
    pub fn new(
        queue: Arc<dyn QueueBackend>,
        policy: CallbackPolicy,
        key: SigningKey,
        config: DispatchConfig,
        metrics: CallbackMetrics,
        queue_metrics: QueueMetrics,
    ) -> Result<Self, String> {
        // Fails only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::builder()
            .timeout(config.timeout)
            .tcp_nodelay(true)
            // A redirect could lead anywhere; only allowed hosts are called.
            .redirect(redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the callback HTTP client: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                policy,
                key,
                client,
                config,
                metrics,
                queue_metrics,
            }),
        })
    }

    /// Runs until `shutdown` turns `true`, then drains. Returns how many POSTs
    /// were abandoned (left for redelivery) when the drain time ran out.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> usize {
        let inner = self.inner;
        let c = &inner.config;
        let consume_config = ConsumeConfig {
            name: "callback dispatcher",
            concurrency: c.concurrency,
            batch_size: c.concurrency,
            drain: c.drain,
            unavailable_backoff: c.unavailable_backoff,
        };
        consume(
            Arc::clone(&inner.queue),
            &consume_config,
            shutdown,
            |n| {
                inner.queue_metrics.consume.inc_by(n as u64);
            },
            |delivery| {
                let inner = Arc::clone(&inner);
                async move { inner.handle(delivery).await }
            },
        )
        .await
    }
}

impl Inner {
    async fn handle(&self, delivery: Delivery) {
        let message = delivery.message();
        let attempt = message.attempt;
        let job: CallbackJob = match serde_json::from_slice(&message.body) {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(message_id = %message.id, error = %e, "undecodable callback job dead-lettered");
                return self
                    .give_up(delivery, format!("malformed callback job: {e}"))
                    .await;
            }
        };
        let span = tracing::info_span!("callback", correlation_id = %job.correlation_id, webhook_id = %job.webhook_id, attempt);
        self.deliver(delivery, job, attempt).instrument(span).await;
    }

    async fn deliver(&self, delivery: Delivery, job: CallbackJob, attempt: u32) {
        // Checked again: the list may have shrunk since the job was queued.
        let url = match self.policy.check(&job.url) {
            Ok(url) => url,
            Err(e) => {
                tracing::warn!(error = %e, "callback dropped");
                return self.give_up(delivery, e.to_string()).await;
            }
        };
        let host = url.host_str().unwrap_or("").to_owned();
        let started = Instant::now();
        let result = self.post(url, &job).await;
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let failure = match result {
            Attempt::Delivered => {
                self.metrics.delivered.inc();
                tracing::debug!(%host, "callback delivered");
                return settled(delivery.ack().await);
            }
            Attempt::Failed(failure) => failure,
        };
        match decide(&failure, attempt, &self.config.backoff, fastrand::f64()) {
            Decision::Retry { delay } => {
                self.metrics.retried.inc();
                tracing::info!(%host, error = %failure.message, retry_in_ms = delay.as_millis() as u64, "callback failed; retry scheduled");
                settled(delivery.nack(Nack::Retry { delay }).await);
            }
            // The dispatcher reports no `Busy` failures; a release is not an attempt.
            Decision::Release { delay } => {
                settled(delivery.nack(Nack::Release { delay }).await);
            }
            Decision::GiveUp { reason, .. } => {
                tracing::warn!(%host, error = %reason, "callback given up; dead-lettered");
                self.give_up(delivery, reason).await;
            }
        }
    }

    async fn give_up(&self, delivery: Delivery, reason: String) {
        self.metrics.dead_lettered.inc();
        // The callback failed for good (its request keeps its own status).
        self.queue_metrics.dead_lettered_failed.inc();
        settled(delivery.nack(Nack::DeadLetter { reason }).await);
    }

    async fn post(&self, url: reqwest::Url, job: &CallbackJob) -> Attempt {
        let body = job.body.get().to_owned();
        let timestamp = now_secs();
        let signature = self.key.sign(&job.webhook_id, timestamp, body.as_bytes());
        let sent = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static("openhqm-webhooks"))
            .header("webhook-id", &job.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                // The URL may carry a token in its query: never log it.
                let e = e.without_url();
                let kind = if e.is_timeout() {
                    FailureKind::Timeout
                } else {
                    FailureKind::Transient
                };
                // Told with its causes (refused, timed out), which name no URL.
                let why = openhqm_core::cause::chain(&e);
                return Attempt::Failed(Failure::new(kind, format!("callback POST failed: {why}")));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        let kind = if retryable {
            FailureKind::Transient
        } else {
            FailureKind::Permanent
        };
        let mut failure = Failure::new(kind, format!("callback answered {}", status.as_u16()));
        failure.retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| openhqm_core::retry_after::parse(v, SystemTime::now()));
        Attempt::Failed(failure)
    }
}

fn settled(result: Result<(), openhqm_queue::QueueError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "settling a callback job failed; it will be redelivered");
    }
}
