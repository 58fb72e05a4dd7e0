//! The Redis Streams queue: one stream, one consumer group, many processes.
//!
//! # How our semantics map onto Redis
//! - **Publish** is `XADD <stream> * payload <body> ...` (field layout in
//!   [`entry`]). An external producer's `XADD openhqm-requests * payload
//!   '<envelope JSON>'` is therefore a message like any other; its id is the
//!   entry id and its attempt 1. A publish returns once Redis has the entry in
//!   memory; how durable that is depends on Redis's own persistence settings.
//! - **Receive** reads new entries with `XREADGROUP ... >` on a connection of
//!   its own (a blocking read on the shared multiplexed connection would stall
//!   every other command behind it). Blocks are capped at a fraction of the
//!   lease and at the next retry's due time, because the same loop must also
//!   move due retries back and take over expired leases (below).
//! - **Leases** are Redis's pending entries list: an entry read by a consumer
//!   stays pending until acked. An entry idle (not re-claimed) longer than the
//!   lease is taken over with `XAUTOCLAIM` by whichever consumer receives next,
//!   including the same one after a restart. Extending is `XCLAIM ... JUSTID`
//!   to ourselves, which resets the idle time without counting a delivery.
//! - **Attempt** = the entry's `attempt` field (1 if absent) + its delivery
//!   count - 1. The delivery count is also the lease token: every settle runs
//!   as a Lua script ([`scripts`]) that first checks that the entry is still
//!   pending for this consumer with the count we saw, and otherwise answers
//!   [`QueueError::LeaseLost`] without touching it.
//! - **Ack** is `XACK` + `XDEL` in one script, so the stream holds only
//!   unacknowledged entries and storage stays bounded.
//! - **Retry** moves the entry, atomically, into the sorted set
//!   `<stream>:delayed` (scored by its due time from Redis's clock, fields in
//!   a hash) with attempt + 1 and its message id kept in `origin`, and deletes
//!   it from the stream. Every receive first runs a script moving due members
//!   back with `XADD`; being one script, two workers never both move one.
//!   Nothing wakes a blocked read when a retry falls due, so while this
//!   process holds deliveries (whose handlers may schedule retries) its
//!   reads block at most [`BUSY_BLOCK`]: a short delay is stretched by that
//!   much at most, not by a whole read. (`CLIENT UNBLOCK` would end the read
//!   at once, but a connection's id outlives a reconnect, and after a Redis
//!   restart it may name another client.)
//! - **Dead letters** go, atomically with the ack, to the dead-letter stream
//!   with `reason` and `dead_at`. Redrive moves them back with attempt 1;
//!   past their retention they are trimmed (`XTRIM MINID`).
//!   An entry without a `payload` field cannot become a message: receive
//!   dead-letters it at once with a reason instead of leaving it pending.
//! - **Depth** is `XLEN` of the stream + `ZCARD` of the delayed set. Since
//!   acked entries are deleted, the stream length is exactly the waiting plus
//!   leased entries. The group's `lag` is not used: Redis cannot compute it
//!   once entries are deleted from the middle of a stream. This assumes the
//!   stream is consumed by our group only.
//! - **Ordering**: one consumer sees new entries in stream order. A retry or
//!   a takeover goes to the back, as with the embedded queue.
//! - **Group creation**: `XGROUP CREATE <stream> <group> 0 MKSTREAM` on open,
//!   tolerating `BUSYGROUP`; id `0` so entries written before the group
//!   existed are consumed. A `NOGROUP` error later (Redis restarted without
//!   its data) recreates the group and carries on.
//! - **Redis down**: commands time out after a few seconds and map to
//!   [`QueueError::Unavailable`]; the connection manager reconnects on its own.
//! - **Eviction** would lose accepted work silently, so Redis must run with
//!   `maxmemory-policy noeviction` (a full Redis then refuses writes: a 503).
//!   Opening the queue warns otherwise, when `CONFIG GET` is allowed.
//!
//! The Lua scripts touch keys derived from the stream name, so this backend
//! targets a single Redis (or a primary with replicas), not Redis Cluster.

mod entry;
mod receive;
mod scripts;
mod settle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Capabilities, DeadLetter, Delivery, OutgoingMessage, QueueBackend, QueueError};
use scripts::Scripts;

/// The consumer group used unless configured otherwise.
pub const DEFAULT_GROUP: &str = "openhqm-workers";

/// How long a non-blocking command may take before Redis counts as down.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest single blocking read (see the module docs).
const MAX_BLOCK: Duration = Duration::from_secs(1);
/// The longest blocking read while this process holds deliveries.
const BUSY_BLOCK: Duration = Duration::from_millis(50);

