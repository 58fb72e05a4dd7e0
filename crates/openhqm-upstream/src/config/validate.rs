//! Cross-field checks of the proxy configuration.
//!
//! Each problem is reported as `(key path, message)` with the full path from
//! the root of the configuration (`proxy.endpoints.<name>.<key>`), so the
//! binary can merge them with its own errors unchanged.

use hyper::Method;
use url::Url;

use super::{AuthType, EndpointConfig, PathRewrite, Strategy, UpstreamConfig};
use crate::balance::HashKey;
use crate::headers::is_hop_by_hop;

/// The slowest rate limit: one request per 1,000 s.
const MIN_REQUESTS_PER_SECOND: f64 = 0.001;

type Problems = Vec<(String, String)>;

impl UpstreamConfig {
    /// The files the forwarder will read that it could not load now: a
    /// `tls.ca_file` that is missing or holds no certificate (one ignored
    /// by `insecure_skip_verify` is not read). Not part of [`Self::validate`]:
    /// a process that builds no forwarder (a listener, proxy mode off) may
    /// run without the file; `check-config` and the forwarder ask.
    #[must_use]
    pub fn file_problems(&self) -> Problems {
        let mut out = Problems::new();
        for (name, e) in &self.endpoints {
            if let Some(path) = e.tls.ca_file.as_deref().filter(|p| !p.is_empty())
                && !e.tls.insecure_skip_verify
                && let Err(why) = crate::client::ca_bundle(path)
            {
                out.push((format!("proxy.endpoints.{name}.tls.ca_file"), why));
            }
        }
        out
    }

