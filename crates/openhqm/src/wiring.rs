//! Builds the components from the configuration and runs them until a
//! signal or a failure of the embedded storage: the one place that knows
//! every concrete type.

mod http_server;
#[cfg(feature = "redis")]
mod redis;
mod tasks;

use tasks::{expire_dead_letters, sample_depth, watch_for_stop};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::http::HeaderName;
use openhqm_callbacks::{
    CallbackPolicy, CallbackSink, DispatchConfig, Dispatcher, EndpointCallbacks, SigningKey,
};
use openhqm_core::{Backoff, Decoder};
use openhqm_embedded::{Durability, EmbeddedDb, Options};
use openhqm_ingress::{Admission, ApiConfig, ApiState, IdempotencyConfig, SidecarConfig};
use openhqm_metrics::Metrics;
use openhqm_queue::QueueBackend;
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_store::ResultStore;
use openhqm_store::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use openhqm_upstream::{HealthChecks, ProxyProcessor};
use openhqm_worker::{CompletionSink, Processor, ReplyQueueSink, WorkerConfig, WorkerPool};
use tokio::sync::{Semaphore, watch};

use crate::config::{BackendType, Config, StoreType};

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Serve,
    Listener,
    Worker,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Serve => "serve",
            Self::Listener => "listener",
            Self::Worker => "worker",
        }
    }
}

