//! Opening the Redis queue and result store from the configuration. Parts
//! still configured as embedded come from the embedded database as usual.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use openhqm_queue::backends::redis::{RedisQueue, RedisQueueConfig};
use openhqm_queue::{QueueBackend, QueueError};
use openhqm_store::redis::{DEFAULT_CHANNEL, DEFAULT_KEY_PREFIX, RedisStore, RedisStoreConfig};
use openhqm_store::{ResultStore, StoreError};

use super::{Backends, open_backends, secs};
use crate::config::{BackendType, Config, StoreType};

/// `<hostname>-<pid>`: unique among live processes, and the same name for
/// the same process across reconnects.
fn default_consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "openhqm".into());
    format!("{host}-{}", std::process::id())
}

fn queue_config(config: &Config) -> RedisQueueConfig {
    let q = &config.queue;
    RedisQueueConfig {
        url: q.redis_url.expose().to_owned(),
        stream: q.request_queue_name.clone(),
        group: q.redis_consumer_group.clone(),
        consumer: q
            .redis_consumer_name
            .clone()
            .unwrap_or_else(default_consumer_name),
        dead_letter_stream: q.dlq_name.clone(),
        lease: secs(q.lease_seconds),
        max_payload: config.server.max_body_size.saturating_mul(2).max(64 * 1024),
        trim_older_than: None,
    }
}

/// Opens another stream (callback jobs, replies) beside the request stream,
/// with the same group and consumer name.
pub(super) async fn open_side_queue(
    config: &Config,
    name: &str,
    dead_letter_name: &str,
    trim_older_than: Option<Duration>,
) -> anyhow::Result<Arc<dyn QueueBackend>> {
    let q = RedisQueueConfig {
        stream: name.to_owned(),
        dead_letter_stream: dead_letter_name.to_owned(),
        max_payload: super::side_queue_max_payload(config),
        trim_older_than,
        ..queue_config(config)
    };
    let queue = RedisQueue::open(q)
        .await
        .with_context(|| format!("cannot open the Redis stream `{name}`"))?;
    Ok(Arc::new(queue))
}

/// How long a process started before its Redis waits for it.
const STARTUP_WAIT: Duration = Duration::from_secs(60);

/// Runs `open` until it succeeds or [`STARTUP_WAIT`] has passed, backing off
/// from half a second to five: a listener or worker started with (or just
/// before) its Redis, as a pod or a compose file starts them, waits for it
/// instead of exiting at once. A refusal (`refused`: wrong credentials) ends
/// it at once: waiting cannot fix the configuration.
async fn until_reachable<T, E, F>(
    what: &str,
    refused: impl Fn(&E) -> bool,
    mut open: impl FnMut() -> F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    let mut pause = Duration::from_millis(500);
    loop {
        match open().await {
            Ok(opened) => return Ok(opened),
            Err(e) if !refused(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, retry_in = ?pause, "{what}: Redis is not reachable yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Why the Redis `what` configured by `key` did not open.
fn cannot_open(
    refused: bool,
    e: impl std::error::Error + Send + Sync + 'static,
    what: &str,
    key: &str,
) -> anyhow::Error {
    let hint = if refused {
        format!("check the credentials in {key}")
    } else {
        format!("{key}; is Redis running?")
    };
    anyhow::Error::new(e).context(format!("cannot open the Redis {what} ({hint})"))
}

/// Opens the backends when at least one of them is Redis.
pub(super) async fn open_redis(config: &Config) -> anyhow::Result<Backends> {
    let uses_embedded =
        config.queue.kind == BackendType::Embedded || config.cache.kind == StoreType::Embedded;
    // The embedded half opens the database (and both embedded parts; the one
    // replaced by Redis below stays idle).
    let embedded = if uses_embedded {
        Some(open_backends(config)?)
    } else {
        None
    };
    let queue: Arc<dyn QueueBackend> = match (config.queue.kind, &embedded) {
        (BackendType::Redis, _) => {
            let q = queue_config(config);
            tracing::info!(stream = %q.stream, group = %q.group, consumer = %q.consumer, "opening the Redis queue");
            let refused = |e: &QueueError| matches!(e, QueueError::Refused(_));
            Arc::new(
                until_reachable("the queue", refused, || RedisQueue::open(q.clone()))
                    .await
                    .map_err(|e| cannot_open(refused(&e), e, "queue", "queue.redis_url"))?,
            )
        }
        (_, Some(e)) => Arc::clone(&e.queue),
        (kind, None) => bail!("queue.type `{}` is not available", kind.as_str()),
    };
    let store: Arc<dyn ResultStore> = match (config.cache.kind, &embedded) {
        (StoreType::Redis, _) => {
            let c = RedisStoreConfig {
                url: config.cache.redis_url.expose().to_owned(),
                ttl: secs(config.cache.ttl_seconds),
                key_prefix: DEFAULT_KEY_PREFIX.into(),
                channel: DEFAULT_CHANNEL.into(),
            };
            let refused = |e: &StoreError| matches!(e, StoreError::Refused(_));
            Arc::new(
                until_reachable("the result store", refused, || RedisStore::open(c.clone()))
                    .await
                    .map_err(|e| cannot_open(refused(&e), e, "result store", "cache.redis_url"))?,
            )
        }
        (_, Some(e)) => Arc::clone(&e.store),
        (kind, None) => bail!("cache.type `{}` is not available", kind.as_str()),
    };
    Ok(Backends {
        db: embedded.and_then(|e| e.db),
        queue,
        store,
    })
}