    /// Every problem of `proxy.*`, each naming its key path.
    #[must_use]
    pub fn validate(&self) -> Problems {
        let mut out = Problems::new();
        for (name, endpoint) in &self.endpoints {
            out.extend(endpoint.validate(name));
        }
        if let Some(default) = &self.default_endpoint
            && !self.endpoints.contains_key(default)
            && check_url(default).is_err()
        {
            let known: Vec<&str> = self.endpoints.keys().map(String::as_str).collect();
            out.push((
                "proxy.default_endpoint".into(),
                format!(
                    "`{}` is neither a configured endpoint (known: {}) nor an http(s) URL",
                    quotable(default),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if self.max_response_size == 0 {
            out.push((
                "proxy.max_response_size".into(),
                "must be at least 1".into(),
            ));
        }
        out
    }

    /// Whether `name` is a configured endpoint (the API rejects others at submit).
    #[must_use]
    pub fn has_endpoint(&self, name: &str) -> bool {
        self.endpoints.contains_key(name)
    }
}

impl EndpointConfig {
    /// Every problem of `proxy.endpoints.<name>`, each naming its key path.
    #[must_use]
    pub fn validate(&self, name: &str) -> Problems {
        let mut out = Problems::new();
        let mut add = |field: &str, msg: String| {
            out.push((format!("proxy.endpoints.{name}.{field}"), msg));
        };
        if self.url.is_none() && self.targets.is_empty() {
            add("url", "is required (or give `targets`)".into());
        }
        if let Some(url) = &self.url
            && let Err(e) = check_url(url)
        {
            add("url", e);
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let Err(e) = check_url(&t.url) {
                add(&format!("targets[{i}].url"), e);
            }
            if t.weight == 0 {
                add(&format!("targets[{i}].weight"), "must be at least 1".into());
            }
        }
        if Method::from_bytes(self.method.as_bytes()).is_err()
            || self.method.eq_ignore_ascii_case("CONNECT")
        {
            add(
                "method",
                format!(
                    "`{}` is not an HTTP method a request can be forwarded with",
                    self.method
                ),
            );
        }
        if self.timeout == 0 {
            add("timeout", "must be at least 1".into());
        }
        for (header, value) in &self.headers {
            if let Err(e) = check_header(header, value) {
                add(&format!("headers.{header}"), e);
            }
        }
        auth_problems(self, &mut add);
        match (&self.strategy, &self.hash_key) {
            (Strategy::ConsistentHash, None) => {
                add(
                    "hash_key",
                    "is required when strategy is consistent_hash".into(),
                );
            }
            (_, Some(key)) => {
                if let Err(e) = HashKey::parse(key) {
                    add("hash_key", e);
                }
            }
            _ => {}
        }
        if let Some(h) = &self.health_check {
            if !h.path.starts_with('/') {
                add("health_check.path", "must start with `/`".into());
            }
            for (field, v) in [
                ("interval_seconds", h.interval_seconds),
                ("timeout_seconds", h.timeout_seconds),
                ("healthy_threshold", u64::from(h.healthy_threshold)),
                ("unhealthy_threshold", u64::from(h.unhealthy_threshold)),
            ] {
                if v == 0 {
                    add(
                        &format!("health_check.{field}"),
                        "must be at least 1".into(),
                    );
                }
            }
            if !(100..=599).contains(&h.expected_status) {
                add(
                    "health_check.expected_status",
                    "must be an HTTP status".into(),
                );
            }
        }
        if let Some(p) = &self.passive_ejection
            && p.consecutive_failures == 0
        {
            add(
                "passive_ejection.consecutive_failures",
                "must be at least 1".into(),
            );
        }
        if let Some(b) = &self.circuit_breaker {
            if b.failure_threshold == 0 {
                add(
                    "circuit_breaker.failure_threshold",
                    "must be at least 1".into(),
                );
            }
            if b.half_open_max == 0 {
                add("circuit_breaker.half_open_max", "must be at least 1".into());
            }
        }
        if self.max_concurrency == Some(0) {
            add("max_concurrency", "must be at least 1".into());
        }
        if let Some(r) = &self.rate_limit {
            if !(r.requests_per_second.is_finite()
                && r.requests_per_second >= MIN_REQUESTS_PER_SECOND)
            {
                add(
                    "rate_limit.requests_per_second",
                    format!("must be a number of at least {MIN_REQUESTS_PER_SECOND}"),
                );
            }
            if r.burst == 0 {
                add("rate_limit.burst", "must be at least 1".into());
            }
        }
        for status in &self.retry_on {
            if !(100..=599).contains(status) {
                add("retry_on", format!("{status} is not an HTTP status"));
            }
        }
        if let Some(rw) = &self.path_rewrite
            && let Err(e) = check_rewrite(rw)
        {
            add("path_rewrite", e);
        }
        if self.tls.ca_file.as_deref() == Some("") {
            add("tls.ca_file", "must name a PEM file".into());
        }
        out
    }
}

fn auth_problems(e: &EndpointConfig, add: &mut impl FnMut(&str, String)) {
    let needs_token = matches!(
        e.auth_type,
        Some(AuthType::Bearer | AuthType::ApiKey | AuthType::Custom)
    );
    if needs_token && e.auth_token.is_empty() {
        add("auth_token", "is required by this auth_type".into());
    }
    match e.auth_type {
        Some(AuthType::Basic) if e.auth_username.is_none() => {
            add(
                "auth_username",
                "is required when auth_type is basic".into(),
            );
        }
        Some(AuthType::Custom) if e.auth_header_name.is_none() => {
            add(
                "auth_header_name",
                "is required when auth_type is custom".into(),
            );
        }
        None if !e.auth_token.is_empty() || e.auth_username.is_some() => {
            add("auth_type", "is required when credentials are set".into());
        }
        _ => {}
    }
    if let Some(h) = &e.auth_header_name
        && let Err(err) = check_header(h, "x")
    {
        add("auth_header_name", err);
    }
    // A token read from a file often ends in a newline, which no header
    // can carry: refused here, not by every forward. The value is not quoted.
    let key = if e.auth_type == Some(AuthType::Basic) {
        "auth_password"
    } else {
        "auth_token"
    };
    if let Some(auth) = crate::headers::auth_header(e)
        && hyper::header::HeaderValue::from_str(auth.value.expose()).is_err()
    {
        add(
            key,
            "holds a character a header cannot carry (a line break or other control character?)"
                .into(),
        );
    }
}

/// Checks that `url` is an absolute http(s) URL.
///
/// Errors never quote the URL whole: it may carry credentials.
pub(crate) fn check_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "must be an http:// or https:// URL, got `{}`",
            shown(&parsed)
        ));
    }
    Ok(parsed)
}

/// `text`, if it is a URL carrying credentials (a password, or a query such
/// as `?code=KEY`), with them masked for printing a configuration.
#[must_use]
pub fn masked_url(text: &str) -> Option<String> {
    let mut url = Url::parse(text).ok()?;
    if url.password().is_none() && url.query().is_none() {
        return None;
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        url.set_query(Some("***"));
    }
    Some(url.into())
}

