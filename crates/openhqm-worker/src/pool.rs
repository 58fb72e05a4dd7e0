//! The worker pool: the queue's [`consume`] loop feeding up to `count`
//! concurrent handlers. A handler goes through named steps:
//! [`begin`](Handler::begin) (decode with the pool's
//! [`Decoder`](openhqm_core::Decoder), mark PROCESSING, drop duplicates),
//! [`attempt`](Handler::attempt) (run the processor under its deadline while
//! extending the lease), and [`settle`](Handler::settle) (record the outcome,
//! then ack, retry or dead-letter). The store is written before the delivery
//! is settled, so a crash in between causes a redelivery that finds the
//! request finished and settles it without processing: ack, or dead letter
//! if it failed.
//!
//! Completion sinks ([`CompletionSink`]: callbacks, the reply queue) run
//! between the two: after the terminal status is stored, before the delivery
//! is acked or dead-lettered. A sink that fails sends the delivery back for a
//! retry, and a redelivery that finds the request finished runs the sinks
//! again before settling it (a failed request is still dead-lettered), so no
//! sink misses a finished request.
//!
//! On shutdown the loop stops receiving, in-flight handlers get `drain` to
//! finish, and any still running are abandoned unsettled: their messages are
//! redelivered later, and nothing is failed or dead-lettered by a shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openhqm_core::envelope::DEFAULT_TIMEOUT_SECS;
use openhqm_core::time::now_ms;
use openhqm_core::{
    Backoff, CorrelationId, Decision, Decoded, Decoder, Envelope, Failure, FailureKind, Hold,
    Incoming, RequestRecord, RequestStatus, ResultData, Shape, decide,
};
use openhqm_metrics::{QueueMetrics, WorkerMetrics};
use openhqm_queue::{ConsumeConfig, Delivery, Nack, QueueBackend, REDRIVEN, consume};
use openhqm_store::{ResultStore, Transition, Update};
use tokio::sync::watch;
use tracing::Instrument;

use crate::sink::notifies;
use crate::{CompletionSink, Output, Processor, Request};

/// Settings of the worker pool.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Messages in flight per process.
    pub count: usize,
    /// Most messages taken per receive.
    pub batch_size: usize,
    /// Upper bound of any attempt's timeout.
    pub timeout: Duration,
    /// Retry policy.
    pub backoff: Backoff,
    /// The queue's lease; the pool extends it every third of it while processing.
    pub lease: Duration,
    /// How long in-flight work may finish after shutdown begins.
    pub drain: Duration,
    /// Delay before retrying after the queue or store is unavailable.
    pub unavailable_backoff: Duration,
}

/// The worker pool of one process.
pub struct WorkerPool {
    shared: Shared,
}

struct Shared {
    queue: Arc<dyn QueueBackend>,
    store: Arc<dyn ResultStore>,
    processor: Arc<dyn Processor>,
    config: WorkerConfig,
    decoder: Decoder,
    metrics: WorkerMetrics,
    queue_metrics: QueueMetrics,
    sinks: Vec<Arc<dyn CompletionSink>>,
}

impl WorkerPool {
    /// Assembles a pool; nothing runs until [`WorkerPool::run`].
    #[must_use]
    pub fn new(
        queue: Arc<dyn QueueBackend>,
        store: Arc<dyn ResultStore>,
        processor: Arc<dyn Processor>,
        config: WorkerConfig,
        metrics: (WorkerMetrics, QueueMetrics),
    ) -> Self {
        let (metrics, queue_metrics) = metrics;
        Self {
            shared: Shared {
                queue,
                store,
                processor,
                config,
                decoder: Decoder::default(),
                metrics,
                queue_metrics,
                sinks: Vec::new(),
            },
        }
    }

    /// Reads messages with `decoder` instead of as OpenHQM envelopes only:
    /// raw JSON and CloudEvents from outside producers
    /// (`queue.message_format`, `worker.foreign.*`).
    #[must_use]
    pub fn with_decoder(mut self, decoder: Decoder) -> Self {
        self.shared.decoder = decoder;
        self
    }

    /// Adds the completion sinks told about every finished request, in order.
    #[must_use]
    pub fn with_sinks(mut self, sinks: Vec<Arc<dyn CompletionSink>>) -> Self {
        self.shared.sinks.extend(sinks);
        self
    }

