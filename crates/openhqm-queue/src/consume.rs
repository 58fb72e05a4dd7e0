//! The consumer loop shared by everything that works a queue (the worker
//! pool, the callback dispatcher): receive batches sized to the free slots,
//! run each delivery in its own task holding a slot, and on shutdown stop
//! receiving (a receive in flight finishes, and gives back what it got),
//! give the tasks in flight the drain time, and abandon the rest unsettled
//! so their messages are redelivered later.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::{Delivery, Nack, QueueBackend};

/// How a [`consume`] loop runs.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// What the logs call this consumer, e.g. `"worker pool"`.
    pub name: &'static str,
    /// Deliveries handled at once.
    pub concurrency: usize,
    /// Most deliveries taken per receive.
    pub batch_size: usize,
    /// How long handlers in flight may finish after shutdown begins.
    pub drain: Duration,
    /// Delay before receiving again after the queue failed.
    pub unavailable_backoff: Duration,
}

/// Runs `handle` on each delivery of `queue` until `shutdown` turns `true`,
/// then drains. `received` is told the size of every batch. Returns how many
/// handlers were abandoned because the drain time ran out.
pub async fn consume<H, F>(
    queue: Arc<dyn QueueBackend>,
    config: &ConsumeConfig,
    mut shutdown: watch::Receiver<bool>,
    received: impl Fn(usize),
    handle: H,
) -> usize
where
    H: Fn(Delivery) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let name = config.name;
    let concurrency = config.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running = JoinSet::new();
    tracing::info!(concurrency, "{name} started");
    while !*shutdown.borrow() {
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let want = (1 + slots.available_permits()).min(config.batch_size.max(1));
        let receiving = queue.receive(want, Duration::from_secs(1));
        tokio::pin!(receiving);
        let batch = tokio::select! {
            r = &mut receiving => r,
            _ = shutdown.changed() => {
                // Not dropped mid-call: a receive cut off after the broker
                // handed messages over (a Redis read already sent) would
                // leave them leased to no one, to come back after the lease
                // with an attempt used. It ends within its wait; what it
                // got goes back at once, as the same attempt.
                // All within the drain time, and the releases at once: a
                // broker that stopped answering must not hold the shutdown.
                let give_back = async {
                    let Ok(got) = receiving.await else { return };
                    let mut releases = JoinSet::new();
                    for delivery in got {
                        releases.spawn(async move {
                            delivery.nack(Nack::Release { delay: Duration::ZERO }).await
                        });
                    }
                    while let Some(released) = releases.join_next().await {
                        if let Ok(Err(e)) = released {
                            tracing::warn!(error = %e, "{name}: could not give back a message received during shutdown");
                        }
                    }
                };
                if tokio::time::timeout(config.drain, give_back).await.is_err() {
                    tracing::warn!("{name}: giving back messages received during shutdown took longer than the drain; left for their lease");
                }
                break;
            }
        };
        let deliveries = match batch {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "{name}: receiving from the queue failed; backing off");
                drop(first);
                tokio::select! {
                    () = tokio::time::sleep(config.unavailable_backoff) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        received(deliveries.len());
        let mut first = Some(first);
        for delivery in deliveries {
            // Only this loop takes slots and `want` never exceeded the free
            // ones, so a slot is always there.
            let permit = first
                .take()
                .or_else(|| Arc::clone(&slots).try_acquire_owned().ok());
            // Boxed: a handler's future can be kilobytes, and tokio moves a
            // task's future by value when it spawns and again when it ends.
            let work = Box::pin(handle(delivery));
            running.spawn(async move {
                let _permit = permit;
                work.await;
            });
        }
        while running.try_join_next().is_some() {}
    }
    drain(name, config.drain, running).await
}

/// Gives the handlers in flight `drain` to finish, then abandons the rest.
async fn drain(name: &str, drain: Duration, mut running: JoinSet<()>) -> usize {
    let in_flight = running.len();
    tracing::info!(in_flight, ?drain, "{name} draining");
    let drained = tokio::time::timeout(drain, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    let abandoned = running.len();
    if drained.is_err() {
        tracing::warn!(
            abandoned,
            "{name}: drain timeout; messages in flight left unacknowledged for redelivery"
        );
        running.abort_all();
        while running.join_next().await.is_some() {}
    }
    tracing::info!("{name} stopped");
    abandoned
}