/// Queue and store, and the embedded database under them if any.
struct Backends {
    db: Option<EmbeddedDb>,
    queue: Arc<dyn QueueBackend>,
    store: Arc<dyn ResultStore>,
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Opens the configured backends; validation has refused any this build lacks.
async fn open(config: &Config) -> anyhow::Result<Backends> {
    #[cfg(feature = "redis")]
    if config.queue.kind == BackendType::Redis || config.cache.kind == StoreType::Redis {
        return redis::open_redis(config).await;
    }
    if config.queue.kind != BackendType::Embedded || config.cache.kind != StoreType::Embedded {
        bail!("only the embedded queue and store are available in this build");
    }
    open_backends(config)
}

/// The embedded database with the embedded queue and store in it.
fn open_backends(config: &Config) -> anyhow::Result<Backends> {
    let dir = Path::new(&config.queue.data_dir);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create queue.data_dir {}", dir.display()))?;
    let durability = if config.queue.fsync {
        Durability::Fsync
    } else {
        Durability::Process
    };
    let db = EmbeddedDb::open(
        dir,
        &Options {
            durability,
            ..Options::default()
        },
    )
    .with_context(|| {
        format!(
            "cannot open the embedded database in {} (is another openhqm using it?)",
            dir.display()
        )
    })?;
    let queue = EmbeddedQueue::open(
        db.clone(),
        EmbeddedQueueConfig {
            name: config.queue.request_queue_name.clone(),
            dead_letter_name: config.queue.dlq_name.clone(),
            lease: secs(config.queue.lease_seconds),
            max_payload: config.server.max_body_size.saturating_mul(2).max(64 * 1024),
        },
    )
    .context("cannot open the embedded queue")?;
    let store = EmbeddedStore::open(
        db.clone(),
        &EmbeddedStoreConfig {
            ttl: secs(config.cache.ttl_seconds),
            sweep_interval: secs(config.cache.ttl_seconds).min(secs(60)),
        },
    )
    .context("cannot open the embedded result store")?;
    Ok(Backends {
        db: Some(db),
        queue: Arc::new(queue),
        store: Arc::new(store),
    })
}

/// Largest body of a side queue (callback jobs, replies): a whole result,
/// which may be a proxied response of up to `proxy.max_response_size`.
fn side_queue_max_payload(config: &Config) -> usize {
    config
        .server
        .max_body_size
        .max(config.proxy.max_response_size)
        .saturating_mul(2)
        .saturating_add(64 * 1024)
}

/// Opens another named queue on the backend of the request queue.
async fn open_side_queue(
    config: &Config,
    backends: &Backends,
    name: &str,
    dead_letter_name: &str,
    trim_older_than: Option<Duration>,
) -> anyhow::Result<Arc<dyn QueueBackend>> {
    #[cfg(feature = "redis")]
    if config.queue.kind == BackendType::Redis {
        return redis::open_side_queue(config, name, dead_letter_name, trim_older_than).await;
    }
    // Replies are refused on the embedded queue (nothing else could read them).
    let _ = trim_older_than;
    let db = backends
        .db
        .clone()
        .ok_or_else(|| anyhow!("the embedded database is not open"))?;
    let queue = EmbeddedQueue::open(
        db,
        EmbeddedQueueConfig {
            name: name.to_owned(),
            dead_letter_name: dead_letter_name.to_owned(),
            lease: secs(config.queue.lease_seconds),
            max_payload: side_queue_max_payload(config),
        },
    )
    .with_context(|| format!("cannot open the embedded queue `{name}`"))?;
    Ok(Arc::new(queue))
}

/// What runs when a request finishes: the completion sinks, plus the
/// callback dispatcher and the queues they opened.
struct Completion {
    sinks: Vec<Arc<dyn CompletionSink>>,
    dispatcher: Option<Dispatcher>,
    queues: Vec<Arc<dyn QueueBackend>>,
}

fn callback_policy(config: &Config) -> anyhow::Result<CallbackPolicy> {
    CallbackPolicy::new(&config.callbacks.allowed_hosts)
        .map_err(|e| anyhow!("callbacks.allowed_hosts: {}", e.join("; ")))
}

/// Builds the reply-queue sink and the callback sink and dispatcher, as configured.
async fn completion(
    config: &Config,
    backends: &Backends,
    metrics: &Metrics,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Completion> {
    let mut out = Completion {
        sinks: Vec::new(),
        dispatcher: None,
        queues: Vec::new(),
    };
    if config.queue.reply_enabled {
        let name = &config.queue.response_queue_name;
        // Replies live as long as the results they repeat.
        let retention = secs(config.cache.ttl_seconds);
        let queue = open_side_queue(
            config,
            backends,
            name,
            &format!("{name}-dlq"),
            Some(retention),
        )
        .await?;
        out.sinks.push(Arc::new(ReplyQueueSink::new(
            Arc::clone(&queue),
            metrics.queue(name),
        )));
        out.queues.push(queue);
        tracing::info!(queue = %name, "reply queue enabled");
    }
    let policy = callback_policy(config)?;
    if policy.is_enabled() {
        let cb = &config.callbacks;
        let key = SigningKey::from_secret(cb.secret.expose())
            .map_err(|e| anyhow!("callbacks.secret: {e}"))?;
        let queue = open_side_queue(config, backends, &cb.queue_name, &cb.dlq_name, None).await?;
        let endpoints = if config.proxy.enabled {
            EndpointCallbacks {
                urls: config
                    .proxy
                    .endpoints
                    .iter()
                    .filter_map(|(name, e)| Some((name.clone(), e.callback_url.clone()?)))
                    .collect(),
                default_endpoint: config.proxy.default_endpoint.clone(),
            }
        } else {
            EndpointCallbacks::default()
        };
        let queue_metrics = metrics.queue(&cb.queue_name);
        out.sinks.push(Arc::new(CallbackSink::new(
            Arc::clone(&queue),
            policy.clone(),
            endpoints,
            (queue_metrics.clone(), metrics.callbacks()),
        )));
        let dispatch = DispatchConfig {
            concurrency: cb.concurrency,
            timeout: secs(cb.timeout_seconds),
            backoff: Backoff {
                base: Duration::from_secs_f64(cb.retry_delay_base),
                max: Duration::from_secs_f64(cb.retry_delay_max),
                max_retries: cb.max_attempts.saturating_sub(1),
            },
            drain: secs(config.worker.drain_timeout_seconds),
            unavailable_backoff: Duration::from_secs_f64(cb.retry_delay_base),
        };
        tokio::spawn(sample_depth(
            Arc::clone(&queue),
            queue_metrics.clone(),
            None,
            stop.clone(),
        ));
        expire_dead_letters(config, &queue, stop);
        out.dispatcher = Some(
            Dispatcher::new(
                Arc::clone(&queue),
                policy,
                key,
                dispatch,
                metrics.callbacks(),
                queue_metrics,
            )
            .map_err(|e| anyhow!(e))?,
        );
        out.queues.push(queue);
        tracing::info!(allowed_hosts = ?cb.allowed_hosts, queue = %cb.queue_name, "completion callbacks enabled");
    }
    Ok(out)
}

fn worker_config(config: &Config) -> WorkerConfig {
    let w = &config.worker;
    WorkerConfig {
        count: w.count,
        batch_size: w.batch_size,
        timeout: secs(w.timeout_seconds),
        backoff: Backoff {
            base: Duration::from_secs_f64(w.retry_delay_base),
            max: Duration::from_secs_f64(w.retry_delay_max),
            max_retries: w.max_retries,
        },
        lease: secs(config.queue.lease_seconds),
        drain: secs(w.drain_timeout_seconds),
        unavailable_backoff: Duration::from_secs_f64(w.retry_delay_base),
    }
}

/// How workers read the request queue: envelopes, or foreign messages too.
fn decoder(config: &Config) -> Decoder {
    Decoder {
        format: config.queue.message_format,
        queue: config.queue.request_queue_name.clone(),
        endpoint: config.worker.foreign.endpoint.clone(),
        attribute_headers: config.worker.foreign.attribute_headers.clone(),
    }
}

/// Runs `mode` until SIGTERM, SIGINT or a failure of the embedded storage,
/// then shuts down in order: stop accepting, drain the workers, close the
/// queue, the store and the database.
pub(crate) async fn run(
    config: Config,
    mode: Mode,
    processor: Arc<dyn Processor>,
) -> anyhow::Result<()> {
    if let Some(refusal) = refuse_split(mode, config.queue.kind, config.cache.kind) {
        bail!(refusal);
    }
    if let Some(warning) = private_results(mode, config.queue.kind, config.cache.kind) {
        tracing::warn!("{warning}");
    }
    if mode == Mode::Worker
        && config.queue.kind == BackendType::Embedded
        && !Path::new(&config.queue.data_dir).exists()
    {
        tracing::warn!(
            data_dir = %config.queue.data_dir,
            "queue.data_dir does not exist and is created empty: this worker runs only what is stored there (is it the listener's directory?)"
        );
    }
    if mode != Mode::Serve && config.queue.kind == BackendType::Embedded {
        tracing::info!(
            data_dir = %config.queue.data_dir,
            "the embedded engine is one process's at a time: {}",
            match mode {
                Mode::Listener => "requests are stored here and wait for the next `openhqm serve` or `openhqm worker` on this data directory",
                _ => "this worker runs what is stored in this data directory, with no API",
            }
        );
    }
    let backends = open(&config).await?;
    let metrics = Metrics::new();
    let queue_metrics = metrics.queue(&config.queue.request_queue_name);
    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_for_stop(
        stop_tx,
        backends.db.clone(),
        secs(config.worker.drain_timeout_seconds),
    ));

    let state = Arc::new(ApiState {
        queue: Arc::clone(&backends.queue),
        store: Arc::clone(&backends.store),
        metrics: Arc::clone(&metrics),
        queue_metrics: queue_metrics.clone(),
        config: api_config(&config)?,
        admission: Arc::new(
            Admission::new(config.server.max_pending)
                .with_body_budget(config.server.max_buffered_bytes),
        ),
        waiting: Semaphore::new(config.server.max_waiting),
        stopping: stop_rx.clone(),
    });
    tokio::spawn(sample_depth(
        Arc::clone(&backends.queue),
        queue_metrics.clone(),
        Some(Arc::clone(&state.admission)),
        stop_rx.clone(),
    ));
    expire_dead_letters(&config, &backends.queue, &stop_rx);
    let sidecar = match (mode, config.sidecar.enabled, config.sidecar.port) {
        (Mode::Serve | Mode::Listener, true, Some(port)) => {
            let address = format!("{}:{port}", config.server.host);
            let listener = http_server::bind(&address, "sidecar.port").await?;
            tracing::info!(%address, "passthrough ingress listening");
            Some((
                listener,
                openhqm_ingress::sidecar_router(Arc::clone(&state)),
            ))
        }
        _ => None,
    };
    let router = match mode {
        Mode::Worker => openhqm_ingress::admin_router(state),
        Mode::Serve | Mode::Listener => openhqm_ingress::router(state),
    };
    let address = format!("{}:{}", config.server.host, config.server.port);
    let listener = http_server::bind(&address, "server.host / server.port").await?;
    tracing::info!(%address, mode = mode.name(), queue = config.queue.kind.as_str(), "openhqm listening");

    let (processor, health_checks) = match mode {
        Mode::Listener => (processor, None),
        Mode::Serve | Mode::Worker => choose_processor(&config, processor, &metrics)?,
    };
    let completion = match mode {
        Mode::Listener => None,
        Mode::Serve | Mode::Worker => {
            Some(completion(&config, &backends, &metrics, &stop_rx).await?)
        }
    };
    let mut side_queues = Vec::new();
    let mut dispatcher = None;
    let workers = completion.map(|c| {
        side_queues = c.queues;
        dispatcher = c.dispatcher.map(|d| tokio::spawn(d.run(stop_rx.clone())));
        let pool = WorkerPool::new(
            Arc::clone(&backends.queue),
            Arc::clone(&backends.store),
            processor,
            worker_config(&config),
            (metrics.worker(), queue_metrics),
        )
        .with_decoder(decoder(&config))
        .with_sinks(c.sinks);
        tokio::spawn(pool.run(stop_rx.clone()))
    });
    let read_timeout = secs(config.server.read_timeout_seconds);
    let api = http_server::serve_http(listener, router, read_timeout, stop_rx.clone());
    let passthrough = async {
        match sidecar {
            Some((listener, router)) => {
                http_server::serve_http(listener, router, read_timeout, stop_rx.clone()).await
            }
            None => Ok(()),
        }
    };
    tokio::try_join!(api, passthrough)?;
    if let Some(workers) = workers {
        let abandoned = workers.await.unwrap_or(0);
        if abandoned > 0 {
            tracing::warn!(abandoned, "messages left unacknowledged for redelivery");
        }
    }
    if let Some(dispatcher) = dispatcher {
        let abandoned = dispatcher.await.unwrap_or(0);
        if abandoned > 0 {
            tracing::warn!(abandoned, "callbacks left unacknowledged for redelivery");
        }
    }
    if let Some(checks) = health_checks {
        checks.stop().await;
    }
    for queue in side_queues {
        queue.close().await;
    }
    backends.queue.close().await;
    backends.store.close().await;
    if let Some(db) = &backends.db {
        db.close().await;
    }
    watcher.abort();
    if let Some(error) = backends.db.as_ref().and_then(EmbeddedDb::failure) {
        bail!("the embedded storage failed ({error}); restart openhqm to recover from its journal");
    }
    tracing::info!("openhqm stopped");
    Ok(())
}

/// Why `mode` cannot run on these backends, if it cannot. A listener or a
/// worker alone runs beside others only on a queue *and* a store shared
/// between processes. With both embedded, the one data directory serves one
/// process at a time, so a listener alone is a durable buffer that a later
/// `serve` or `worker` drains; with one of them embedded and the other
/// shared, the other processes could never see half of the work.
fn refuse_split(mode: Mode, queue: BackendType, cache: StoreType) -> Option<String> {
    if mode == Mode::Serve {
        return None;
    }
    match (queue == BackendType::Embedded, cache == StoreType::Embedded) {
        (true, true) | (false, false) => None,
        (true, false) => Some(format!(
            "`openhqm {}` with queue.type embedded keeps the messages in this process, where workers of other \
             processes cannot take them: set queue.type to a shared queue (redis) too, or run `openhqm serve`",
            mode.name()
        )),
        (false, true) => Some(format!(
            "`openhqm {}` with cache.type embedded keeps results in this process, where the API of other \
             processes cannot read them: set cache.type redis too, or run `openhqm serve`",
            mode.name()
        )),
    }
}

/// `serve` on a shared queue keeps results in its own embedded store: right
/// for one process, but replicas sharing the queue each write the results of
/// what their workers took, and a client asking another replica sees its
/// request PENDING until it expires. The earlier implementation's
/// `cache.type` defaulted to `redis`, so a deployment that sets only
/// `queue.type` gets this without asking for it.
fn private_results(mode: Mode, queue: BackendType, cache: StoreType) -> Option<&'static str> {
    (mode == Mode::Serve && queue != BackendType::Embedded && cache == StoreType::Embedded).then_some(
        "queue.type is shared but cache.type is embedded: results stay in this process, so replicas sharing \
         the queue cannot answer for each other's requests; set cache.type redis if more than one process runs",
    )
}