/// `path`, if it carries a query (a health check's `/health?key=KEY`), with
/// the query masked as [`masked_url`] masks a URL's, for printing a
/// configuration.
#[must_use]
pub fn masked_path(path: &str) -> Option<String> {
    let (before, _query) = path.split_once('?')?;
    Some(format!("{before}?***"))
}

/// `text` as an error message may quote it: a URL with its password and
/// query masked, as [`masked_url`] does; anything else (a misspelt name, a
/// URL without a scheme such as `user:pw@host/x?key=K`) with what may be
/// user info (up to the last `@`) and a query masked.
#[must_use]
pub fn quotable(text: &str) -> String {
    if let Ok(url) = Url::parse(text)
        && url.host_str().is_some_and(|h| !h.is_empty())
    {
        return masked_url(text).unwrap_or_else(|| text.to_owned());
    }
    openhqm_core::secret::without_credentials(text)
}

/// `text` for printing if it is a URL: as given, with any password and
/// query masked; `None` if it is not a URL (then print none of it).
#[must_use]
pub fn printable_url(text: &str) -> Option<String> {
    Url::parse(text).ok()?;
    Some(masked_url(text).unwrap_or_else(|| text.to_owned()))
}

/// Whether a static header's value is likely a credential, by its name.
#[must_use]
pub fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "authorization",
        "cookie",
        "token",
        "key",
        "secret",
        "password",
        "signature",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// `url` as it may be shown in logs, metric labels and errors: without
/// user info and query, where credentials are put (`https://user:pw@host`,
/// `?code=KEY`).
pub(crate) fn shown(url: &Url) -> String {
    let mut shown = url.clone();
    // Both setters fail only for URLs that cannot have a host, which
    // `check_url` refuses.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.into()
}

/// A target's name in metrics and logs: its URL as configured, or `shown`
/// if that carries credentials (user info or a query).
pub(crate) fn label(configured: &str, url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() && url.query().is_none() {
        configured.to_owned()
    } else {
        shown(url)
    }
}

/// A target's name when its URL took text from the environment: the URL as
/// written in the file (`https://hooks.example/${HOOK_PATH}`), without the
/// user info, query and fragment, where credentials may be written out.
pub(crate) fn label_as_written(written: &str) -> String {
    let before_query = written.split(['?', '#']).next().unwrap_or(written);
    match before_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => before_query.to_owned(),
    }
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("`{name}` is not a valid header name"));
    }
    if is_hop_by_hop(name) {
        return Err(format!("`{name}` is hop-by-hop and is never forwarded"));
    }
    // Set or dropped by the forwarder for each forward; a configured one
    // would never be sent.
    if crate::headers::set_by_forwarder(name) {
        return Err(format!(
            "`{name}` belongs to each forward (set from its body, target and id, or dropped), not configured"
        ));
    }
    if hyper::header::HeaderValue::from_str(value).is_err() {
        return Err("the value is not a valid header value".into());
    }
    Ok(())
}