/// Settings of the Redis queue.
#[derive(Clone)]
pub struct RedisQueueConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// The request stream (`queue.request_queue_name`).
    pub stream: String,
    /// The consumer group shared by every worker.
    pub group: String,
    /// This process's consumer name; unique per live process.
    pub consumer: String,
    /// The dead-letter stream (`queue.dlq_name`).
    pub dead_letter_stream: String,
    /// Idle time after which another consumer takes an entry over.
    pub lease: Duration,
    /// Largest body accepted.
    pub max_payload: usize,
    /// Entries older than this are trimmed as new ones are added (`XADD
    /// MINID ~`): for a stream that outside consumers read without deleting
    /// (the reply stream), never for one whose entries are work.
    pub trim_older_than: Option<Duration>,
}

impl std::fmt::Debug for RedisQueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisQueueConfig")
            .field("url", &"***")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("dead_letter_stream", &self.dead_letter_stream)
            .field("lease", &self.lease)
            .field("max_payload", &self.max_payload)
            .field("trim_older_than", &self.trim_older_than)
            .finish()
    }
}

/// How often a receive looks for consumers of gone processes.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// The shortest idle time after which an empty consumer is forgotten.
const MIN_CONSUMER_IDLE: Duration = Duration::from_secs(600);

/// The Redis Streams queue. Share it as `Arc<dyn QueueBackend>`.
pub struct RedisQueue {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    /// Multiplexed, auto-reconnecting: every non-blocking command.
    conn: ConnectionManager,
    /// Blocking reads only, one at a time.
    blocking: tokio::sync::Mutex<ConnectionManager>,
    /// Deliveries handed out and not yet settled or dropped ([`settle::Held`]).
    /// While there are any, a handler may schedule a retry at any moment,
    /// so blocking reads are kept short ([`BUSY_BLOCK`]).
    held: AtomicUsize,
    scripts: Scripts,
    delayed: String,
    /// Where the next `XAUTOCLAIM` scan of the pending list starts.
    claim_cursor: std::sync::Mutex<String>,
    /// When idle consumers were last looked for (`forget_idle_consumers`).
    idle_checked: std::sync::Mutex<Instant>,
    closed: AtomicBool,
    config: RedisQueueConfig,
}

