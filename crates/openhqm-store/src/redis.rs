//! The Redis result store, shared by every listener and worker process.
//!
//! # How the store maps onto Redis
//! - **One key per request**, `<prefix><correlation id>` (prefix
//!   `openhqm:result:` by default), holding the [`RequestRecord`] as JSON.
//!   Every write sets the expiry (`PX`) to the record's [`lifetime`]: `ttl`
//!   after its last change once finished, at least a week before; Redis
//!   itself deletes it: no sweeper.
//! - **Transitions** read the record, apply [`apply_update`] in Rust (the one
//!   place the transition table lives) and write the result with a
//!   compare-and-set Lua script that only writes if the stored value is still
//!   the one read. A lost race re-reads and re-applies. Status and result are
//!   one value in one `SET`, so COMPLETED is never visible without its result.
//!   `WATCH`/`MULTI` would do the same but needs a connection per
//!   transaction; the script works on the shared multiplexed connection.
//! - **Completion is published**: the same script, when the new status is
//!   terminal, does `PUBLISH <channel> <id>` (channel `openhqm:done`), in the
//!   same atomic step as the write.
//! - **Waiting** ([`ResultStore::wait_terminal`]): each process holds one
//!   subscriber connection, run by one listener task, that fans published ids
//!   out to waiters through a map of id → [`Notify`]. A waiter registers, then
//!   reads the record, then sleeps until notified or timed out, so a result
//!   landing between the read and the sleep still wakes it. While the
//!   subscriber is reconnecting messages can be missed, so after every
//!   (re)subscription it wakes every waiter to read again; a read that fails
//!   while Redis is coming back is retried until the waiter's deadline.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use openhqm_core::time::now_ms;
use openhqm_core::{CorrelationId, RequestRecord, RequestStatus};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinHandle;

use crate::waiters::Waiters;
use crate::{Claim, KeyClaim, ResultStore, StoreError, Transition, Update, apply_update, lifetime};

/// Default key prefix of records.
pub const DEFAULT_KEY_PREFIX: &str = "openhqm:result:";
/// Default channel on which finished ids are published.
pub const DEFAULT_CHANNEL: &str = "openhqm:done";

/// Prefix of idempotency keys.
const IDEMPOTENCY_PREFIX: &str = "openhqm:idempotency:";

/// KEYS: idempotency key. ARGV: correlation id. Deletes the key only if it
/// still stands for that request.
const RELEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and cjson.decode(cur).correlation_id == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
";

/// How long a command may take before Redis counts as down.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a transition re-reads after losing a race before giving up.
const MAX_CAS_ROUNDS: usize = 64;

/// KEYS: record. ARGV: expected ("0" = absent, "1" = ARGV[2], "2" = absent
/// or ARGV[2]), expected value, new value, ttl ms, channel ("" = do not
/// publish), id.
const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if cur then return 0 end
elseif ARGV[1] == '2' then
  if cur and cur ~= ARGV[2] then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1
";

/// Settings of the Redis store.
#[derive(Clone)]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// How long a record lives after its last change.
    pub ttl: Duration,
    /// Prefix of record keys.
    pub key_prefix: String,
    /// Channel on which finished ids are published.
    pub channel: String,
}

impl std::fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisStoreConfig")
            .field("url", &"***")
            .field("ttl", &self.ttl)
            .field("key_prefix", &self.key_prefix)
            .field("channel", &self.channel)
            .finish()
    }
}

/// The Redis result store.
pub struct RedisStore {
    conn: ConnectionManager,
    cas: Script,
    waiters: Arc<Waiters>,
    listener: Mutex<Option<JoinHandle<()>>>,
    config: RedisStoreConfig,
}

