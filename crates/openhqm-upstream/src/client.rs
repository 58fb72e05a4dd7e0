//! The HTTP client of one endpoint.
//!
//! One `reqwest::Client` per endpoint, so each gets its own keep-alive pool
//! (bounded idle connections per host) and its own TLS trust: certificates
//! are verified by default against the platform's roots plus an optional CA
//! bundle; `insecure_skip_verify` exists for test backends only. rustls runs
//! on the `ring` provider, which needs no C toolchain beyond `cc`.
//! Redirects are not followed: a proxy hands the backend's 3xx back as is.

use std::time::Duration;

use reqwest::{Certificate, Client, redirect};

use crate::config::EndpointConfig;

/// Idle keep-alive connections kept per backend host when the endpoint sets
/// no `max_concurrency`. A pool smaller than the forwards in flight closes
/// and reopens connections on every burst (a TCP handshake per forward
/// beyond the pool), so it is sized for a busy worker pool; with
/// `max_concurrency` it is exactly that cap.
pub const MAX_IDLE_PER_HOST: usize = 256;
/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Builds the client for `cfg`.
///
/// # Errors
/// An unreadable or invalid CA bundle, or a TLS setup failure.
pub fn build(cfg: &EndpointConfig) -> Result<Client, String> {
    // Installing fails only when a provider is already installed, which is
    // just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = Client::builder()
        .pool_max_idle_per_host(cfg.max_concurrency.unwrap_or(MAX_IDLE_PER_HOST))
        .pool_idle_timeout(IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .redirect(redirect::Policy::none());
    if let Some(path) = &cfg.tls.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("tls.ca_file `{path}`: {e}"))?;
        let certs =
            Certificate::from_pem_bundle(&pem).map_err(|e| format!("tls.ca_file `{path}`: {e}"))?;
        if certs.is_empty() {
            return Err(format!("tls.ca_file `{path}` holds no certificate"));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if cfg.tls.insecure_skip_verify {
        tracing::warn!("TLS certificate verification is disabled for an endpoint");
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}
