//! Completion callbacks: POST a finished request's result to the URL its
//! submitter named, signed per Standard Webhooks, retried until it lands.
//!
//! Two halves joined by a queue of their own (`callbacks.queue_name`, opened
//! from the same backend as the request queue):
//! - [`CallbackSink`] is a [`CompletionSink`](openhqm_worker::CompletionSink):
//!   when a request finishes, the worker pool hands it the stored record and
//!   it publishes a [`CallbackJob`] (URL, stable `webhook-id`, the body of
//!   `GET /api/v1/response/{id}`). The pool settles the request's delivery
//!   only after that publish, so a crash loses no callback.
//! - [`Dispatcher`] consumes the callback queue: it signs and POSTs each job,
//!   acks on 2xx, and on a network error, 5xx or 429 nacks with
//!   `Retry { delay }` (exponential backoff with full jitter, through
//!   [`openhqm_core::decide`]), so the wait is held by the queue, not by a
//!   sleeping task. After `callbacks.max_attempts`, or on another status, the
//!   job is dead-lettered, logged and counted.
//!
//! Delivery is at-least-once: a job may be POSTed more than once (a redelivered
//! request, a lost ack), always with the same `webhook-id`, so receivers can
//! deduplicate. Only hosts on the allow-list ([`CallbackPolicy`]) are called;
//! the list is checked again right before each POST, and redirects are never
//! followed.

mod dispatch;
mod signature;
mod sink;

pub use dispatch::{DispatchConfig, Dispatcher};
pub use openhqm_core::CallbackPolicy;
pub use signature::{SECRET_PREFIX, SecretError, SigningKey};
pub use sink::{CallbackJob, CallbackSink, EndpointCallbacks};
