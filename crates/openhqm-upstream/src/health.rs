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

use reqwest::Client;
use tokio::task::JoinHandle;

use crate::config::HealthCheckConfig;
use crate::pool::{Pool, Target};

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

    pub(crate) fn spawn(&mut self, client: Client, pool: Arc<Pool>, cfg: HealthCheckConfig) {
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

async fn run(client: Client, pool: Arc<Pool>, cfg: HealthCheckConfig) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_seconds.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Probed concurrently, so one slow target does not delay the others.
        let probes = pool.targets().iter().map(|t| probe(&client, t, &cfg));
        futures::future::join_all(probes).await;
    }
}

async fn probe(client: &Client, target: &Target, cfg: &HealthCheckConfig) {
    let ok = match target.url.join(&cfg.path) {
        Ok(url) => client
            .get(url)
            .timeout(Duration::from_secs(cfg.timeout_seconds.max(1)))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == cfg.expected_status),
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
