//! `queue.redis_url` and `cache.redis_url`, read as the Redis client reads
//! them at start-up, so `check-config` refuses a URL that `serve` would
//! fail on. Messages show the URL with its password and query masked.

use redis::IntoConnectionInfo;

use super::super::{BackendType, Config, ConfigError, StoreType};

const SHAPE: &str = "expected redis://[[user]:password@]host[:port][/db]";

/// Checks the Redis URL of the queue and of the store, each only when
/// Redis is its `type`.
pub(super) fn validate(c: &Config, errors: &mut Vec<ConfigError>) {
    let urls = [
        (
            "queue.redis_url",
            c.queue.kind == BackendType::Redis,
            &c.queue.redis_url,
        ),
        (
            "cache.redis_url",
            c.cache.kind == StoreType::Redis,
            &c.cache.redis_url,
        ),
    ];
    for (key, selected, url) in urls {
        if selected && let Err(message) = check(url.expose()) {
            errors.push(ConfigError::new(key, message));
        }
    }
}

/// `Ok` if the Redis client accepts `text`; else why not, never quoting the
/// password or the query.
pub(super) fn check(text: &str) -> Result<(), String> {
    let parsed = url::Url::parse(text).map_err(|e| format!("is not a URL ({e}); {SHAPE}"))?;
    let Err(e) = text.into_connection_info() else {
        return Ok(());
    };
    let shown = openhqm_upstream::config::printable_url(text).unwrap_or_default();
    let scheme = parsed.scheme();
    let reason = if !matches!(
        scheme,
        "redis" | "rediss" | "valkey" | "valkeys" | "unix" | "redis+unix" | "valkey+unix"
    ) {
        format!("the scheme `{scheme}` is not a Redis one; {SHAPE}")
    } else if matches!(scheme, "rediss" | "valkeys") && e.to_string().contains("TLS") {
        format!("this build of OpenHQM has no TLS for Redis (`{scheme}://`); use redis://")
    } else {
        // "Invalid database number - InvalidClientConfig: <detail>": the
        // description only.
        let text = e.to_string();
        let description = text.split(" - ").next().unwrap_or_default();
        let mut chars = description.chars();
        let lower = chars
            .next()
            .map(|c| c.to_lowercase().chain(chars).collect::<String>())
            .unwrap_or_default();
        format!("{lower}; {SHAPE}")
    };
    Err(format!("`{shown}`: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn redis_urls_are_checked_as_the_client_reads_them_and_never_shown_whole() {
        for good in [
            "redis://localhost:6379",
            "redis://:pw@10.0.0.1:6380/2",
            "redis://user:pw@redis.internal/0?protocol=resp3",
            "unix:///run/redis.sock",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, expected) in [
            (
                "http://u:hunter2@h",
                "`http://u:***@h/`: the scheme `http` is not a Redis one",
            ),
            ("redis://h:notaport", "is not a URL (invalid port number)"),
            ("garbage", "is not a URL (relative URL without a base)"),
            ("", "is not a URL (relative URL without a base)"),
            (
                "rediss://u:hunter2@h:6380",
                "`rediss://u:***@h:6380`: this build of OpenHQM has no TLS for Redis",
            ),
            (
                "redis://:hunter2@h/notadb?k=secret",
                "`redis://:***@h/notadb?***`: invalid database number",
            ),
            (
                "redis://0.0.0.0:6379",
                "`redis://0.0.0.0:6379`: cannot connect to a wildcard address",
            ),
        ] {
            let message = check(bad).expect_err(bad);
            assert!(message.starts_with(expected), "{bad}: {message}");
            assert!(
                !message.contains("hunter2") && !message.contains("secret"),
                "{message}"
            );
        }
    }
}
