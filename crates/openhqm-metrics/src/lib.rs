//! Every OpenHQM metric, named in one place.
//!
//! Names follow `openhqm_<subsystem>_<thing>_<unit>` and keep the names users
//! of the earlier implementation have dashboards for. Label values are always
//! from closed sets (route templates, never raw paths; outcome kinds, never
//! error text), so the number of series is bounded. Hot paths hold
//! pre-resolved handles ([`QueueMetrics`], [`WorkerMetrics`]) instead of
//! looking labels up per event.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueResultLabels {
    queue: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DlqLabels {
    queue: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    endpoint: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetClassLabels {
    endpoint: String,
    target: String,
    class: &'static str,
}

/// Status classes of [`UpstreamTargetMetrics::request`]; anything else is
/// counted as `error`, so the label set stays closed.
pub const UPSTREAM_CLASSES: &[&str] = &["1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout"];

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~65 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 19))
}

/// The process's metrics registry.
pub struct Metrics {
    registry: Registry,
    api_requests: Family<ApiLabels, Counter>,
    api_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    api_admission_refused: Counter,
    queue_publish: Family<QueueResultLabels, Counter>,
    queue_consume: Family<QueueLabels, Counter>,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_dlq_depth: Family<QueueLabels, Gauge>,
    queue_dlq: Family<DlqLabels, Counter>,
    worker_active: Gauge,
    worker_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    worker_errors: Family<KindLabels, Counter>,
    worker_retries: Counter,
    upstream_requests: Family<TargetClassLabels, Counter>,
    upstream_duration: Family<TargetLabels, Histogram, fn() -> Histogram>,
    upstream_retries: Family<EndpointLabels, Counter>,
    upstream_breaker: Family<TargetLabels, Gauge>,
    upstream_healthy: Family<TargetLabels, Gauge>,
    upstream_ejections: Family<TargetLabels, Counter>,
    upstream_in_flight: Family<TargetLabels, Gauge>,
    callback_deliveries: Family<OutcomeLabels, Counter>,
    callback_duration: Histogram,
}

