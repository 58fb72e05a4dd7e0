//! The worker pool and the processors it runs.
//!
//! [`WorkerPool`] keeps up to `worker.count` messages in flight per process,
//! runs each through a [`Processor`], records the outcome in the result store
//! and settles the delivery. It is the only code that decides between retry
//! and dead-letter, through [`openhqm_core::decide`]. What else happens when a
//! request finishes (callbacks, the reply queue) plugs in as a
//! [`CompletionSink`].

mod demo;
mod pool;
mod processor;
mod sink;

pub use demo::DemoProcessor;
pub use pool::{WorkerConfig, WorkerPool};
pub use processor::{Output, Processor, Request};
pub use sink::{CompletionSink, ReplyQueueSink, SinkError, notifies};