    /// Runs until `shutdown` turns `true`, then drains. Returns how many
    /// messages were left for redelivery because the drain ran out: attempts
    /// still running just before it does are released (handed back as the
    /// same attempt, at once), and any handler still busy after it is
    /// abandoned unsettled.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> usize {
        let shared = Arc::new(self.shared);
        let c = &shared.config;
        let (give_up_tx, give_up) = watch::channel(false);
        let mut stopping = shutdown.clone();
        let release_at = c.drain.saturating_sub((c.drain / 10).min(RELEASE_MARGIN));
        let timer = tokio::spawn(async move {
            if stopping.wait_for(|stop| *stop).await.is_ok() {
                tokio::time::sleep(release_at).await;
                let _ = give_up_tx.send(true);
                // Keep the sender: a closed channel must not read as "give up".
                std::future::pending::<()>().await;
            }
        });
        let released = Arc::new(AtomicUsize::new(0));
        let consume_config = ConsumeConfig {
            name: "worker pool",
            concurrency: c.count,
            batch_size: c.batch_size,
            drain: c.drain,
            unavailable_backoff: c.unavailable_backoff,
        };
        let consumed = shared.queue_metrics.consume.clone();
        let abandoned = consume(
            Arc::clone(&shared.queue),
            &consume_config,
            shutdown,
            |n| {
                consumed.inc_by(n as u64);
            },
            |delivery| {
                let handler = Handler {
                    shared: Arc::clone(&shared),
                    give_up: give_up.clone(),
                    released: Arc::clone(&released),
                };
                async move { handler.handle(delivery).await }
            },
        )
        .await;
        timer.abort();
        abandoned + released.load(Ordering::Relaxed)
    }
}

/// How long before the drain runs out attempts still running are released
/// (at most a tenth of the drain), so the release lands before the drain ends.
const RELEASE_MARGIN: Duration = Duration::from_millis(500);

/// How soon a message whose request another delivery is processing comes
/// back to look again (not an attempt: it is released, not retried): when
/// the hold lapses, within these bounds.
const HELD_RECHECK_MIN: Duration = Duration::from_secs(1);
const HELD_RECHECK_MAX: Duration = Duration::from_secs(5);

struct Handler {
    shared: Arc<Shared>,
    /// Turns `true` when the drain is about to run out.
    give_up: watch::Receiver<bool>,
    /// Attempts released because of it.
    released: Arc<AtomicUsize>,
}

/// What [`Handler::begin`] found.
enum Begin {
    Process {
        // Boxed: an envelope is large and the other outcomes are tiny.
        envelope: Box<Envelope>,
        attempt: u32,
        /// How many of the attempts were made before it was queued
        /// (`metadata.retry_count`; none after a redrive).
        before: u32,
    },
    /// Already finished: a duplicate delivery.
    Ack,
    /// Already finished, and the sinks want to hear about it: they may have
    /// missed it (a sink failed, or the process died before settling).
    Finished(Box<Envelope>),
    /// Undecodable: no processor can help. If the message names its
    /// request, the request is FAILED with the reason.
    Undecodable {
        id: Option<CorrelationId>,
        reason: String,
    },
    /// The store cannot be written; try the message again later.
    RetryLater,
    /// Another message's delivery is processing the same request: come back
    /// once it is done (and then find it finished), or its hold has lapsed.
    Held(Hold),
}

