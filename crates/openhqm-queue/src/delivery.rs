//! Deliveries: messages handed out under a lease, settled exactly once.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Message, QueueError};

/// How to give a message back.
#[derive(Debug, Clone, PartialEq)]
pub enum Nack {
    /// Deliver again after `delay`, with attempt + 1.
    Retry {
        /// How long the queue holds the message first.
        delay: Duration,
    },
    /// Deliver again after `delay` as the same attempt: the attempt never
    /// ran (a dependency of the consumer was down), so it must not use up
    /// the message's retry budget.
    Release {
        /// How long the queue holds the message first.
        delay: Duration,
    },
    /// Park the message on the dead-letter queue.
    DeadLetter {
        /// Why; kept with the dead letter.
        reason: String,
    },
}

/// The backend half of a delivery. Implemented by each backend.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Removes the message for good.
    async fn ack(&self) -> Result<(), QueueError>;
    /// Retries or dead-letters the message.
    async fn nack(&self, nack: Nack) -> Result<(), QueueError>;
    /// Pushes the lease deadline to `by` from now.
    async fn extend(&self, by: Duration) -> Result<(), QueueError>;
}

/// A message under lease. Settling consumes it, so it cannot be settled twice.
pub struct Delivery {
    message: Message,
    settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Pairs a message with its backend's settle handle.
    #[must_use]
    pub fn new(message: Message, settle: Box<dyn Settle>) -> Self {
        Self { message, settle }
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Acknowledges: the message will not be delivered again.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] if the lease ran out first, or the backend's error.
    pub async fn ack(self) -> Result<(), QueueError> {
        self.settle.ack().await
    }

    /// Gives the message back for a retry or to the dead-letter queue.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] if the lease ran out first, or the backend's error.
    pub async fn nack(self, nack: Nack) -> Result<(), QueueError> {
        self.settle.nack(nack).await
    }

    /// Keeps the message for `by` more from now.
    ///
    /// # Errors
    /// [`QueueError::LeaseLost`] if the lease already ran out.
    pub async fn extend(&mut self, by: Duration) -> Result<(), QueueError> {
        self.settle.extend(by).await
    }
}