impl Shared {
    fn lock_cursor(&self) -> std::sync::MutexGuard<'_, String> {
        self.claim_cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn redis_error(e: redis::RedisError) -> QueueError {
    if is_refusal(&e) {
        QueueError::Refused(e.to_string())
    } else {
        QueueError::Unavailable(e.to_string())
    }
}

/// A wrong or missing password, or an ACL user without the permission.
fn is_refusal(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

impl RedisQueue {
    /// Connects, and creates the stream and group if they do not exist.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if Redis cannot be reached or the URL is invalid.
    pub async fn open(config: RedisQueueConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(config.url.as_str()).map_err(redis_error)?;
        let conn =
            ConnectionManager::new_with_config(client.clone(), manager_config(RESPONSE_TIMEOUT))
                .await
                .map_err(redis_error)?;
        let blocking = ConnectionManager::new_with_config(
            client,
            manager_config(MAX_BLOCK + RESPONSE_TIMEOUT),
        )
        .await
        .map_err(redis_error)?;
        let queue = Self {
            shared: Arc::new(Shared {
                conn,
                blocking: tokio::sync::Mutex::new(blocking),
                held: AtomicUsize::new(0),
                scripts: Scripts::new(),
                delayed: format!("{}:delayed", config.stream),
                claim_cursor: std::sync::Mutex::new("0-0".into()),
                idle_checked: std::sync::Mutex::new(Instant::now()),
                closed: AtomicBool::new(false),
                config,
            }),
        };
        queue.create_group().await?;
        queue.warn_if_redis_may_evict().await;
        Ok(queue)
    }

    /// Warns unless Redis's `maxmemory-policy` is `noeviction`: under any
    /// other policy a full Redis deletes keys (this stream's entries, delayed
    /// retries, results) to make room, losing accepted work without a word,
    /// where `noeviction` refuses the write and the caller gets a 503.
    /// Managed Redis often disables `CONFIG`; then nothing can be known, and
    /// nothing is said.
    async fn warn_if_redis_may_evict(&self) {
        let asked: Result<std::collections::HashMap<String, String>, _> = self
            .query(redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
            .await;
        let Ok(config) = asked else { return };
        if let Some(policy) = config.get("maxmemory-policy")
            && policy != "noeviction"
        {
            tracing::warn!(
                stream = %self.shared.config.stream,
                maxmemory_policy = %policy,
                "Redis may evict keys when full, dropping queued requests and results; \
                 set maxmemory-policy to noeviction"
            );
        }
    }

    /// Deletes the group's consumers (not this one) that hold no entry and
    /// have been idle for longer than `idle`. Every receive does this once
    /// per [`IDLE_CHECK_EVERY`], with `idle` the larger of ten leases and
    /// [`MIN_CONSUMER_IDLE`]; a live consumer deleted while idle is made
    /// again by its next read.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn forget_idle_consumers(&self, idle: Duration) -> Result<u64, QueueError> {
        let s = &self.shared;
        let mut conn = s.conn.clone();
        s.scripts
            .forget_idle
            .key(&s.config.stream)
            .arg(&s.config.group)
            .arg(&s.config.consumer)
            .arg(duration_ms(idle))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    /// The periodic [`RedisQueue::forget_idle_consumers`]; failures are
    /// only logged: it is housekeeping.
    async fn forget_idle_consumers_now_and_then(&self) {
        {
            let mut last = self
                .shared
                .idle_checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.elapsed() < IDLE_CHECK_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let idle = (self.shared.config.lease * 10).max(MIN_CONSUMER_IDLE);
        match self.forget_idle_consumers(idle).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(consumers = n, "forgot idle consumers of gone processes"),
            Err(e) => tracing::debug!(error = %e, "could not look for idle consumers"),
        }
    }

    /// `XGROUP CREATE ... 0 MKSTREAM`; an existing group is fine.
    async fn create_group(&self) -> Result<(), QueueError> {
        let c = &self.shared.config;
        let mut conn = self.shared.conn.clone();
        let created: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&c.stream)
            .arg(&c.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {
                tracing::info!(stream = %c.stream, group = %c.group, "created the consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(redis_error(e)),
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, QueueError> {
        let mut conn = self.shared.conn.clone();
        cmd.query_async(&mut conn).await.map_err(redis_error)
    }
}

#[async_trait]
impl QueueBackend for RedisQueue {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delayed_delivery: true,
            native_dead_letter: true,
            priority: false,
            fifo: true,
            max_payload: self.shared.config.max_payload,
        }
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<(), QueueError> {
        let limit = self.shared.config.max_payload;
        if message.body.len() > limit {
            return Err(QueueError::PayloadTooLarge {
                size: message.body.len(),
                limit,
            });
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.shared.config.stream);
        if let Some(age) = self.shared.config.trim_older_than {
            // Stream ids start with their entry's time in ms.
            let oldest = crate::now_ms().saturating_sub(duration_ms(age));
            cmd.arg("MINID").arg("~").arg(oldest);
        }
        cmd.arg("*");
        for (k, v) in entry::publish_fields(&message) {
            cmd.arg(k).arg(v);
        }
        let _id: String = self.query(&cmd).await?;
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.forget_idle_consumers_now_and_then().await;
        self.receive_batch(max.max(1), wait).await
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&self.shared.config.stream)
            .cmd("ZCARD")
            .arg(&self.shared.delayed);
        let mut conn = self.shared.conn.clone();
        let (len, delayed): (u64, u64) = pipe.query_async(&mut conn).await.map_err(redis_error)?;
        Ok(len + delayed)
    }

    async fn dead_letter_depth(&self) -> Result<u64, QueueError> {
        self.query(redis::cmd("XLEN").arg(&self.shared.config.dead_letter_stream))
            .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let reply: redis::Value = self
            .query(
                redis::cmd("XRANGE")
                    .arg(&self.shared.config.dead_letter_stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        Ok(entry::parse_entries(&reply)
            .iter()
            .map(entry::Entry::dead_letter)
            .collect())
    }

    async fn redrive(&self, limit: usize) -> Result<u64, QueueError> {
        let c = &self.shared.config;
        let mut conn = self.shared.conn.clone();
        self.shared
            .scripts
            .redrive
            .key(&c.dead_letter_stream)
            .key(&c.stream)
            .arg(limit)
            .arg(crate::REDRIVEN)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn trim_dead_letters(&self, before_ms: u64) -> Result<u64, QueueError> {
        // Dead letters are added with `XADD *`: an entry's id is its time of
        // dead-lettering (Redis's clock), and `MINID` trims exactly below it.
        self.query(
            redis::cmd("XTRIM")
                .arg(&self.shared.config.dead_letter_stream)
                .arg("MINID")
                .arg(before_ms),
        )
        .await
    }

    async fn health(&self) -> Result<(), QueueError> {
        let _pong: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}
