//! The queue abstraction every OpenHQM backend implements.
//!
//! A backend stores opaque messages (bytes plus string attributes) and hands
//! them out as [`Delivery`] values. A delivery is settled exactly once, by
//! value: [`Delivery::ack`], or [`Delivery::nack`] with [`Nack::Retry`] (come
//! back after a delay, attempt + 1), [`Nack::Release`] (come back after a
//! delay as the same attempt) or [`Nack::DeadLetter`] (park it with a
//! reason). Until it is settled its lease can be extended; a delivery that is
//! dropped unsettled, or whose lease runs out, is delivered again: the
//! guarantee is at-least-once.
//!
//! What a backend can do natively is data ([`Capabilities`]); the conformance
//! suite ([`conformance`]) checks the promises for every backend.

pub mod backends;
pub mod conformance;
mod consume;
mod delivery;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use consume::{ConsumeConfig, consume};
pub use delivery::{Delivery, Nack, Settle};

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutgoingMessage {
    /// The body, opaque to the queue.
    pub body: Bytes,
    /// Small string attributes carried beside the body.
    pub attributes: BTreeMap<String, String>,
    /// 0 (default) to 9; backends with priority support hand out higher first.
    pub priority: u8,
    /// How durable the message must be when [`QueueBackend::publish`] returns.
    pub durability: Durability,
}

/// How durable a published message must be when `publish` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// As durable as the backend promises (for the embedded engine under
    /// `queue.fsync: true`, synced to disk).
    #[default]
    Full,
    /// Made durable by the next [`QueueBackend::sync`] or a clean
    /// shutdown ([`QueueBackend::close`]); a crash before either may lose
    /// it. For a message whose caller is still waiting for its answer: the
    /// answer is its acknowledgement, a caller cut off by a crash got none
    /// (and sends it again, so replaying it too would run it twice), and
    /// only an answer that promises storage (a `202`) needs the sync first.
    /// The embedded queue holds such messages in memory, within a budget;
    /// backends whose every publish is as durable as they get treat it as
    /// [`Durability::Full`].
    Deferred,
}

impl OutgoingMessage {
    /// A message with just a body.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }
}

/// A message as delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The backend's id for this message; stable across redeliveries.
    pub id: String,
    /// The body as published.
    pub body: Bytes,
    /// The attributes as published.
    pub attributes: BTreeMap<String, String>,
    /// 1 for the first delivery, + 1 for each retry.
    pub attempt: u32,
}

/// The attribute [`QueueBackend::redrive`] sets on the messages it moves back.
pub const REDRIVEN: &str = "openhqm-redriven";

/// Now, in epoch milliseconds.
#[cfg_attr(not(feature = "embedded"), allow(dead_code))]
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A message parked on the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The message, with the attempt it failed on.
    pub message: Message,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When (epoch ms).
    pub dead_lettered_at_ms: u64,
}

/// What a backend does natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Holds a message back for a delay (retries).
    pub delayed_delivery: bool,
    /// Keeps dead letters and can redrive them.
    pub native_dead_letter: bool,
    /// Hands out higher priorities first.
    pub priority: bool,
    /// A single consumer sees messages in publish order (within a priority).
    pub fifo: bool,
    /// Largest body accepted, in bytes.
    pub max_payload: usize,
}

/// Errors from a queue backend.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker or storage cannot be reached or failed.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The message is larger than the backend accepts.
    #[error("message of {size} bytes exceeds the queue's limit of {limit} bytes")]
    PayloadTooLarge {
        /// Body size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The delivery's lease ran out and the message was handed to another consumer.
    #[error("lease on message {0} was lost")]
    LeaseLost(String),
    /// The backend cannot do this.
    #[error("unsupported by this queue backend: {0}")]
    Unsupported(&'static str),
    /// The backend refuses this client's credentials or permissions:
    /// retrying will not help until the configuration changes.
    #[error("queue refused access: {0}")]
    Refused(String),
    /// The backend is shut down.
    #[error("queue is closed")]
    Closed,
}

impl QueueError {
    /// Whether the same call might succeed later.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether publishing this same message can never succeed (it is too
    /// large); any other failure may pass on a redelivery, after a restart
    /// or once the backend is back.
    #[must_use]
    pub fn never_fits(&self) -> bool {
        matches!(self, Self::PayloadTooLarge { .. })
    }
}

/// A queue backend. Object safe: the process holds an `Arc<dyn QueueBackend>`.
#[async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// What this backend does natively.
    fn capabilities(&self) -> Capabilities;

    /// Stores a message. When this returns `Ok` the message is as durable as
    /// the backend promises and will be delivered.
    ///
    /// # Errors
    /// [`QueueError::PayloadTooLarge`], or [`QueueError::Unavailable`] if it was not stored.
    async fn publish(&self, message: OutgoingMessage) -> Result<(), QueueError>;

    /// Makes every message published before this call as durable as a
    /// [`Durability::Full`] publish. The default suits backends that make
    /// no difference between the two.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] if it cannot be confirmed, or [`QueueError::Closed`].
    async fn sync(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Takes up to `max` messages, waiting up to `wait` for the first one.
    /// Returns an empty list if none arrived in time.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] or [`QueueError::Closed`].
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Messages stored and not yet acknowledged: waiting, delayed or leased.
    ///
    /// # Errors
    /// If the backend cannot be asked.
    async fn depth(&self) -> Result<u64, QueueError>;

    /// Messages on the dead-letter queue.
    ///
    /// # Errors
    /// If the backend cannot be asked.
    async fn dead_letter_depth(&self) -> Result<u64, QueueError>;

    /// The oldest `limit` dead letters.
    ///
    /// # Errors
    /// If the backend cannot be asked.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Moves up to `limit` dead letters back to the queue, attempt reset to 1
    /// and marked with [`REDRIVEN`] (the time of the redrive, epoch ms), so a
    /// consumer can tell a redrive from a duplicate. Returns how many moved.
    ///
    /// # Errors
    /// If the move failed; a message is never lost or duplicated by a failed redrive.
    async fn redrive(&self, limit: usize) -> Result<u64, QueueError>;

    /// Deletes the dead letters dead-lettered before `before_ms` (epoch ms),
    /// oldest first, and returns how many went: how a retention is kept
    /// (`queue.dlq_retention_seconds`), so storage stays bounded even for
    /// requests that fail again each time they are redriven.
    ///
    /// # Errors
    /// If the backend cannot be asked; nothing newer is ever deleted.
    async fn trim_dead_letters(&self, before_ms: u64) -> Result<u64, QueueError>;

    /// Proves the backend can store a message right now.
    ///
    /// # Errors
    /// Why it cannot.
    async fn health(&self) -> Result<(), QueueError>;

    /// Stops handing out messages and releases resources; unsettled
    /// deliveries stay unacknowledged and are redelivered later.
    async fn close(&self);
}