fn api_config(config: &Config) -> anyhow::Result<ApiConfig> {
    let sidecar = &config.sidecar;
    let forward_all = sidecar.forward_headers.iter().any(|h| h.trim() == "*");
    Ok(ApiConfig {
        max_body_size: config.server.max_body_size,
        read_timeout: secs(config.server.read_timeout_seconds),
        retry_after_secs: config.server.retry_after_seconds,
        probe_timeout: secs(2),
        metrics_enabled: config.monitoring.metrics_enabled,
        known_endpoints: config
            .proxy
            .enabled
            .then(|| config.proxy.endpoints.keys().cloned().collect()),
        max_wait: secs(config.server.max_wait_seconds),
        callbacks: callback_policy(config)?,
        decoder: decoder(config),
        idempotency: IdempotencyConfig {
            ttl: secs(
                config
                    .idempotency
                    .ttl_seconds
                    .unwrap_or(config.cache.ttl_seconds),
            ),
            // Validated at load.
            identity_header: HeaderName::from_bytes(config.idempotency.identity_header.as_bytes())
                .unwrap_or(axum::http::header::AUTHORIZATION),
        },
        sidecar: sidecar.enabled.then(|| SidecarConfig {
            endpoint: sidecar.endpoint.clone(),
            wait: secs(sidecar.wait_seconds),
            path_prefix: sidecar.path_prefix.clone(),
            forward_headers: (!forward_all).then(|| {
                sidecar
                    .forward_headers
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .collect()
            }),
            preserve_host: sidecar.preserve_host,
        }),
    })
}