fn check_rewrite(rw: &PathRewrite) -> Result<(), String> {
    match (&rw.strip_prefix, &rw.regex, &rw.replace) {
        (Some(_), None, None) => Ok(()),
        (None, Some(re), Some(_)) => regex::Regex::new(re)
            .map(|_| ())
            .map_err(|e| format!("invalid regex: {e}")),
        (None, Some(_), None) => Err("`regex` needs `replace`".into()),
        _ => Err("give either `strip_prefix`, or `regex` with `replace`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        let url = check_url("https://user:pw@api.example:8443/hooks?code=KEY#x").expect("url");
        assert_eq!(shown(&url), "https://api.example:8443/hooks");
        let err = check_url("ftp://user:pw@files.example/").expect_err("not http");
        assert!(!err.contains("pw"), "{err}");
        let err = check_url("https://user:pw@[bad").expect_err("not a URL");
        assert!(!err.contains("pw"), "{err}");
        assert_eq!(
            masked_url("https://user:pw@h/p?code=KEY").as_deref(),
            Some("https://user:***@h/p?***")
        );
        assert_eq!(masked_url("http://h:1/p"), None);
        assert_eq!(masked_url("not a url"), None);
    }

    #[test]
    fn a_url_written_with_variables_is_named_as_written() {
        assert_eq!(
            label_as_written("https://hooks.example/services/${HOOK}"),
            "https://hooks.example/services/${HOOK}"
        );
        assert_eq!(
            label_as_written("https://user:literal-pw@${HOST}:8443/x?key=literal-key#f"),
            "https://${HOST}:8443/x",
            "user info and query, where literal credentials go, left out"
        );
        assert_eq!(label_as_written("${BACKEND_URL}"), "${BACKEND_URL}");
    }

    #[test]
    fn an_auth_value_no_header_can_carry_is_refused_unquoted() {
        let mut e = EndpointConfig::with_url("http://b/");
        e.auth_type = Some(AuthType::Bearer);
        e.auth_token = openhqm_core::Secret::from("tok-from-file\n");
        let problems = format!("{:?}", e.validate("api"));
        assert!(problems.contains("auth_token"), "{problems}");
        assert!(problems.contains("line break"), "{problems}");
        assert!(!problems.contains("tok-from-file"), "{problems}");
        e.auth_token = openhqm_core::Secret::from("tok-from-file");
        let problems = format!("{:?}", e.validate("api"));
        assert!(!problems.contains("auth_token"), "{problems}");
    }

    #[test]
    fn headers_the_forwarder_sets_itself_are_refused() {
        let mut e = EndpointConfig::with_url("http://b/");
        e.headers.insert("Content-Length".into(), "3".into());
        e.headers.insert("host".into(), "other".into());
        e.headers.insert("Expect".into(), "100-continue".into());
        e.auth_header_name = Some("x-correlation-id".into());
        let problems = format!("{:?}", e.validate("api"));
        for key in [
            "headers.Content-Length",
            "headers.host",
            "headers.Expect",
            "auth_header_name",
        ] {
            assert!(problems.contains(key), "{key}: {problems}");
        }
        assert!(
            problems.contains("`x-correlation-id` belongs to each forward"),
            "{problems}"
        );
    }

    #[test]
    fn a_ca_bundle_the_forwarder_could_not_load_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("config.yaml");
        std::fs::write(&not_pem, "proxy: {}\n").expect("write");
        let missing = dir.path().join("missing.pem");
        for (path, says) in [
            (&missing, "missing.pem"),
            (&not_pem, "holds no certificate"),
        ] {
            let mut e = EndpointConfig::with_url("https://b/");
            e.tls.ca_file = Some(path.display().to_string());
            let mut c = UpstreamConfig::default();
            c.endpoints.insert("api".into(), e);
            assert!(c.validate().is_empty(), "the shape is valid");
            let problems = format!("{:?}", c.file_problems());
            assert!(
                problems.contains("proxy.endpoints.api.tls.ca_file"),
                "{problems}"
            );
            assert!(problems.contains(says), "{problems}");
            // Not read when verification is off.
            c.endpoints
                .get_mut("api")
                .expect("api")
                .tls
                .insecure_skip_verify = true;
            assert!(c.file_problems().is_empty());
        }
    }

    #[test]
    fn quoted_references_keep_no_credentials() {
        for (text, expected) in [
            (
                "htps://user:hunter2@api.example.com/x?api_key=abc123",
                "htps://user:***@api.example.com/x?***",
            ),
            ("user:hunter2@api.example.com/x", "***@api.example.com/x"),
            ("api.example.com/x?api_key=abc123", "api.example.com/x?***"),
            ("billing", "billing"),
            ("http://h:1/p", "http://h:1/p"),
        ] {
            assert_eq!(quotable(text), expected, "{text}");
        }
    }

    #[test]
    fn a_default_endpoint_in_error_is_quoted_without_its_credentials() {
        let config = UpstreamConfig {
            default_endpoint: Some("htps://user:hunter2@api.example.com/x?api_key=abc123".into()),
            ..UpstreamConfig::default()
        };
        let problems = config.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (key, message) = &problems[0];
        assert_eq!(key, "proxy.default_endpoint");
        assert_eq!(
            message,
            "`htps://user:***@api.example.com/x?***` is neither a configured endpoint \
             (known: none) nor an http(s) URL"
        );
    }

    #[test]
    fn a_query_in_a_path_is_masked_for_printing() {
        assert_eq!(
            masked_path("/health?key=HCKEY&x=1").as_deref(),
            Some("/health?***")
        );
        assert_eq!(masked_path("/health?").as_deref(), Some("/health?***"));
        assert_eq!(masked_path("/health"), None);
    }
}
