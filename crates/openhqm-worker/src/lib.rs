//! The worker pool and the processors it runs.
//!
//! [`WorkerPool`] keeps up to `worker.count` messages in flight per process,
//! runs each through a [`Processor`], records the outcome in the result store
//! and settles the delivery. It is the only code that decides between retry
//! and dead-letter, through [`openhqm_core::decide`].

mod demo;
mod pool;
mod processor;

pub use demo::DemoProcessor;
pub use pool::{WorkerConfig, WorkerPool};
pub use processor::{Output, Processor, Request};