/// With `proxy.enabled` the workers forward to HTTP backends; otherwise they
/// run `processor` (the demo one, or the user's from `main_with`).
fn choose_processor(
    config: &Config,
    processor: Arc<dyn Processor>,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<dyn Processor>, Option<HealthChecks>)> {
    if !config.proxy.enabled {
        return Ok((processor, None));
    }
    let proxy = ProxyProcessor::new(&config.proxy.upstream(), metrics)
        .context("cannot set up proxy mode")?;
    let checks = proxy.start_health_checks();
    Ok((Arc::new(proxy), Some(checks)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_that_would_split_the_work_are_refused_or_warned_about() {
        let (embedded, redis) = (BackendType::Embedded, BackendType::Redis);
        let (local, shared) = (StoreType::Embedded, StoreType::Redis);
        assert!(refuse_split(Mode::Listener, embedded, shared).is_some());
        assert!(refuse_split(Mode::Worker, redis, local).is_some());
        assert!(refuse_split(Mode::Serve, redis, local).is_none());
        assert!(private_results(Mode::Serve, redis, local).is_some());
        for (mode, queue, cache) in [
            (Mode::Serve, embedded, local),
            (Mode::Serve, redis, shared),
            (Mode::Listener, redis, shared),
        ] {
            assert!(private_results(mode, queue, cache).is_none());
        }
    }
}