impl Metrics {
    /// Registers every metric.
    #[must_use]
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let api_requests = Family::default();
        let api_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let api_admission_refused = Counter::default();
        let queue_publish = Family::default();
        let queue_consume = Family::default();
        let queue_depth = Family::default();
        let queue_dlq_depth = Family::default();
        let queue_dlq = Family::default();
        let worker_active = Gauge::default();
        let worker_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let worker_errors = Family::default();
        let worker_retries = Counter::default();
        let upstream_requests = Family::default();
        let upstream_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_retries = Family::default();
        let upstream_breaker = Family::default();
        let upstream_healthy = Family::default();
        let upstream_ejections = Family::default();
        let upstream_in_flight = Family::default();
        let callback_deliveries = Family::default();
        let callback_duration = latency_histogram();
        registry.register(
            "openhqm_api_requests",
            "HTTP requests by method, route template and status",
            api_requests.clone(),
        );
        registry.register(
            "openhqm_api_request_duration_seconds",
            "HTTP request latency",
            api_duration.clone(),
        );
        registry.register(
            "openhqm_api_admission_refused",
            "Requests refused with 429 because server.max_pending was reached",
            api_admission_refused.clone(),
        );
        registry.register(
            "openhqm_queue_publish",
            "Messages published, by result",
            queue_publish.clone(),
        );
        registry.register(
            "openhqm_queue_consume",
            "Messages taken from the queue",
            queue_consume.clone(),
        );
        registry.register(
            "openhqm_queue_depth",
            "Messages stored and not yet acknowledged",
            queue_depth.clone(),
        );
        registry.register(
            "openhqm_queue_dlq_depth",
            "Messages on the dead-letter queue",
            queue_dlq_depth.clone(),
        );
        registry.register(
            "openhqm_queue_dlq",
            "Messages dead-lettered, by final request status",
            queue_dlq.clone(),
        );
        registry.register(
            "openhqm_worker_active",
            "Messages being processed right now",
            worker_active.clone(),
        );
        registry.register(
            "openhqm_worker_processing_duration_seconds",
            "Time per processing attempt, by outcome",
            worker_duration.clone(),
        );
        registry.register(
            "openhqm_worker_errors",
            "Failed processing attempts, by kind",
            worker_errors.clone(),
        );
        registry.register(
            "openhqm_worker_retries",
            "Retries scheduled",
            worker_retries.clone(),
        );
        registry.register(
            "openhqm_upstream_requests",
            "Forwards to proxy targets, by endpoint, target and status class",
            upstream_requests.clone(),
        );
        registry.register(
            "openhqm_upstream_request_duration_seconds",
            "Forward latency, by endpoint and target",
            upstream_duration.clone(),
        );
        registry.register(
            "openhqm_upstream_retries",
            "Forwards that were a retry of an earlier attempt, by endpoint",
            upstream_retries.clone(),
        );
        registry.register(
            "openhqm_upstream_breaker_state",
            "Circuit breaker state per target: 0 closed, 1 open, 2 half-open",
            upstream_breaker.clone(),
        );
        registry.register(
            "openhqm_upstream_healthy",
            "1 while active health checks find a target healthy, else 0",
            upstream_healthy.clone(),
        );
        registry.register(
            "openhqm_upstream_ejections",
            "Passive ejections of a target after consecutive failed forwards",
            upstream_ejections.clone(),
        );
        registry.register(
            "openhqm_upstream_in_flight",
            "Forwards in flight per target",
            upstream_in_flight.clone(),
        );
        registry.register(
            "openhqm_callbacks_deliveries",
            "Completion callback attempts and jobs, by outcome (see CALLBACK_OUTCOMES)",
            callback_deliveries.clone(),
        );
        registry.register(
            "openhqm_callbacks_delivery_duration_seconds",
            "Time per completion callback POST",
            callback_duration.clone(),
        );
        Arc::new(Self {
            registry,
            api_requests,
            api_duration,
            queue_publish,
            queue_consume,
            api_admission_refused,
            queue_depth,
            queue_dlq_depth,
            queue_dlq,
            worker_active,
            worker_duration,
            worker_errors,
            worker_retries,
            upstream_requests,
            upstream_duration,
            upstream_retries,
            upstream_breaker,
            upstream_healthy,
            upstream_ejections,
            upstream_in_flight,
            callback_deliveries,
            callback_duration,
        })
    }

    /// Handles for one proxy target. `endpoint` and `target` come from the
    /// configuration (endpoint name, target URL), so they are bounded.
    #[must_use]
    pub fn upstream_target(&self, endpoint: &str, target: &str) -> UpstreamTargetMetrics {
        let labels = TargetLabels {
            endpoint: endpoint.to_owned(),
            target: target.to_owned(),
        };
        let requests = UPSTREAM_CLASSES
            .iter()
            .map(|class| {
                self.upstream_requests
                    .get_or_create_owned(&TargetClassLabels {
                        endpoint: endpoint.to_owned(),
                        target: target.to_owned(),
                        class,
                    })
            })
            .collect();
        UpstreamTargetMetrics {
            requests: Arc::new(requests),
            duration: self.upstream_duration.get_or_create_owned(&labels),
            breaker_state: self.upstream_breaker.get_or_create_owned(&labels),
            healthy: self.upstream_healthy.get_or_create_owned(&labels),
            ejections: self.upstream_ejections.get_or_create_owned(&labels),
            in_flight: self.upstream_in_flight.get_or_create_owned(&labels),
        }
    }

    /// Requests refused by admission control.
    #[must_use]
    pub fn admission_refused(&self) -> Counter {
        self.api_admission_refused.clone()
    }

    /// The retry counter of one proxy endpoint.
    #[must_use]
    pub fn upstream_retries(&self, endpoint: &str) -> Counter {
        self.upstream_retries.get_or_create_owned(&EndpointLabels {
            endpoint: endpoint.to_owned(),
        })
    }

    /// Records one HTTP request. `route` is the route template or `unmatched`.
    pub fn api_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        seconds: f64,
    ) {
        self.api_requests
            .get_or_create(&ApiLabels {
                method,
                route,
                status,
            })
            .inc();
        self.api_duration
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    /// Handles for one queue.
    #[must_use]
    pub fn queue(&self, name: &str) -> QueueMetrics {
        let q = || QueueLabels {
            queue: name.to_owned(),
        };
        let publish = |result| QueueResultLabels {
            queue: name.to_owned(),
            result,
        };
        let dlq = |status| DlqLabels {
            queue: name.to_owned(),
            status,
        };
        QueueMetrics {
            publish_ok: self.queue_publish.get_or_create_owned(&publish("ok")),
            publish_error: self.queue_publish.get_or_create_owned(&publish("error")),
            consume: self.queue_consume.get_or_create_owned(&q()),
            depth: self.queue_depth.get_or_create_owned(&q()),
            dlq_depth: self.queue_dlq_depth.get_or_create_owned(&q()),
            dead_lettered_failed: self.queue_dlq.get_or_create_owned(&dlq("FAILED")),
            dead_lettered_timeout: self.queue_dlq.get_or_create_owned(&dlq("TIMEOUT")),
        }
    }

    /// Handles for completion callbacks.
    #[must_use]
    pub fn callbacks(&self) -> CallbackMetrics {
        let outcome = |outcome| {
            self.callback_deliveries
                .get_or_create_owned(&OutcomeLabels { outcome })
        };
        CallbackMetrics {
            enqueued: outcome("enqueued"),
            skipped: outcome("skipped"),
            delivered: outcome("delivered"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            duration: self.callback_duration.clone(),
        }
    }

    /// Handles for the worker pool.
    #[must_use]
    pub fn worker(&self) -> WorkerMetrics {
        let outcome = |outcome| {
            self.worker_duration
                .get_or_create_owned(&OutcomeLabels { outcome })
        };
        let errors = |kind| self.worker_errors.get_or_create_owned(&KindLabels { kind });
        WorkerMetrics {
            active: self.worker_active.clone(),
            completed: outcome("completed"),
            failed: outcome("failed"),
            retried: outcome("retried"),
            errors_transient: errors("transient"),
            errors_timeout: errors("timeout"),
            errors_permanent: errors("permanent"),
            errors_busy: errors("busy"),
            errors_malformed: errors("malformed"),
            errors_sink: errors("sink"),
            held: errors("held"),
            retries: self.worker_retries.clone(),
        }
    }

    /// The Prometheus/OpenMetrics text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Pre-resolved metrics of one queue.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    /// Successful publishes.
    pub publish_ok: Counter,
    /// Failed publishes.
    pub publish_error: Counter,
    /// Messages received.
    pub consume: Counter,
    /// Unacknowledged messages (kept current by a sampler).
    pub depth: Gauge,
    /// Dead letters (kept current by a sampler).
    pub dlq_depth: Gauge,
    /// Dead-lettered with status FAILED.
    pub dead_lettered_failed: Counter,
    /// Dead-lettered with status TIMEOUT.
    pub dead_lettered_timeout: Counter,
}

/// Pre-resolved metrics of the worker pool.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    /// In-flight messages.
    pub active: Gauge,
    /// Attempt durations that completed the request.
    pub completed: Histogram,
    /// Attempt durations that failed the request for good.
    pub failed: Histogram,
    /// Attempt durations that were retried.
    pub retried: Histogram,
    /// Transient errors.
    pub errors_transient: Counter,
    /// Timeouts.
    pub errors_timeout: Counter,
    /// Permanent errors.
    pub errors_permanent: Counter,
    /// Attempts that could not start for a full local limit (put back).
    pub errors_busy: Counter,
    /// Messages that could not be decoded.
    pub errors_malformed: Counter,
    /// Finished requests a completion sink could not take (retried).
    pub errors_sink: Counter,
    /// Messages put back because another message's delivery was processing
    /// their request (a producer's duplicate).
    pub held: Counter,
    /// Retries scheduled.
    pub retries: Counter,
}

