//! Which completion callback URLs OpenHQM may call.
//!
//! A client names a `metadata.callback_url`; OpenHQM will POST to it from
//! inside the deployment's network, so a URL is accepted only if its host
//! (and port) is on the configured allow-list (`callbacks.allowed_hosts`).
//! The same check runs at submit (a refusal is a 400), when a worker enqueues
//! the callback (a foreign producer never went through submit) and right
//! before the POST, so a host taken off the list is never called again.
//!
//! An entry is `host` or `host:port` (`[v6]:port` for IPv6). Without a port
//! it allows the host on the scheme's default port only (80 for `http`, 443
//! for `https`); with one, that port only. Hosts compare case-insensitively,
//! after the same normalization URLs get (IDNA, IPv4 forms). A host written
//! `*.example.com` allows every subdomain of `example.com`, at any depth, but
//! not `example.com` itself (list both for both); `*` anywhere else is an
//! error, as it would otherwise be a host that never matches, and so is a
//! wildcard over a single label (`*.com`). A wildcard trusts every name in
//! the domain: whoever controls its DNS chooses the addresses called.

use std::fmt;

use url::Url;

use crate::secret::without_credentials;

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackUrlError {
    /// Not an absolute `http`/`https` URL with a host, or it carries credentials.
    #[error("callback_url is not usable: {0}")]
    Invalid(String),
    /// Its host and port are not on `callbacks.allowed_hosts`.
    #[error("callback_url host `{0}` is not on callbacks.allowed_hosts")]
    NotAllowed(String),
    /// `callbacks.allowed_hosts` is empty: callbacks are off.
    #[error("completion callbacks are disabled (callbacks.allowed_hosts is empty)")]
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    host: HostPattern,
    /// `None`: the scheme's default port only.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// As `Url::host_str` spells it (IPv6 in brackets).
    Exact(String),
    /// `*.example.com`: held as `.example.com`, the suffix every subdomain
    /// of that domain ends with.
    Subdomains(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == host,
            Self::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Exact(host) => f.write_str(host)?,
            HostPattern::Subdomains(suffix) => write!(f, "*{suffix}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// The allow-list of callback hosts. Empty means callbacks are disabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackPolicy {
    allowed: Vec<Allowed>,
}

/// Normalizes a host the way a URL's host is normalized.
fn normalize_host(host: &str) -> Option<String> {
    let url = Url::parse(&format!("http://{host}/")).ok()?;
    let normal = url.host_str()?.to_owned();
    let plain = url.port().is_none()
        && url.username().is_empty()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    plain.then_some(normal)
}

fn parse_entry(entry: &str) -> Result<Allowed, String> {
    let entry = entry.trim();
    if entry.contains("://") {
        return Err(format!(
            "`{}`: give a host or host:port, not a URL",
            without_credentials(entry)
        ));
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        // [v6] or [v6]:port
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{}`: unclosed `[`", without_credentials(entry)))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                format!(
                    "`{}`: expected `:port` after `]`",
                    without_credentials(entry)
                )
            })?),
        };
        (format!("[{inside}]"), port)
    } else {
        match entry.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (entry.to_owned(), None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                format!(
                    "`{}`: `{}` is not a port",
                    without_credentials(entry),
                    without_credentials(p)
                )
            })
        })
        .transpose()?;
    let not_a_host = || {
        format!(
            "`{}` is not a host or host:port",
            without_credentials(entry)
        )
    };
    let host = match host.strip_prefix("*.") {
        Some(domain) => {
            // A domain name, not an address: `*.0.0.1` would otherwise
            // normalize to the IPv4 address 0.0.0.1.
            // At least two labels: `*.com` or `*.localhost` would trust
            // names anyone (or anything local) can own.
            let domain = normalize_host(domain)
                .filter(|d| !d.contains('*') && d.parse::<std::net::IpAddr>().is_err())
                .filter(|d| !d.starts_with('[') && d.trim_end_matches('.').contains('.'))
                .ok_or_else(|| {
                    format!(
                        "`{}`: a wildcard is `*.` followed by a domain of two labels or more, as in `*.example.com`",
                        without_credentials(entry)
                    )
                })?;
            HostPattern::Subdomains(format!(".{domain}"))
        }
        None if host.contains('*') => {
            return Err(format!(
                "`{}`: `*` may only stand for subdomains, as in `*.example.com`",
                without_credentials(entry)
            ));
        }
        None => HostPattern::Exact(
            normalize_host(&host)
                .filter(|h| !h.is_empty())
                .ok_or_else(not_a_host)?,
        ),
    };
    Ok(Allowed { host, port })
}

impl CallbackPolicy {
    /// Builds the allow-list from `callbacks.allowed_hosts`.
    ///
    /// # Errors
    /// One message per entry that is not `host` or `host:port`.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<Self, Vec<String>> {
        let mut allowed = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            match parse_entry(entry.as_ref()) {
                Ok(a) => allowed.push(a),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Self { allowed })
        } else {
            Err(errors)
        }
    }

    /// Whether any host is allowed, i.e. whether callbacks are on.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Parses `url` and checks it against the list.
    ///
    /// # Errors
    /// [`CallbackUrlError`] saying why it may not be called.
    pub fn check(&self, url: &str) -> Result<Url, CallbackUrlError> {
        if !self.is_enabled() {
            return Err(CallbackUrlError::Disabled);
        }
        let parsed = Url::parse(url).map_err(|e| CallbackUrlError::Invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CallbackUrlError::Invalid(format!(
                "scheme `{}` is not http or https",
                parsed.scheme()
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(CallbackUrlError::Invalid(
                "credentials in the URL are not accepted".into(),
            ));
        }
        let Some(host) = parsed.host_str() else {
            return Err(CallbackUrlError::Invalid("the URL has no host".into()));
        };
        let explicit = parsed.port();
        // Ports compare as effective ports: `host:443` allows `https://host/`,
        // whose default port the URL does not spell out.
        let port = parsed.port_or_known_default();
        let ok = self.allowed.iter().any(|a| {
            a.host.matches(host) && a.port.or_else(|| default_port(parsed.scheme())) == port
        });
        if ok {
            Ok(parsed)
        } else {
            let shown = match explicit {
                Some(p) => format!("{host}:{p}"),
                None => host.to_owned(),
            };
            Err(CallbackUrlError::NotAllowed(shown))
        }
    }

    /// The entries, normalized, for logs and `check-config`.
    #[must_use]
    pub fn entries(&self) -> Vec<String> {
        self.allowed.iter().map(ToString::to_string).collect()
    }
}

/// The port a URL of `scheme` means when it names none.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> CallbackPolicy {
        CallbackPolicy::new(entries).expect("valid entries")
    }

    #[test]
    fn host_and_port_must_match_an_entry() {
        let p = policy(&[
            "Hooks.Example.com",
            "127.0.0.1:9000",
            "[::1]:8080",
            "secure.example.com:443",
        ]);
        for ok in [
            "https://hooks.example.com/a?b=c",
            "http://HOOKS.example.com/",
            "https://hooks.example.com:443/x",
            "http://127.0.0.1:9000/hook",
            "http://[::1]:8080/",
            "https://secure.example.com/",
            "https://secure.example.com:443/",
        ] {
            assert!(p.check(ok).is_ok(), "{ok} should be allowed");
        }
        assert!(
            p.check("http://secure.example.com/").is_err(),
            "port 80 is not the entry's 443"
        );
        for (refused, expected) in [
            (
                "https://hooks.example.com:8443/",
                CallbackUrlError::NotAllowed("hooks.example.com:8443".into()),
            ),
            (
                "http://127.0.0.1/",
                CallbackUrlError::NotAllowed("127.0.0.1".into()),
            ),
            (
                "http://127.0.0.1:9001/",
                CallbackUrlError::NotAllowed("127.0.0.1:9001".into()),
            ),
            (
                "https://evil.example.com/",
                CallbackUrlError::NotAllowed("evil.example.com".into()),
            ),
            (
                "https://hooks.example.com.evil.net/",
                CallbackUrlError::NotAllowed("hooks.example.com.evil.net".into()),
            ),
            (
                "http://0x7f.0.0.1:9001/",
                CallbackUrlError::NotAllowed("127.0.0.1:9001".into()),
            ),
        ] {
            assert_eq!(p.check(refused).expect_err(refused), expected, "{refused}");
        }
    }

    #[test]
    fn a_wildcard_allows_every_subdomain_but_not_the_domain() {
        let p = policy(&["*.Hooks.Example.com", "*.b\u{fc}cher.example:8443"]);
        for ok in [
            "https://a.hooks.example.com/x",
            "http://A.B.hooks.example.com/",
            "https://eu.xn--bcher-kva.example:8443/",
        ] {
            assert!(p.check(ok).is_ok(), "{ok} should be allowed");
        }
        for refused in [
            "https://hooks.example.com/",
            "https://ahooks.example.com/",
            "https://a.hooks.example.com.evil.net/",
            "https://a.hooks.example.com:8443/",
            "https://eu.xn--bcher-kva.example/",
        ] {
            assert!(
                matches!(p.check(refused), Err(CallbackUrlError::NotAllowed(_))),
                "{refused}: {:?}",
                p.check(refused)
            );
        }
        assert_eq!(
            p.entries(),
            ["*.hooks.example.com", "*.xn--bcher-kva.example:8443"]
        );
    }

    #[test]
    fn a_wildcard_anywhere_else_is_an_error() {
        let errors = CallbackPolicy::new(&[
            "*",
            "*.",
            "a.*.example.com",
            "*example.com",
            "*.0.0.1",
            "*.[::1]",
            "*.com",
            "*.localhost",
            "*.com.",
        ])
        .expect_err("bad wildcards");
        assert_eq!(errors.len(), 9, "{errors:?}");
    }

    #[test]
    fn only_plain_http_urls_are_usable() {
        let p = policy(&["hooks.example.com"]);
        for bad in [
            "ftp://hooks.example.com/",
            "file:///etc/passwd",
            "hooks.example.com/x",
            "not a url",
            "https://user:pw@hooks.example.com/",
            "",
        ] {
            assert!(
                matches!(p.check(bad), Err(CallbackUrlError::Invalid(_))),
                "{bad}: {:?}",
                p.check(bad)
            );
        }
    }

    #[test]
    fn an_empty_list_disables_callbacks() {
        let p = policy(&[]);
        assert!(!p.is_enabled());
        assert_eq!(
            p.check("https://hooks.example.com/"),
            Err(CallbackUrlError::Disabled)
        );
    }

    #[test]
    fn bad_entries_are_each_reported() {
        let errors = CallbackPolicy::new(&["ok.example.com", "a:b", "x:0", "[::1", "h/p", ""])
            .expect_err("bad entries");
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert_eq!(
            policy(&[" a.example.com:81 ", "[::1]"]).entries(),
            ["a.example.com:81", "[::1]"]
        );
    }

    #[test]
    fn a_bad_entry_is_reported_without_its_credentials() {
        let errors = CallbackPolicy::new(&[
            "https://user:hunter2@hooks.example.com/x?key=abc123",
            "user:hunter2@hooks.example.com",
            "hooks.example.com?key=abc123",
        ])
        .expect_err("bad entries");
        assert_eq!(
            errors,
            [
                "`***@hooks.example.com/x?***`: give a host or host:port, not a URL",
                "`***@hooks.example.com`: `***@hooks.example.com` is not a port",
                "`hooks.example.com?***` is not a host or host:port",
            ]
        );
    }
}
