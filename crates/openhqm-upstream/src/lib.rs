//! The HTTP forwarder of proxy mode.
//!
//! [`ProxyProcessor`] is a worker [`Processor`](openhqm_worker::Processor):
//! it forwards a queued request to a configured backend and captures the
//! answer (body, status, headers) as the request's result. Around that one
//! call sit the things a reverse proxy owes its backends: auth injection and
//! a header policy ([`headers`]), several targets with a balancing strategy
//! ([`balance`], [`pool`]), active and passive health ([`health`]), a circuit
//! breaker per target ([`breaker`]), a concurrency cap and a GCRA rate limit
//! per endpoint ([`gcra`]). Whether a failure is worth retrying is decided by
//! one pure function ([`classify`]); the worker does the retrying.
//!
//! The binary builds it from [`UpstreamConfig`]:
//! `ProxyProcessor::new(&cfg, &metrics)?`, then keeps the
//! [`HealthChecks`] from `start_health_checks()` until shutdown.

pub mod balance;
pub mod breaker;
pub mod classify;
mod client;
pub mod config;
mod endpoint;
pub mod error;
pub mod gcra;
pub mod headers;
pub mod health;
pub mod pool;
mod processor;
pub mod redact;
pub mod response;
pub mod rewrite;

pub use config::{
    AuthType, CircuitBreakerConfig, EndpointConfig, HealthCheckConfig, PassiveEjectionConfig,
    PathRewrite, RateLimitConfig, Strategy, TargetConfig, TlsConfig, UpstreamConfig,
};
pub use endpoint::MAX_SLOT_WAIT;
pub use error::UpstreamError;
pub use health::HealthChecks;
pub use pool::TargetStatus;
pub use processor::{DEFAULT_ENDPOINT_NAME, ProxyProcessor};
