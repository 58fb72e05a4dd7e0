//! Active health checks: one background task per endpoint that probes each
//! target's origin with `GET <path>` every `interval_seconds`.
//!
//! A target leaves the pool after `unhealthy_threshold` bad probes in a row
//! and comes back after `healthy_threshold` good ones (which also ends a
//! passive ejection early). The tasks live as long as the [`HealthChecks`]
//! handle: `stop` (or dropping it) ends them, so the binary ties them to its
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::header::AUTHORIZATION;
use tokio::task::JoinHandle;
use url::Url;

use crate::client::{Body, HttpClient};
use crate::config::HealthCheckConfig;
use crate::pool::{Pool, Target};
use crate::rewrite::request_target;

/// Running health-check tasks; dropping the handle stops them.
#[derive(Debug, Default)]
pub struct HealthChecks {
    tasks: Vec<JoinHandle<()>>,
}

impl HealthChecks {
    /// Number of endpoints being checked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether no endpoint has health checks.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every task and waits for them to end.
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // A cancelled task reports `JoinError::Cancelled`; nothing to do.
            let _ = t.await;
        }
    }

    pub(crate) fn spawn(&mut self, client: HttpClient, pool: Arc<Pool>, cfg: HealthCheckConfig) {
        self.tasks.push(tokio::spawn(run(client, pool, cfg)));
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn run(client: HttpClient, pool: Arc<Pool>, cfg: HealthCheckConfig) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_seconds.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Probed concurrently, so one slow target does not delay the others.
        let probes = pool.targets().iter().map(|t| probe(&client, t, &cfg));
        futures::future::join_all(probes).await;
    }
}

async fn probe(client: &HttpClient, target: &Target, cfg: &HealthCheckConfig) {
    let ok = match target.base.url().join(&cfg.path) {
        Ok(url) => answers_as_expected(client, url, cfg).await,
        Err(_) => false,
    };
    let was = target.is_healthy();
    target.record_probe(ok, cfg);
    if was != target.is_healthy() {
        tracing::info!(
            target_url = %target.label,
            healthy = !was,
            "health check changed target state"
        );
    }
}

/// `GET url` answers `expected_status` within the check's timeout. Only the
/// status counts: the body is not read.
async fn answers_as_expected(client: &HttpClient, url: Url, cfg: &HealthCheckConfig) -> bool {
    let Ok((uri, basic)) = request_target(url) else {
        return false;
    };
    let mut request = Request::new(Body::default());
    *request.uri_mut() = uri;
    if let Some(basic) = basic {
        request.headers_mut().insert(AUTHORIZATION, basic);
    }
    let timeout = Duration::from_secs(cfg.timeout_seconds.max(1));
    matches!(
        tokio::time::timeout(timeout, client.request(request)).await,
        Ok(Ok(answer)) if answer.status().as_u16() == cfg.expected_status
    )
}
