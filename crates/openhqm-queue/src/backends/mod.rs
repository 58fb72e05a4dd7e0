//! Queue backends, one module per backend, each behind its own cargo feature.

#[cfg(feature = "embedded")]
pub mod embedded;

#[cfg(feature = "redis")]
pub mod redis;
