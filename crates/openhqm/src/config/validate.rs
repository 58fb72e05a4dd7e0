//! Checks across keys that types alone cannot express. Every problem is
//! reported, not just the first.

#[cfg(feature = "redis")]
mod redis_url;

use openhqm_callbacks::{CallbackPolicy, SigningKey};

use super::{BackendType, Config, ConfigError, MessageFormat, StoreType};

/// Queue and store backends this build can serve.
const QUEUE_BACKENDS: &[BackendType] = &[
    BackendType::Embedded,
    #[cfg(feature = "redis")]
    BackendType::Redis,
];
/// Every result store there is is in this build unless it was built
/// without the `redis` feature.
const STORE_BACKENDS: &[StoreType] = &[
    StoreType::Embedded,
    #[cfg(feature = "redis")]
    StoreType::Redis,
];

fn supported<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

/// Why `kind` (not in this build) is missing: Redis is left out by a cargo
/// feature; the other queue backends do not exist yet.
fn unavailable(kind: &str, available: String) -> String {
    if kind == "redis" {
        format!(
            "`redis` is not available in this build of OpenHQM: it was built without the \
             `redis` feature (available: {available})"
        )
    } else {
        format!("`{kind}` is not available in this build of OpenHQM yet (available: {available})")
    }
}

/// Paths of the API that a passthrough prefix must not shadow.
/// The longest lease, attempt timeout or retry delay: long enough for any
/// real use, and far from the overflow of the millisecond and `Instant`
/// arithmetic these go into.
const MAX_SECONDS: u64 = 7 * 24 * 3600;

const API_PATHS: &[&str] = &["/api", "/health", "/metrics", "/openapi.json", "/docs"];

fn sidecar(c: &Config, check: &mut impl FnMut(bool, &str, String)) {
    let s = &c.sidecar;
    if !s.enabled {
        return;
    }
    check(
        c.proxy.enabled,
        "sidecar.enabled",
        "the passthrough ingress replays requests to a backend: set proxy.enabled".into(),
    );
    check(
        s.wait_seconds <= c.server.max_wait_seconds,
        "sidecar.wait_seconds",
        format!(
            "must not exceed server.max_wait_seconds ({}), got {}",
            c.server.max_wait_seconds, s.wait_seconds
        ),
    );
    check(
        s.port.is_some() || s.path_prefix.is_some(),
        "sidecar.port",
        "set sidecar.port (its own port) or sidecar.path_prefix (under the API port)".into(),
    );
    check(
        s.port.is_none_or(|p| p != c.server.port),
        "sidecar.port",
        format!("must differ from server.port ({})", c.server.port),
    );
    if let Some(prefix) = &s.path_prefix {
        let shape = prefix.len() > 1
            && prefix.starts_with('/')
            && !prefix.ends_with('/')
            && !prefix.contains(['{', '}', '*', '?', '#', ' ']);
        check(
            shape,
            "sidecar.path_prefix",
            format!(
                "must be a plain path that starts with `/` and does not end with one, e.g. `/app`; got `{prefix}`"
            ),
        );
        let clash = API_PATHS
            .iter()
            .find(|p| prefix == *p || prefix.starts_with(&format!("{p}/")));
        check(
            clash.is_none(),
            "sidecar.path_prefix",
            format!(
                "`{prefix}` would shadow the API's own `{}`",
                clash.unwrap_or(&"")
            ),
        );
    }
    match &s.endpoint {
        Some(name) => check(
            c.proxy.endpoints.contains_key(name),
            "sidecar.endpoint",
            format!("`{name}` is not in proxy.endpoints"),
        ),
        None => check(
            c.proxy.default_endpoint.is_some(),
            "sidecar.endpoint",
            "set sidecar.endpoint or proxy.default_endpoint".into(),
        ),
    }
}