/// Outcomes of `openhqm_callbacks_deliveries_total`.
pub const CALLBACK_OUTCOMES: &[&str] = &[
    "enqueued",
    "skipped",
    "delivered",
    "retried",
    "dead_lettered",
];

/// Pre-resolved metrics of completion callbacks.
#[derive(Clone, Debug)]
pub struct CallbackMetrics {
    /// Jobs put on the callback queue.
    pub enqueued: Counter,
    /// Finished requests whose callback URL is not allowed (foreign producers).
    pub skipped: Counter,
    /// POSTs answered 2xx.
    pub delivered: Counter,
    /// Failed POSTs scheduled for another attempt.
    pub retried: Counter,
    /// Jobs given up on (attempts exhausted, a permanent answer, or a host no
    /// longer allowed) and dead-lettered.
    pub dead_lettered: Counter,
    /// Time per POST.
    pub duration: Histogram,
}

/// Pre-resolved metrics of one proxy target.
#[derive(Clone, Debug)]
pub struct UpstreamTargetMetrics {
    requests: Arc<Vec<Counter>>,
    /// Forward latency.
    pub duration: Histogram,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: Gauge,
    /// 1 while active health checks find the target healthy.
    pub healthy: Gauge,
    /// Passive ejections.
    pub ejections: Counter,
    /// Forwards in flight.
    pub in_flight: Gauge,
}

