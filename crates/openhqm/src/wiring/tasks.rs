//! The process's background tasks: what stops it, dead-letter retention,
//! and the queue gauges.

use std::sync::Arc;
use std::time::Duration;

use openhqm_embedded::EmbeddedDb;
use openhqm_ingress::Admission;
use openhqm_metrics::QueueMetrics;
use openhqm_queue::QueueBackend;
use tokio::sync::watch;

use super::secs;
use crate::config::Config;

/// Waits for SIGTERM, SIGINT or a failure of the embedded storage, then
/// tells everything to stop, and goes on watching the storage through the
/// drain: a failure then still ends the process non-zero (see
/// [`EmbeddedDb::failure`]). After a storage failure, a shutdown that has
/// not finished within `drain` and ten seconds more is cut short: writes
/// the failed engine never answers (fjall can stall waiting for the flush
/// worker that died) must not keep the process from being restarted.
pub(super) async fn watch_for_stop(
    stop: watch::Sender<bool>,
    db: Option<EmbeddedDb>,
    drain: Duration,
) {
    let storage = async {
        match db {
            Some(db) => db.failed().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(storage);
    let error = tokio::select! {
        () = signalled() => {
            let _ = stop.send(true);
            storage.await
        }
        error = &mut storage => error,
    };
    tracing::error!(%error, "the embedded storage failed; shutting down");
    let _ = stop.send(true);
    tokio::time::sleep(drain + secs(10)).await;
    tracing::error!("the shutdown after the storage failure did not finish; exiting now");
    std::process::exit(1);
}

async fn signalled() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// Deletes `queue`'s dead letters older than `queue.dlq_retention_seconds`,
/// checking every tenth of it (between a second and a minute), so none
/// outlives it by much. Any number of processes may trim one queue.
pub(super) fn expire_dead_letters(
    config: &Config,
    queue: &Arc<dyn QueueBackend>,
    stop: &watch::Receiver<bool>,
) {
    let retention = secs(config.queue.dlq_retention_seconds);
    if retention.is_zero() {
        return;
    }
    let (queue, mut stop) = (Arc::clone(queue), stop.clone());
    tokio::spawn(async move {
        let period = (retention / 10).clamp(secs(1), secs(60));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let before = openhqm_core::time::now_ms()
                .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
            match queue.trim_dead_letters(before).await {
                Ok(deleted) => {
                    if deleted > 0 {
                        tracing::info!(
                            deleted,
                            retention_seconds = retention.as_secs(),
                            "deleted dead letters past their retention"
                        );
                    }
                    failing = false;
                }
                // Said once per outage: the queue's health reports the rest.
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "could not delete dead letters past their retention; trying again");
                    failing = true;
                }
                Err(e) => tracing::debug!(error = %e, "could not trim dead letters"),
            }
        }
    });
}

/// Keeps a queue's depth gauges current for scrapers and autoscalers, and
/// the API's admission estimate fresh (hence four times a second).
pub(super) async fn sample_depth(
    queue: Arc<dyn QueueBackend>,
    metrics: QueueMetrics,
    admission: Option<Arc<Admission>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let counted = admission.as_ref().map_or(0, |a| a.counted());
        if let Ok(depth) = queue.depth().await {
            if let Some(admission) = &admission {
                admission.record_depth(depth, counted);
            }
            metrics.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        if let Ok(dead) = queue.dead_letter_depth().await {
            metrics
                .dlq_depth
                .set(i64::try_from(dead).unwrap_or(i64::MAX));
        }
    }
}
