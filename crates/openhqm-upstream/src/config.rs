//! Configuration of proxy mode: `proxy.*` and `proxy.endpoints.<name>`.
//!
//! The keys of the earlier implementation (CONTRACT.md) keep their names and
//! defaults; the pool, health, breaker and limit keys are new. Every struct
//! denies unknown fields so a typo is an error naming its key, and
//! [`EndpointConfig::validate`] collects every cross-field problem at once
//! instead of stopping at the first. Secrets are [`Secret`]s: they print and
//! serialize as `***`.

use std::collections::BTreeMap;

use openhqm_core::Secret;
use serde::{Deserialize, Serialize};

mod validate;

pub(crate) use validate::{check_url, label, label_as_written};
pub use validate::{is_sensitive_header, masked_path, masked_url, printable_url, quotable};

/// `proxy.*` minus `enabled`, which belongs to the binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Named backends.
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// Used when a request names no endpoint: an endpoint name, or a URL used
    /// with every other key at its default.
    pub default_endpoint: Option<String>,
    /// Client headers allowed through (case-insensitive); `"*"` means all.
    pub forward_headers: Vec<String>,
    /// Client headers never forwarded, even when on the forward list.
    pub strip_headers: Vec<String>,
    /// Largest backend response body kept, in bytes.
    pub max_response_size: usize,
    /// What a `default_endpoint` URL took from the environment (filled by
    /// the loader; not a key).
    #[serde(skip)]
    pub default_from_env: FromEnv,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            endpoints: BTreeMap::new(),
            default_endpoint: None,
            forward_headers: vec!["Content-Type".into(), "Accept".into(), "User-Agent".into()],
            strip_headers: vec!["Host".into(), "Connection".into()],
            max_response_size: 10 * 1024 * 1024,
            default_from_env: FromEnv::default(),
        }
    }
}

/// `proxy.endpoints.<name>`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The backend URL. Required unless `targets` is given; when both are,
    /// `url` is one more target of weight 1.
    #[serde(default)]
    pub url: Option<String>,
    /// Further backends sharing the load.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// HTTP method unless the request's `metadata.method` overrides it.
    #[serde(default = "default_method")]
    pub method: String,
    /// Seconds one forward may take (capped by the worker's attempt timeout).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Static headers; they override forwarded client headers.
    #[serde(default, deserialize_with = "header_values")]
    pub headers: BTreeMap<String, String>,
    /// How the backend authenticates us.
    #[serde(default)]
    pub auth_type: Option<AuthType>,
    /// Token for `bearer`, `api_key` and `custom`.
    #[serde(default)]
    pub auth_token: Secret,
    /// User name for `basic`.
    #[serde(default)]
    pub auth_username: Option<String>,
    /// Password for `basic`.
    #[serde(default)]
    pub auth_password: Secret,
    /// Header carrying the token: `X-API-Key` by default for `api_key`,
    /// required for `custom`.
    #[serde(default)]
    pub auth_header_name: Option<String>,
    /// How a target is chosen among several.
    #[serde(default)]
    pub strategy: Strategy,
    /// What `consistent_hash` hashes: `metadata.<key>`, `header:<Name>` or
    /// `correlation_id`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Active health checks; none when absent.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection of a target after consecutive failed forwards.
    #[serde(default)]
    pub passive_ejection: Option<PassiveEjectionConfig>,
    /// A circuit breaker per target; none when absent.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// Most forwards in flight from this process to this endpoint.
    #[serde(default, deserialize_with = "openhqm_core::number_or_text")]
    pub max_concurrency: Option<usize>,
    /// Most forwards started per second (GCRA), with a burst.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Backend statuses that fail the attempt as transient (retried).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<u16>,
    /// Overrides `worker.max_retries` for this endpoint; kept for the worker.
    #[serde(default, deserialize_with = "openhqm_core::number_or_text")]
    pub max_retries: Option<u32>,
    /// Rewrites the request path (`metadata.path`) before it is appended.
    #[serde(default)]
    pub path_rewrite: Option<PathRewrite>,
    /// TLS settings for `https://` targets.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Completion callback for requests to this endpoint that name none
    /// (`metadata.callback_url` wins); its host must be on
    /// `callbacks.allowed_hosts`. Not used by the forwarder itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// What the configuration file put here through `${VAR}`: filled by
    /// the loader, not a key.
    #[serde(skip)]
    pub from_env: FromEnv,
}

/// Text an endpoint's configuration took from the environment (`${VAR}` in
/// the file). It is treated as a secret, wherever it sits (a webhook URL's
/// path, an `X-Auth` header): a target is named by its URL as written, with
/// `${VAR}` in place, and quoted backend text has the values masked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FromEnv {
    /// A target URL as configured → the same URL as written in the file.
    pub urls_as_written: BTreeMap<String, String>,
    /// Every value substituted anywhere in the endpoint.
    pub values: Vec<Secret>,
}