pub(super) fn validate(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut check = |ok: bool, key: &str, message: String| {
        if !ok {
            errors.push(ConfigError::new(key, message));
        }
    };
    check(
        QUEUE_BACKENDS.contains(&c.queue.kind),
        "queue.type",
        unavailable(
            c.queue.kind.as_str(),
            supported(QUEUE_BACKENDS.iter().map(|b| b.as_str())),
        ),
    );
    check(
        STORE_BACKENDS.contains(&c.cache.kind),
        "cache.type",
        unavailable(
            c.cache.kind.as_str(),
            supported(STORE_BACKENDS.iter().map(|b| b.as_str())),
        ),
    );
    check(
        !c.routing.enabled,
        "routing.enabled",
        "content-based routing is not available in this build yet".into(),
    );
    check(
        !c.partitioning.enabled,
        "partitioning.enabled",
        "partitioning is not available in this build yet".into(),
    );

    check(
        is_listen_host(&c.server.host),
        "server.host",
        format!(
            "`{}` is neither an IP address nor a host name",
            c.server.host.escape_debug()
        ),
    );
    check(
        c.server.max_body_size > 0,
        "server.max_body_size",
        "must be at least 1 byte".into(),
    );
    check(
        c.server.max_buffered_bytes == 0 || c.server.max_buffered_bytes >= c.server.max_body_size,
        "server.max_buffered_bytes",
        format!(
            "must be 0 (unbounded) or at least server.max_body_size ({}), or a body of the largest size is never accepted",
            c.server.max_body_size
        ),
    );
    check(
        (1..=MAX_SECONDS).contains(&c.server.read_timeout_seconds),
        "server.read_timeout_seconds",
        format!("must be from 1 to {MAX_SECONDS} (a week)"),
    );
    check(
        c.worker.count > 0,
        "worker.count",
        "must be at least 1".into(),
    );
    check(
        c.worker.batch_size > 0,
        "worker.batch_size",
        "must be at least 1".into(),
    );
    check(
        (1..=MAX_SECONDS).contains(&c.worker.timeout_seconds),
        "worker.timeout_seconds",
        format!("must be from 1 to {MAX_SECONDS} (a week)"),
    );
    let base = c.worker.retry_delay_base;
    check(
        base.is_finite() && base > 0.0,
        "worker.retry_delay_base",
        format!("must be a positive number of seconds, got {base}"),
    );
    check(
        c.worker.retry_delay_max.is_finite()
            && c.worker.retry_delay_max >= base
            && c.worker.retry_delay_max <= MAX_SECONDS as f64,
        "worker.retry_delay_max",
        format!(
            "must be from worker.retry_delay_base ({base}) to {MAX_SECONDS} (a week), got {:?}",
            c.worker.retry_delay_max
        ),
    );
    check(
        (1..=MAX_SECONDS).contains(&c.queue.lease_seconds),
        "queue.lease_seconds",
        format!("must be from 1 to {MAX_SECONDS} (a week)"),
    );
    check(
        c.cache.ttl_seconds > 0,
        "cache.ttl_seconds",
        "must be at least 1".into(),
    );
    check(
        c.queue.kind != BackendType::Embedded || !c.queue.data_dir.is_empty(),
        "queue.data_dir",
        "must name a directory for the embedded database".into(),
    );
    check(
        c.queue.kind != BackendType::Redis || !c.queue.redis_consumer_group.is_empty(),
        "queue.redis_consumer_group",
        "must not be empty".into(),
    );
    check(
        c.queue
            .redis_consumer_name
            .as_ref()
            .is_none_or(|n| !n.is_empty()),
        "queue.redis_consumer_name",
        "must not be empty (leave it unset for `<hostname>-<pid>`)".into(),
    );
    for (key, name) in [
        ("queue.request_queue_name", &c.queue.request_queue_name),
        ("queue.dlq_name", &c.queue.dlq_name),
    ] {
        check(!name.is_empty(), key, "must not be empty".into());
    }
    check(
        c.queue.request_queue_name != c.queue.dlq_name,
        "queue.dlq_name",
        "must differ from queue.request_queue_name".into(),
    );
    check(
        matches!(
            c.monitoring.log_level.to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "warning" | "error" | "critical"
        ),
        "monitoring.log_level",
        format!(
            "must be one of TRACE, DEBUG, INFO, WARNING, ERROR, got `{}`",
            c.monitoring.log_level
        ),
    );
    check(
        c.queue.mqtt_qos <= 2,
        "queue.mqtt_qos",
        format!("must be 0, 1 or 2, got {}", c.queue.mqtt_qos),
    );
    if c.proxy.enabled {
        check(
            c.proxy.default_endpoint.is_some() || !c.proxy.endpoints.is_empty(),
            "proxy.default_endpoint",
            "proxy mode needs a default endpoint or at least one entry in proxy.endpoints".into(),
        );
    }
    sidecar(c, &mut check);
    check(
        (1..=1_000_000).contains(&c.server.max_waiting),
        "server.max_waiting",
        format!(
            "must be between 1 and 1000000, got {}",
            c.server.max_waiting
        ),
    );
    if let Some(ttl) = c.idempotency.ttl_seconds {
        check(
            ttl > 0 && ttl <= c.cache.ttl_seconds,
            "idempotency.ttl_seconds",
            format!(
                "must be between 1 and cache.ttl_seconds ({}): a key must not outlive the result it replays, got {ttl}",
                c.cache.ttl_seconds
            ),
        );
    }
    check(
        axum::http::HeaderName::from_bytes(c.idempotency.identity_header.as_bytes()).is_ok(),
        "idempotency.identity_header",
        format!("`{}` is not a header name", c.idempotency.identity_header),
    );
    #[cfg(feature = "redis")]
    redis_url::validate(c, &mut errors);
    validate_foreign(c, &mut errors);
    validate_callbacks(c, &mut errors);
    validate_header_lists(c, &mut errors);
    // Endpoints are checked even while proxy mode is off, so a file that is
    // about to switch it on is known to be good.
    for (key, message) in c.proxy.upstream().validate() {
        errors.push(ConfigError::new(&key, message));
    }
    errors
}