fn redis_error(e: redis::RedisError) -> StoreError {
    // A wrong or missing password, or an ACL user without the permission
    // (the queue's Redis backend tells them apart the same way).
    let refused = e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"));
    if refused {
        StoreError::Refused(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn encode(record: &RequestRecord) -> Vec<u8> {
    // Serializing our own record type cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

fn decode(id: CorrelationId, raw: &[u8]) -> Result<RequestRecord, StoreError> {
    RequestRecord::from_stored(raw).map_err(|e| StoreError::Corrupt {
        id,
        reason: e.to_string(),
    })
}

impl RedisStore {
    /// Connects, and subscribes to the completion channel before returning.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if Redis cannot be reached or the URL is
    /// invalid, [`StoreError::Refused`] if it refuses the credentials.
    pub async fn open(config: RedisStoreConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str()).map_err(redis_error)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = ConnectionManager::new_with_config(client.clone(), manager)
            .await
            .map_err(redis_error)?;
        // A URL without the password Redis wants connects: the refusal
        // (NOAUTH) comes with the first command, here rather than in the
        // subscriber, which would only time out.
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)?;
        let waiters = Arc::new(Waiters::default());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(listen(
            client,
            config.channel.clone(),
            Arc::clone(&waiters),
            ready_tx,
        ));
        match tokio::time::timeout(Duration::from_secs(5), ready_rx).await {
            Ok(Ok(())) => {}
            _ => {
                listener.abort();
                return Err(StoreError::Unavailable(
                    "cannot subscribe to the completion channel".into(),
                ));
            }
        }
        Ok(Self {
            conn,
            cas: Script::new(CAS),
            waiters,
            listener: Mutex::new(Some(listener)),
            config,
        })
    }

    /// The `PX` of a write of `record`: its [`lifetime`].
    fn px(&self, record: &RequestRecord) -> u64 {
        ttl_ms(lifetime(record.status, self.config.ttl))
    }

    fn key(&self, id: CorrelationId) -> String {
        format!("{}{id}", self.config.key_prefix)
    }

    /// Runs `cmd`, which must be idempotent, sending it once more if the
    /// connection had dropped while idle (a Redis restart): the manager only
    /// reconnects after a command fails on it, and a client should not see
    /// an outage that is already over. (Other writes are not resent: one may
    /// have landed before the connection dropped.)
    async fn query_idempotent<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match cmd.query_async(&mut conn).await {
            Err(e) if e.is_connection_dropped() => cmd.query_async(&mut conn).await,
            other => other,
        }
        .map_err(redis_error)
    }

    async fn get_raw(&self, id: CorrelationId) -> Result<Option<Vec<u8>>, StoreError> {
        self.query_idempotent(redis::cmd("GET").arg(self.key(id)))
            .await
    }

    /// Writes `new` if the record still reads as `expected`; publishes if it
    /// is finished.
    async fn compare_and_set(
        &self,
        id: CorrelationId,
        expected: Expected<'_>,
        new: &RequestRecord,
    ) -> Result<bool, StoreError> {
        let (mode, value) = match expected {
            Expected::Absent => ("0", &[][..]),
            Expected::Exactly(v) => ("1", v),
            Expected::AbsentOr(v) => ("2", v),
        };
        let done = new.status.is_terminal();
        let mut invocation = self.cas.key(self.key(id));
        invocation
            .arg(mode)
            .arg(value)
            .arg(encode(new))
            .arg(self.px(new))
            .arg(if done {
                self.config.channel.as_str()
            } else {
                ""
            })
            .arg(id.to_string());
        let mut conn = self.conn.clone();
        let written: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(written == 1)
    }
}

/// What a compare-and-set expects the record to read.
enum Expected<'a> {
    Absent,
    Exactly(&'a [u8]),
    AbsentOr(&'a [u8]),
}

/// How often the subscription checks that its connection is alive. A
/// silently dead connection delays every waiter of this process until it is
/// noticed (at most this plus [`PONG_TIMEOUT`]), while a ping costs Redis
/// next to nothing.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a ping may go unanswered before the subscription is made again:
/// as long as any other command may take before Redis counts as down. One
/// given up on too early costs only a resubscription, and every waiter
/// reading its record once more.
const PONG_TIMEOUT: Duration = RESPONSE_TIMEOUT;

/// The one subscriber of this process: fans finished ids out to waiters,
/// and resubscribes after a lost connection.
async fn listen(
    client: redis::Client,
    channel: String,
    waiters: Arc<Waiters>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    // Doubles while Redis stays away; the first failure of an outage is a
    // warning, the rest are debug lines (the health probes report the outage).
    let mut backoff = RESUBSCRIBE_MIN;
    loop {
        match subscribe(&client, &channel).await {
            Ok(pubsub) => {
                let subscribed = std::time::Instant::now();
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                // Anything finished while we were not subscribed: read again.
                waiters.wake_all();
                let (mut sink, mut messages) = pubsub.split();
                // A connection dropped without a reset (an idle timeout in a
                // NAT or balancer) ends no stream: a ping that gets no pong
                // says so, and the subscription is made again.
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let id = msg
                                .get_payload::<String>()
                                .ok()
                                .and_then(|s| s.parse::<CorrelationId>().ok());
                            if let Some(id) = id {
                                waiters.wake(id);
                            }
                        }
                        _ = heartbeat.tick() => {
                            let pong = tokio::time::timeout(PONG_TIMEOUT, sink.ping::<()>()).await;
                            if !matches!(pong, Ok(Ok(()))) {
                                break;
                            }
                        }
                    }
                }
                // Only a subscription that held starts the backoff over: one
                // dropped at once (a flapping proxy) keeps backing off.
                if subscribed.elapsed() >= HEARTBEAT {
                    backoff = RESUBSCRIBE_MIN;
                }
                tracing::warn!(%channel, "result-store subscription lost; resubscribing");
            }
            Err(e) if backoff == RESUBSCRIBE_MIN => {
                tracing::warn!(%channel, error = %e, "cannot subscribe to the result store; retrying with backoff");
            }
            Err(e) => tracing::debug!(%channel, error = %e, "cannot subscribe to the result store"),
        }
        // Back off before reconnecting so a down Redis is not hammered.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
    }
}