impl Handler {
    async fn handle(self, mut delivery: Delivery) {
        let active = self.shared.metrics.active.clone();
        active.inc();
        match self.begin(&delivery).await {
            Begin::Process {
                envelope,
                attempt,
                before,
            } => {
                let span = tracing::info_span!("request", correlation_id = %envelope.correlation_id, attempt);
                async {
                    let started = Instant::now();
                    let budget = self.policy(&envelope).max_retries;
                    if attempt > budget.saturating_add(1) {
                        // Every attempt the budget allows was started and
                        // none finished: a message that kills its worker
                        // must not do so forever.
                        let before = before.min(attempt - 1);
                        let here = attempt - 1 - before;
                        let why = if before == 0 {
                            format!("{here} were started without an outcome (a worker died or lost its lease)")
                        } else {
                            format!("{before} were made before it was queued (metadata.retry_count), {here} started here without an outcome")
                        };
                        let interrupted = Failure::new(
                            FailureKind::Transient,
                            format!("no attempts left: {why}"),
                        );
                        self.settle(delivery, &envelope, attempt - 1, started, Err(interrupted))
                            .await;
                        return;
                    }
                    let result = tokio::select! {
                        // A finished attempt wins over the drain running out.
                        biased;
                        result = self.attempt(&mut delivery, &envelope, attempt) => Some(result),
                        () = self.drain_running_out() => None,
                    };
                    let Some(result) = result else {
                        // A shutdown is not a failure: hand the message back
                        // as this same attempt.
                        tracing::info!("shutdown: attempt still running as the drain ran out; message released for redelivery");
                        let release = Nack::Release { delay: Duration::ZERO };
                        let released = delivery.nack(release).await;
                        if released.is_ok() {
                            self.released.fetch_add(1, Ordering::Relaxed);
                        }
                        self.finish(released);
                        return;
                    };
                    self.settle(delivery, &envelope, attempt, started, result)
                        .await;
                }
                .instrument(span)
                .await;
            }
            Begin::Ack => self.finish(delivery.ack().await),
            Begin::Finished(envelope) => {
                let id = envelope.correlation_id;
                let span = tracing::info_span!("request", correlation_id = %id);
                async {
                    let current = self.shared.store.get(id).await;
                    match current {
                        // Expired meanwhile: nothing left to report.
                        Ok(None) => self.finish(delivery.ack().await),
                        Ok(Some(record)) if self.notify(&envelope, &record).await => {
                            self.settle_finished(delivery, &record).await;
                        }
                        Ok(Some(_)) => self.retry_later(delivery).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "result store unavailable; message will be retried");
                            self.retry_later(delivery).await;
                        }
                    }
                }
                .instrument(span)
                .await;
            }
            Begin::Undecodable { id, reason } => {
                if self.record_undecodable(id, &reason).await {
                    self.dead_letter(delivery, RequestStatus::Failed, reason)
                        .await;
                } else {
                    self.retry_later(delivery).await;
                }
            }
            Begin::RetryLater => self.retry_later(delivery).await,
            Begin::Held(hold) => {
                self.shared.metrics.held.inc();
                // Back when the hold lapses, looking in now and then in case
                // the holder finishes first (the usual case).
                let left = Duration::from_millis(hold.until_ms.saturating_sub(now_ms()));
                let delay = left.clamp(HELD_RECHECK_MIN, HELD_RECHECK_MAX);
                tracing::debug!(message_id = %delivery.message().id, holder = %hold.message_id, retry_in_ms = delay.as_millis() as u64, "the request is being processed under another message; put back");
                self.finish(delivery.nack(Nack::Release { delay }).await);
            }
        }
        active.dec();
    }

    /// Decodes the message and marks it PROCESSING (reopening a failed
    /// request if the message is a redrive of its dead letter).
    async fn begin(&self, delivery: &Delivery) -> Begin {
        let message = delivery.message();
        let incoming = Incoming {
            id: &message.id,
            body: &message.body,
            attributes: &message.attributes,
        };
        let Decoded { shape, envelope } = match self.shared.decoder.decode(&incoming) {
            Ok(d) => d,
            Err(e) => {
                self.shared.metrics.errors_malformed.inc();
                let id = Envelope::correlation_id_in(&message.body);
                // Without an id, no `correlation_id` field (not "None").
                let correlation_id = id.as_ref().map(tracing::field::display);
                tracing::warn!(message_id = %message.id, correlation_id, error = %e, "undecodable message dead-lettered");
                return Begin::Undecodable {
                    id,
                    reason: e.to_string(),
                };
            }
        };
        if shape != Shape::Envelope {
            tracing::debug!(message_id = %message.id, correlation_id = %envelope.correlation_id, ?shape, "foreign message decoded");
        }
        // A redrive's mark: its time, which reopens a failed request once.
        let redrive = message
            .attributes
            .get(REDRIVEN)
            .and_then(|at| at.parse::<u64>().ok());
        // A redrive runs the request again with its whole budget: attempts
        // the producer made before queueing it were spent before it died.
        // The mark stays on the message through its retries.
        let before = if redrive.is_some() {
            0
        } else {
            envelope.metadata.retry_count
        };
        let attempt = message.attempt.saturating_add(before);
        // Held until the attempt's deadline, and a lease more for recording
        // its outcome: past that, its worker is gone.
        let hold_ms = (self.attempt_timeout(&envelope) + self.shared.config.lease).as_millis();
        let mut update = Update {
            to: RequestStatus::Processing,
            attempts: Some(attempt),
            outcome: None,
            redrive: None,
            hold: Some(Hold {
                message_id: message.id.clone(),
                until_ms: now_ms().saturating_add(u64::try_from(hold_ms).unwrap_or(u64::MAX)),
            }),
        };
        loop {
            let id = envelope.correlation_id;
            match self.shared.store.transition(id, update.clone()).await {
                Ok(Transition::Applied(_)) => {
                    if update.redrive.is_some() {
                        tracing::info!(correlation_id = %id, "failed request redriven: processing it again");
                    }
                    return Begin::Process {
                        envelope: Box::new(envelope),
                        attempt,
                        before,
                    };
                }
                // A redrive of its dead letter: the one way a failed request reopens.
                Ok(Transition::Refused { current })
                    if redrive.is_some()
                        && update.redrive.is_none()
                        && current.can_be_redriven() =>
                {
                    update.redrive = redrive;
                }
                Ok(Transition::Held(hold)) => return Begin::Held(hold),
                Ok(Transition::Refused { current }) => {
                    tracing::debug!(correlation_id = %id, %current, "redelivery of a finished request settled without processing");
                    let failed = matches!(current, RequestStatus::Failed | RequestStatus::Timeout);
                    return if failed || (notifies(current) && !self.shared.sinks.is_empty()) {
                        Begin::Finished(Box::new(envelope))
                    } else {
                        Begin::Ack
                    };
                }
                Err(e) => {
                    tracing::warn!(correlation_id = %id, error = %e, "result store unavailable; message will be retried");
                    return Begin::RetryLater;
                }
            }
        }
    }

    /// How long one attempt at `envelope` may run.
    fn attempt_timeout(&self, envelope: &Envelope) -> Duration {
        let asked = Duration::from_secs(envelope.metadata.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));
        asked.min(self.shared.config.timeout)
    }

    /// Runs the processor under the attempt's deadline, extending the lease meanwhile.
    async fn attempt(
        &self,
        delivery: &mut Delivery,
        envelope: &Envelope,
        attempt: u32,
    ) -> Result<Output, Failure> {
        let timeout = self.attempt_timeout(envelope);
        let request = Request {
            envelope,
            attempt,
            timeout,
        };
        let work = tokio::time::timeout(timeout, self.shared.processor.process(&request));
        tokio::pin!(work);
        let lease = self.shared.config.lease;
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
        loop {
            tokio::select! {
                result = &mut work => {
                    return result.unwrap_or_else(|_| {
                        Err(Failure::new(FailureKind::Timeout, format!("processing exceeded its timeout of {}s", timeout.as_secs_f64())))
                    });
                }
                _ = heartbeat.tick() => {
                    if let Err(e) = delivery.extend(lease).await {
                        tracing::warn!(error = %e, "could not extend the lease; the message may be processed twice");
                    }
                }
            }
        }
    }

    /// Records the outcome, then acks, retries or dead-letters.
    async fn settle(
        &self,
        delivery: Delivery,
        envelope: &Envelope,
        attempt: u32,
        started: Instant,
        result: Result<Output, Failure>,
    ) {
        let id = envelope.correlation_id;
        let elapsed = started.elapsed();
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let m = &self.shared.metrics;
        let mut failure = match result {
            Ok(output) => {
                m.completed.observe(elapsed.as_secs_f64());
                let outcome = output.into_result_data(ms, now_ms());
                let update = Update {
                    to: RequestStatus::Completed,
                    attempts: Some(attempt),
                    outcome: Some(Box::new(outcome)),
                    redrive: None,
                    hold: None,
                };
                if self.record_terminal(envelope, update).await.is_some() {
                    tracing::debug!(processing_time_ms = ms, "request completed");
                    self.finish(delivery.ack().await);
                } else {
                    self.retry_later(delivery).await;
                }
                return;
            }
            Err(failure) => failure,
        };
        // The backend's last answer, if any, stays visible with the error.
        let answer = failure.response.take().map(|r| *r);
        match failure.kind {
            FailureKind::Transient => m.errors_transient.inc(),
            FailureKind::Timeout => m.errors_timeout.inc(),
            FailureKind::Permanent => m.errors_permanent.inc(),
            FailureKind::Busy => m.errors_busy.inc(),
        };
        let mut error = ResultData {
            error: Some(failure.message.clone()),
            processing_time_ms: Some(ms),
            ..ResultData::default()
        };
        if let Some(answer) = answer {
            error.status_code = Some(answer.status_code);
            error.headers = Some(answer.headers);
            error.set_body(answer.body, answer.raw_body);
            error.raw_headers = answer.raw_headers;
        }
        let policy = self.policy(envelope);
        match decide(&failure, attempt, &policy, fastrand::f64()) {
            Decision::Retry { delay } => {
                m.retried.observe(elapsed.as_secs_f64());
                m.retries.inc();
                tracing::info!(error = %failure.message, retry_in_ms = delay.as_millis() as u64, "attempt failed; retry scheduled");
                let update = Update {
                    to: RequestStatus::Pending,
                    attempts: Some(attempt),
                    outcome: Some(Box::new(error)),
                    redrive: None,
                    hold: None,
                };
                if self.record(id, update).await.is_some() {
                    self.finish(delivery.nack(Nack::Retry { delay }).await);
                } else {
                    self.retry_later(delivery).await;
                }
            }
            Decision::Release { delay } => {
                tracing::debug!(error = %failure.message, retry_in_ms = delay.as_millis() as u64, "attempt could not start; put back as the same attempt");
                // Back to PENDING, with the attempts that really ran.
                let update = Update {
                    to: RequestStatus::Pending,
                    attempts: Some(attempt.saturating_sub(1)),
                    outcome: None,
                    redrive: None,
                    hold: None,
                };
                if self.record(id, update).await.is_some() {
                    self.finish(delivery.nack(Nack::Release { delay }).await);
                } else {
                    self.retry_later(delivery).await;
                }
            }
            Decision::GiveUp { status, reason } => {
                m.failed.observe(elapsed.as_secs_f64());
                let outcome = ResultData {
                    completed_at_ms: Some(now_ms()),
                    ..error
                };
                let update = Update {
                    to: status,
                    attempts: Some(attempt),
                    outcome: Some(Box::new(outcome)),
                    redrive: None,
                    hold: None,
                };
                match self.record_terminal(envelope, update).await {
                    None => self.retry_later(delivery).await,
                    // A duplicate delivery completed it (or it was cancelled)
                    // meanwhile: the request did not fail, and its message
                    // is done.
                    Some(RequestStatus::Completed | RequestStatus::Cancelled) => {
                        tracing::info!(error = %reason, "attempt failed, but the request was finished by another delivery");
                        self.finish(delivery.ack().await);
                    }
                    Some(_) => {
                        tracing::warn!(%status, error = %reason, "request failed; dead-lettered");
                        self.dead_letter(delivery, status, reason).await;
                    }
                }
            }
        }
    }

    /// Completes when the shutdown's drain is about to run out.
    async fn drain_running_out(&self) {
        let mut give_up = self.give_up.clone();
        if give_up.wait_for(|g| *g).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The retry policy for `envelope`: the pool's, with the processor's
    /// budget if it has one for this request.
    fn policy(&self, envelope: &Envelope) -> Backoff {
        let mut policy = self.shared.config.backoff;
        if let Some(max_retries) = self.shared.processor.max_retries(envelope) {
            policy.max_retries = max_retries;
        }
        policy
    }

    /// Records the request an undecodable message names as FAILED with the
    /// reason, so a status lookup says why instead of 404; only if it has no
    /// record, so a stray message cannot fail a request that exists. `false`
    /// if the store could not take it.
    async fn record_undecodable(&self, id: Option<CorrelationId>, reason: &str) -> bool {
        let Some(id) = id else {
            return true;
        };
        let now = now_ms();
        let submitted = id.timestamp_ms().unwrap_or(now).min(now);
        let failed = RequestRecord {
            status: RequestStatus::Failed,
            outcome: Some(Box::new(ResultData {
                error: Some(reason.to_owned()),
                completed_at_ms: Some(now),
                ..ResultData::default()
            })),
            ..RequestRecord::pending(id, submitted)
        };
        match self.shared.store.create(failed).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "result store unavailable; message will be retried");
                false
            }
        }
    }

    /// Writes a transition; `None` if the store could not take it.
    async fn record(&self, id: CorrelationId, update: Update) -> Option<Transition> {
        match self.shared.store.transition(id, update).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "result store unavailable; message will be retried");
                None
            }
        }
    }

    /// Writes a terminal transition, then tells the sinks. Once both are
    /// done and the delivery may be settled, the status the request ended
    /// with: this outcome's, or another delivery's that finished it first.
    async fn record_terminal(&self, envelope: &Envelope, update: Update) -> Option<RequestStatus> {
        let id = envelope.correlation_id;
        match self.record(id, update).await {
            None => None,
            Some(Transition::Applied(record)) => self
                .notify(envelope, &record)
                .await
                .then_some(record.status),
            // Not finished, yet this outcome was refused: a holder whose
            // lease had run out put the request back to PENDING after this
            // attempt began. Acking would strand it there with its outcome
            // lost; running it again is the at-least-once price.
            Some(Transition::Refused { current }) if !current.is_terminal() => {
                tracing::info!(%current, "outcome refused by a request that is not finished; message will be retried");
                None
            }
            // Only a move to PROCESSING can be held.
            Some(Transition::Held(_)) => None,
            // Someone else finished it (a duplicate delivery racing this one);
            // report what is stored, since that one may not live to do so.
            Some(Transition::Refused { current }) => {
                if !notifies(current) || self.shared.sinks.is_empty() {
                    return Some(current);
                }
                match self.shared.store.get(id).await {
                    Ok(Some(record)) => self.notify(envelope, &record).await.then_some(current),
                    Ok(None) => Some(current),
                    Err(e) => {
                        tracing::warn!(error = %e, "result store unavailable; message will be retried");
                        None
                    }
                }
            }
        }
    }

    /// Settles a redelivery of a request that is already finished (and whose
    /// sinks have now taken it) as its first delivery would have been: a
    /// crash, or a failed sink or settle, came in between. A failed request
    /// belongs in the dead-letter queue; a duplicate there is the
    /// at-least-once price.
    async fn settle_finished(&self, delivery: Delivery, record: &RequestRecord) {
        let reason = match record.status {
            RequestStatus::Failed | RequestStatus::Timeout => record
                .outcome
                .as_ref()
                .and_then(|o| o.error.clone())
                .unwrap_or_else(|| format!("request {}", record.status)),
            _ => return self.finish(delivery.ack().await),
        };
        self.dead_letter(delivery, record.status, reason).await;
    }

    /// Moves the message of a request that ended as `status` to the
    /// dead-letter queue, counting it once the move is done.
    async fn dead_letter(&self, delivery: Delivery, status: RequestStatus, reason: String) {
        let moved = delivery.nack(Nack::DeadLetter { reason }).await;
        if moved.is_ok() {
            let m = &self.shared.queue_metrics;
            match status {
                RequestStatus::Timeout => m.dead_lettered_timeout.inc(),
                _ => m.dead_lettered_failed.inc(),
            };
        }
        self.finish(moved);
    }

    /// Hands a finished request to every sink; `false` if one failed.
    async fn notify(&self, envelope: &Envelope, record: &RequestRecord) -> bool {
        if !notifies(record.status) {
            return true;
        }
        for sink in &self.shared.sinks {
            match sink.finished(envelope, record).await {
                Ok(()) => {}
                Err(e) if e.retryable => {
                    self.shared.metrics.errors_sink.inc();
                    tracing::warn!(sink = sink.name(), error = %e, "completion sink failed; message will be retried");
                    return false;
                }
                // Redelivering could never help: settled without this sink.
                Err(e) => {
                    self.shared.metrics.errors_sink.inc();
                    tracing::error!(sink = sink.name(), error = %e, "completion sink cannot take this request; settled without it");
                }
            }
        }
        true
    }

    /// The store or a sink could not take the outcome: hand the message back
    /// so the work is redone once they can, instead of losing the result. A
    /// release, not a retry: an outage must not use up the retry budget.
    async fn retry_later(&self, delivery: Delivery) {
        let delay = self.shared.config.unavailable_backoff;
        self.finish(delivery.nack(Nack::Release { delay }).await);
    }

    fn finish(&self, settled: Result<(), openhqm_queue::QueueError>) {
        if let Err(e) = settled {
            tracing::warn!(error = %e, "settling the delivery failed; it will be redelivered");
        }
    }
}