/// What `check-config` checks beyond [`validate`]: files the forwarder will
/// read (`tls.ca_file`), which a process building no forwarder need not have.
#[must_use]
pub fn file_problems(c: &Config) -> Vec<ConfigError> {
    c.proxy
        .upstream()
        .file_problems()
        .into_iter()
        .map(|(key, message)| ConfigError::new(&key, message))
        .collect()
}

/// `queue.message_format` and `worker.foreign.*`.
fn validate_foreign(c: &Config, errors: &mut Vec<ConfigError>) {
    let format = c.queue.message_format;
    if format != MessageFormat::Envelope && c.queue.kind == BackendType::Embedded {
        errors.push(ConfigError::new(
            "queue.message_format",
            format!(
                "`{}` needs a queue that other producers write to; the embedded queue only \
                 carries what this process submits (use queue.type redis)",
                format.as_str()
            ),
        ));
    }
    if format != MessageFormat::Envelope && c.cache.kind == StoreType::Embedded {
        // Derived ids are UUIDv5, not time-ordered, and the embedded store's
        // expiry sweep relies on time-ordered keys to stop early.
        errors.push(ConfigError::new(
            "queue.message_format",
            format!(
                "`{}` needs cache.type redis: the embedded result store expires only \
                 time-ordered ids, and a foreign message's id is derived from its content",
                format.as_str()
            ),
        ));
    }
    let foreign = &c.worker.foreign;
    if let Some(name) = &foreign.endpoint {
        if !c.proxy.enabled {
            errors.push(ConfigError::new(
                "worker.foreign.endpoint",
                "forwarding to an endpoint needs proxy.enabled: true",
            ));
        } else if !c.proxy.endpoints.contains_key(name) {
            let known: Vec<&str> = c.proxy.endpoints.keys().map(String::as_str).collect();
            errors.push(ConfigError::new(
                "worker.foreign.endpoint",
                format!(
                    "`{name}` is not an entry of proxy.endpoints (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    for (attribute, header) in &foreign.attribute_headers {
        let key = format!("worker.foreign.attribute_headers.{attribute}");
        if !is_token(header) {
            errors.push(ConfigError::new(
                &key,
                format!("`{header}` is not a valid HTTP header name"),
            ));
        } else if openhqm_upstream::headers::is_hop_by_hop(header) {
            errors.push(ConfigError::new(
                &key,
                format!("`{header}` is a hop-by-hop header and is never forwarded"),
            ));
        } else if openhqm_upstream::headers::set_by_forwarder(header) {
            errors.push(ConfigError::new(
                &key,
                format!("`{header}` is set or dropped by the forwarder itself; a configured value is never sent"),
            ));
        }
    }
}

/// An HTTP token (RFC 9110 §5.6.2), which header names must be.
/// An address to listen on: an IP address (IPv6 bare or in brackets), or a
/// host name as RFC 1123 spells one, resolved when binding.
fn is_listen_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The forward and strip lists name headers (or `"*"`, forward lists only):
/// a name no header can have would silently match nothing.
fn validate_header_lists(c: &Config, errors: &mut Vec<ConfigError>) {
    let lists = [
        ("proxy.forward_headers", &c.proxy.forward_headers, true),
        ("proxy.strip_headers", &c.proxy.strip_headers, false),
        ("sidecar.forward_headers", &c.sidecar.forward_headers, true),
    ];
    for (key, names, star) in lists {
        for (i, name) in names.iter().enumerate() {
            let name = name.trim();
            let problem = if name == "*" {
                (!star).then(|| {
                    "`*` means every header only on a forward list; name the headers to strip"
                        .to_owned()
                })
            } else {
                (!is_token(name)).then(|| format!("`{name}` is not a valid HTTP header name"))
            };
            if let Some(problem) = problem {
                errors.push(ConfigError::new(format!("{key}[{i}]"), problem));
            }
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `callbacks.*`, the reply queue, and endpoints' `callback_url`.
fn validate_callbacks(c: &Config, errors: &mut Vec<ConfigError>) {
    let cb = &c.callbacks;
    let mut check = |ok: bool, key: &str, message: String| {
        if !ok {
            errors.push(ConfigError::new(key, message));
        }
    };
    let policy = match CallbackPolicy::new(&cb.allowed_hosts) {
        Ok(p) => p,
        Err(problems) => {
            for p in problems {
                check(false, "callbacks.allowed_hosts", p);
            }
            // Check the endpoints against the entries that are good.
            let good: Vec<&String> = cb
                .allowed_hosts
                .iter()
                .filter(|h| CallbackPolicy::new(&[h]).is_ok())
                .collect();
            CallbackPolicy::new(&good).unwrap_or_default()
        }
    };
    for (name, endpoint) in &c.proxy.endpoints {
        if let Some(url) = &endpoint.callback_url {
            let result = policy.check(url);
            check(
                result.is_ok(),
                &format!("proxy.endpoints.{name}.callback_url"),
                result.err().map(|e| e.to_string()).unwrap_or_default(),
            );
        }
    }
    let names = [
        c.queue.request_queue_name.as_str(),
        c.queue.dlq_name.as_str(),
        c.queue.response_queue_name.as_str(),
    ];
    if c.queue.reply_enabled {
        // Nothing outside this process can read the embedded database, so
        // replies there would pile up unread.
        check(
            c.queue.kind != BackendType::Embedded,
            "queue.reply_enabled",
            "needs a queue other processes can read (queue.type redis); \
             nothing outside this process can consume the embedded queue"
                .into(),
        );
        check(
            !c.queue.response_queue_name.is_empty() && !names[..2].contains(&names[2]),
            "queue.response_queue_name",
            "must be set and differ from queue.request_queue_name and queue.dlq_name".into(),
        );
    }
    if cb.allowed_hosts.is_empty() {
        return;
    }
    if cb.secret.expose().is_empty() {
        check(
            false,
            "callbacks.secret",
            "is required once callbacks.allowed_hosts is set: `whsec_` followed by the base64-encoded signing key".into(),
        );
    } else if let Err(e) = SigningKey::from_secret(cb.secret.expose()) {
        check(false, "callbacks.secret", e.to_string());
    }
    for (key, name) in [
        ("callbacks.queue_name", &cb.queue_name),
        ("callbacks.dlq_name", &cb.dlq_name),
    ] {
        check(
            !name.is_empty() && !names.contains(&name.as_str()),
            key,
            "must be set and differ from the request, dead-letter and response queues".into(),
        );
    }
    check(
        cb.queue_name != cb.dlq_name,
        "callbacks.dlq_name",
        "must differ from callbacks.queue_name".into(),
    );
    check(
        cb.max_attempts > 0,
        "callbacks.max_attempts",
        "must be at least 1".into(),
    );
    check(
        cb.concurrency > 0,
        "callbacks.concurrency",
        "must be at least 1".into(),
    );
    check(
        cb.timeout_seconds > 0 && cb.timeout_seconds < c.queue.lease_seconds,
        "callbacks.timeout_seconds",
        format!(
            "must be at least 1 and less than queue.lease_seconds ({}), got {}",
            c.queue.lease_seconds, cb.timeout_seconds
        ),
    );
    let base = cb.retry_delay_base;
    check(
        base.is_finite() && base > 0.0,
        "callbacks.retry_delay_base",
        format!("must be a positive number of seconds, got {base}"),
    );
    check(
        cb.retry_delay_max.is_finite()
            && cb.retry_delay_max >= base
            && cb.retry_delay_max <= MAX_SECONDS as f64,
        "callbacks.retry_delay_max",
        format!(
            "must be from callbacks.retry_delay_base ({base}) to {MAX_SECONDS} (a week), got {:?}",
            cb.retry_delay_max
        ),
    );
}