/// The first and the longest wait before subscribing again.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(250);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSub, redis::RedisError> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "subscribe timed out",
            )))
        })
}

#[async_trait]
impl ResultStore for RedisStore {
    async fn create(&self, record: RequestRecord) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        // NX: a worker may already have taken the message and written a later
        // status (create and publish run concurrently); PENDING must not
        // overwrite it.
        redis::cmd("SET")
            .arg(self.key(record.correlation_id))
            .arg(encode(&record))
            .arg("NX")
            .arg("PX")
            .arg(self.px(&record))
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn get(&self, id: CorrelationId) -> Result<Option<RequestRecord>, StoreError> {
        self.get_raw(id)
            .await?
            .map(|raw| decode(id, &raw))
            .transpose()
    }

    async fn transition(
        &self,
        id: CorrelationId,
        update: Update,
    ) -> Result<Transition, StoreError> {
        for _ in 0..MAX_CAS_ROUNDS {
            let raw = self.get_raw(id).await?;
            // An unreadable record (an earlier implementation's, a newer
            // version's) is replaced, as the embedded store does: refusing
            // would leave its message to be redelivered, never settled.
            let current = raw.as_deref().and_then(|r| {
                decode(id, r)
                    .inspect_err(|e| {
                        tracing::warn!(correlation_id = %id, error = %e, "unreadable result record replaced");
                    })
                    .ok()
            });
            let outcome = apply_update(id, current, update.clone(), now_ms());
            let Transition::Applied(record) = &outcome else {
                return Ok(outcome);
            };
            let expected = raw.as_deref().map_or(Expected::Absent, Expected::Exactly);
            if self.compare_and_set(id, expected, record).await? {
                return Ok(outcome);
            }
        }
        Err(StoreError::Unavailable(format!(
            "record {id} kept changing during {MAX_CAS_ROUNDS} attempts to update it"
        )))
    }

    async fn withdraw(&self, pending: &RequestRecord) -> Result<(), StoreError> {
        let id = pending.correlation_id;
        // The cancelled record is computed here, and the swap is one CAS on
        // the bytes `create` wrote: no read first, so it is sent at once,
        // right behind the `SET NX` on this connection.
        let Transition::Applied(cancelled) = apply_update(
            id,
            Some(pending.clone()),
            Update::to(RequestStatus::Cancelled),
            now_ms(),
        ) else {
            return Ok(());
        };
        // "Absent" counts too: after a stall the client may have reconnected,
        // and this may then run before the `SET NX`, which it defeats.
        let created = encode(pending);
        self.compare_and_set(id, Expected::AbsentOr(&created), &cancelled)
            .await
            .map(drop)
    }

    async fn wait_terminal(
        &self,
        id: CorrelationId,
        timeout: Duration,
    ) -> Result<Option<RequestRecord>, StoreError> {
        // Woken by the completion's PUBLISH; after a reconnection, by the
        // resubscription (`wake_all`).
        self.waiters
            .wait_terminal(id, timeout, || self.get(id))
            .await
    }

    async fn claim_key(
        &self,
        key: &str,
        claim: KeyClaim,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.conn.clone();
        let value = serde_json::to_vec(&claim).unwrap_or_default();
        // SET NX GET (Redis 7): sets only if absent, and returns what was there.
        let previous: Option<Vec<u8>> = redis::cmd("SET")
            .arg(format!("{IDEMPOTENCY_PREFIX}{key}"))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        match previous {
            None => Ok(Claim::New),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Claim::Existing)
                .map_err(|e| StoreError::Unavailable(format!("corrupt idempotency key: {e}"))),
        }
    }

    async fn release_key(&self, key: &str, id: CorrelationId) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        Script::new(RELEASE)
            .key(format!("{IDEMPOTENCY_PREFIX}{key}"))
            .arg(id.to_string())
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn health(&self) -> Result<(), StoreError> {
        let probe = redis::cmd("SET")
            .arg(format!("{}health", self.config.key_prefix))
            .arg(now_ms())
            .arg("PX")
            .arg(10_000)
            .clone();
        self.query_idempotent(&probe).await
    }

    async fn close(&self) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(listener) = listener {
            listener.abort();
        }
    }
}