impl UpstreamTargetMetrics {
    /// Counts one forward by status class (see [`UPSTREAM_CLASSES`]) and
    /// records its latency.
    pub fn request(&self, class: &str, seconds: f64) {
        let idx = UPSTREAM_CLASSES
            .iter()
            .position(|c| *c == class)
            .unwrap_or(UPSTREAM_CLASSES.len() - 2);
        if let Some(c) = self.requests.get(idx) {
            c.inc();
        }
        self.duration.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_are_exported() {
        let m = Metrics::new();
        m.api_request("POST", "/api/v1/submit", 202, 0.001);
        let q = m.queue("openhqm-requests");
        q.publish_ok.inc();
        q.depth.set(3);
        m.worker().active.set(1);
        m.worker().completed.observe(0.01);
        m.worker().errors_transient.inc();
        let t = m.upstream_target("api", "http://127.0.0.1:9/");
        t.request("2xx", 0.01);
        t.healthy.set(1);
        t.ejections.inc();
        m.upstream_retries("api").inc();
        m.callbacks().delivered.inc();
        let text = m.render();
        for name in [
            "openhqm_upstream_requests_total{endpoint=\"api\",target=\"http://127.0.0.1:9/\",class=\"2xx\"} 1",
            "openhqm_upstream_request_duration_seconds_bucket",
            "openhqm_upstream_healthy{endpoint=\"api\",target=\"http://127.0.0.1:9/\"} 1",
            "openhqm_upstream_retries_total{endpoint=\"api\"} 1",
            "openhqm_upstream_breaker_state",
            "openhqm_upstream_in_flight",
            "openhqm_upstream_ejections_total{endpoint=\"api\",target=\"http://127.0.0.1:9/\"} 1",
            "openhqm_api_requests_total{method=\"POST\",route=\"/api/v1/submit\",status=\"202\"} 1",
            "openhqm_api_request_duration_seconds_bucket",
            "openhqm_queue_publish_total{queue=\"openhqm-requests\",result=\"ok\"} 1",
            "openhqm_queue_consume_total",
            "openhqm_queue_depth{queue=\"openhqm-requests\"} 3",
            "openhqm_queue_dlq_total",
            "openhqm_worker_active 1",
            "openhqm_worker_processing_duration_seconds_bucket",
            "openhqm_worker_errors_total{kind=\"transient\"} 1",
            "openhqm_callbacks_deliveries_total{outcome=\"delivered\"} 1",
            "openhqm_callbacks_delivery_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
