//! [`ProxyProcessor`]: the worker's [`Processor`] for proxy mode.
//!
//! It resolves the request's endpoint (`metadata.endpoint`, else
//! `proxy.default_endpoint`) and forwards one attempt. It never retries by
//! itself: a failure's kind tells the worker whether to try again. An unknown
//! endpoint is permanent; the API also refuses it at submit through
//! [`ProxyProcessor::has_endpoint`].

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use openhqm_core::{Envelope, Failure};
use openhqm_metrics::Metrics;
use openhqm_worker::{Output, Processor, Request};

use crate::config::{EndpointConfig, UpstreamConfig};
use crate::endpoint::{Endpoint, Shared};
use crate::error::UpstreamError;
use crate::headers::HeaderPolicy;
use crate::health::HealthChecks;
use crate::pool::{Target, TargetStatus};

/// Name under which a URL `default_endpoint` is labelled in metrics.
pub const DEFAULT_ENDPOINT_NAME: &str = "default";

/// Forwards queued requests to configured HTTP backends.
#[derive(Debug)]
pub struct ProxyProcessor {
    endpoints: BTreeMap<String, Arc<Endpoint>>,
    default: Option<Arc<Endpoint>>,
    shared: Shared,
}

impl ProxyProcessor {
    /// Builds every endpoint's client, pool and limits. Call inside a tokio
    /// runtime; start health checks with [`ProxyProcessor::start_health_checks`].
    ///
    /// # Errors
    /// [`UpstreamError::Config`] for a setting that cannot be used (run
    /// [`UpstreamConfig::validate`] first to get every problem at once).
    pub fn new(cfg: &UpstreamConfig, metrics: &Metrics) -> Result<Self, UpstreamError> {
        let mut endpoints = BTreeMap::new();
        for (name, e) in &cfg.endpoints {
            endpoints.insert(name.clone(), Arc::new(Endpoint::new(name, e, metrics)?));
        }
        let default = match &cfg.default_endpoint {
            None => None,
            Some(name) => match endpoints.get(name) {
                Some(e) => Some(Arc::clone(e)),
                None => {
                    let mut e = EndpointConfig::with_url(name.clone());
                    e.from_env = cfg.default_from_env.clone();
                    Some(Arc::new(Endpoint::new(DEFAULT_ENDPOINT_NAME, &e, metrics)?))
                }
            },
        };
        Ok(Self {
            endpoints,
            default,
            shared: Shared {
                policy: HeaderPolicy::new(&cfg.forward_headers, &cfg.strip_headers),
                passthrough_policy: HeaderPolicy::new(&["*".to_owned()], &cfg.strip_headers),
                max_response_size: cfg.max_response_size,
            },
        })
    }

    /// Whether `name` is a configured endpoint.
    #[must_use]
    pub fn has_endpoint(&self, name: &str) -> bool {
        self.endpoints.contains_key(name)
    }

    /// The endpoint's `max_retries` override, for the worker's retry policy.
    #[must_use]
    pub fn max_retries(&self, endpoint: Option<&str>) -> Option<u32> {
        self.resolve(endpoint).ok()?.cfg.max_retries
    }

    /// The state of each target of `endpoint` (a name, or
    /// [`DEFAULT_ENDPOINT_NAME`] for a URL default), for health reports.
    #[must_use]
    pub fn target_status(&self, endpoint: &str) -> Option<Vec<TargetStatus>> {
        let e = self.endpoints.get(endpoint).or_else(|| {
            self.default
                .as_ref()
                .filter(|_| endpoint == DEFAULT_ENDPOINT_NAME)
        })?;
        Some(e.pool.targets().iter().map(Target::status).collect())
    }

    /// Starts one health-check task per endpoint that has `health_check`.
    /// Must be called inside a tokio runtime; the tasks stop when the handle
    /// is stopped or dropped.
    #[must_use]
    pub fn start_health_checks(&self) -> HealthChecks {
        let mut checks = HealthChecks::default();
        let mut seen = Vec::new();
        for e in self.endpoints.values().chain(self.default.iter()) {
            if seen.iter().any(|s| Arc::ptr_eq(s, e)) {
                continue;
            }
            seen.push(Arc::clone(e));
            if let Some(h) = &e.cfg.health_check {
                checks.spawn(e.client.clone(), Arc::clone(&e.pool), h.clone());
            }
        }
        checks
    }

    fn resolve(&self, endpoint: Option<&str>) -> Result<&Arc<Endpoint>, UpstreamError> {
        match endpoint {
            Some(name) => self
                .endpoints
                .get(name)
                .ok_or_else(|| UpstreamError::UnknownEndpoint(name.to_owned())),
            None => self.default.as_ref().ok_or(UpstreamError::NoEndpoint),
        }
    }

    /// Forwards one attempt, with the forwarder's own error type.
    ///
    /// # Errors
    /// Why no deliverable answer came back.
    pub async fn forward(&self, request: &Request<'_>) -> Result<Output, UpstreamError> {
        let env = request.envelope;
        let endpoint = self.resolve(env.metadata.endpoint.as_deref())?;
        endpoint
            .forward(&self.shared, env, request.attempt, request.timeout)
            .await
    }
}

#[async_trait]
impl Processor for ProxyProcessor {
    async fn process(&self, request: &Request<'_>) -> Result<Output, Failure> {
        self.forward(request)
            .await
            .map_err(UpstreamError::into_failure)
    }

    fn max_retries(&self, envelope: &Envelope) -> Option<u32> {
        ProxyProcessor::max_retries(self, envelope.metadata.endpoint.as_deref())
    }
}