impl EndpointConfig {
    /// An endpoint with every key but `url` at its default.
    #[must_use]
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            targets: Vec::new(),
            method: default_method(),
            timeout: default_timeout(),
            headers: BTreeMap::new(),
            auth_type: None,
            auth_token: Secret::default(),
            auth_username: None,
            auth_password: Secret::default(),
            auth_header_name: None,
            strategy: Strategy::default(),
            hash_key: None,
            health_check: None,
            passive_ejection: None,
            circuit_breaker: None,
            max_concurrency: None,
            rate_limit: None,
            retry_on: default_retry_on(),
            max_retries: None,
            path_rewrite: None,
            tls: TlsConfig::default(),
            callback_url: None,
            from_env: FromEnv::default(),
        }
    }

    /// Every target, `url` first, with its weight.
    #[must_use]
    pub fn all_targets(&self) -> Vec<TargetConfig> {
        let mut all = Vec::with_capacity(self.targets.len() + 1);
        if let Some(url) = &self.url {
            all.push(TargetConfig {
                url: url.clone(),
                weight: 1,
            });
        }
        all.extend(self.targets.iter().cloned());
        all
    }
}

fn default_method() -> String {
    "POST".into()
}

fn default_timeout() -> u64 {
    300
}

fn default_retry_on() -> Vec<u16> {
    vec![408, 429, 500, 502, 503, 504]
}

/// `proxy.endpoints.<name>.auth_type`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    /// `Authorization: Bearer <auth_token>`
    Bearer,
    /// `Authorization: Basic base64(<auth_username>:<auth_password>)`
    Basic,
    /// `<auth_header_name or X-API-Key>: <auth_token>`
    ApiKey,
    /// `<auth_header_name>: <auth_token>`
    Custom,
}

/// One backend of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Base URL of this backend.
    pub url: String,
    /// Share of the load relative to the other targets (`weighted`,
    /// `least_connections`, `consistent_hash`).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `proxy.endpoints.<name>.strategy`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (as nginx does it).
    Weighted,
    /// The less loaded of two random targets ("power of two choices").
    LeastConnections,
    /// A hash ring over `hash_key`, so one key keeps going to one target.
    ConsistentHash,
}

/// `proxy.endpoints.<name>.health_check`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path probed with GET on each target's origin.
    pub path: String,
    /// Seconds between probes.
    pub interval_seconds: u64,
    /// Seconds a probe may take.
    pub timeout_seconds: u64,
    /// The status a healthy target answers.
    pub expected_status: u16,
    /// Consecutive good probes that bring a target back.
    pub healthy_threshold: u32,
    /// Consecutive bad probes that take a target out.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval_seconds: 10,
            timeout_seconds: 2,
            expected_status: 200,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// `proxy.endpoints.<name>.passive_ejection`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PassiveEjectionConfig {
    /// Consecutive failed forwards (network error, timeout, 5xx) that eject.
    pub consecutive_failures: u32,
    /// Seconds an ejected target gets no traffic.
    pub ejection_seconds: u64,
}

impl Default for PassiveEjectionConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection_seconds: 30,
        }
    }
}

/// `proxy.endpoints.<name>.circuit_breaker`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Seconds the breaker stays open before letting trial requests through.
    pub open_seconds: u64,
    /// Trial requests allowed at once while half-open.
    pub half_open_max: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_seconds: 30,
            half_open_max: 1,
        }
    }
}

/// `proxy.endpoints.<name>.rate_limit`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained rate.
    pub requests_per_second: f64,
    /// Requests that may start at once after a quiet spell.
    #[serde(default = "one")]
    pub burst: u32,
}

/// `proxy.endpoints.<name>.path_rewrite`: exactly one of the two forms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathRewrite {
    /// Removed from the start of the path when present.
    pub strip_prefix: Option<String>,
    /// A regex replaced (first match) by `replace`, which may use `$1`.
    pub regex: Option<String>,
    /// The replacement for `regex`.
    pub replace: Option<String>,
}

/// `proxy.endpoints.<name>.tls`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle of extra trusted roots.
    pub ca_file: Option<String>,
    /// Accept any certificate. For tests against self-signed backends only.
    pub insecure_skip_verify: bool,
}

/// Static header values: text, or a number or boolean as YAML read it
/// (`X-Version: 2`); `null` for no header. (A number is never quoted back in an
/// error either: the value may be a key.)
fn header_values<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Uint(u64),
        Float(f64),
        Bool(bool),
    }
    // A `null` value is no header, as `null` is "not set" everywhere.
    let values: Option<BTreeMap<String, Option<Scalar>>> = Option::deserialize(d)?;
    Ok(values
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| {
            let text = match value? {
                Scalar::Text(t) => t,
                Scalar::Int(n) => n.to_string(),
                Scalar::Uint(n) => n.to_string(),
                Scalar::Float(n) => n.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            Some((name, text))
        })
        .collect())
}
