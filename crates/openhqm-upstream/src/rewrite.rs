//! The backend URL of one forward.
//!
//! By default a request goes to the target URL as configured. A request that
//! carries its own path (`metadata.path`, as a sidecar passthrough records
//! it) has that path rewritten (`path_rewrite`) and appended to the target's
//! base path; `metadata.query` (a leading `?` is dropped, but for a passthrough's verbatim query) becomes the query string. This
//! keeps the envelope the only input: nothing here looks at the client
//! connection.

use hyper::Uri;
use hyper::header::HeaderValue;
use openhqm_core::Envelope;
use openhqm_core::path::within;
use regex::Regex;
use url::Url;

use crate::config::PathRewrite;
use crate::error::UpstreamError;
use crate::headers::basic_credentials;

/// A compiled `path_rewrite`.
#[derive(Debug, Clone, Default)]
pub enum Rewrite {
    /// The path is kept.
    #[default]
    Keep,
    /// A prefix is removed when present.
    StripPrefix(String),
    /// The first match of a regex is replaced.
    Regex(Regex, String),
}

impl Rewrite {
    /// Compiles the setting.
    ///
    /// # Errors
    /// The regex error.
    pub fn new(cfg: Option<&PathRewrite>) -> Result<Self, String> {
        let Some(cfg) = cfg else {
            return Ok(Self::Keep);
        };
        match (&cfg.strip_prefix, &cfg.regex) {
            (Some(prefix), _) => Ok(Self::StripPrefix(prefix.clone())),
            (None, Some(re)) => Regex::new(re)
                .map(|r| Self::Regex(r, cfg.replace.clone().unwrap_or_default()))
                .map_err(|e| format!("invalid path_rewrite.regex: {e}")),
            (None, None) => Ok(Self::Keep),
        }
    }

    /// Rewrites one path. Empty when a prefix was stripped and nothing
    /// is left: the target's base path itself, with no slash added.
    #[must_use]
    pub fn apply(&self, path: &str) -> String {
        let out = match self {
            Self::Keep => path.to_owned(),
            // Whole segments only: `/api` strips `/api/users`, not `/apiv2`.
            // Both compared from the root: `api` is `/api`, and a path sent
            // as `api/users` is `/api/users`.
            Self::StripPrefix(prefix) => {
                let (path, prefix) = (rooted(path), rooted(prefix.trim_end_matches('/')));
                match path.strip_prefix(prefix.as_ref()) {
                    Some("") => return String::new(),
                    Some(rest) if rest.starts_with('/') => rest.to_owned(),
                    _ => path.into_owned(),
                }
            }
            Self::Regex(re, replace) => re.replace(path, replace.as_str()).into_owned(),
        };
        if out.starts_with('/') {
            out
        } else {
            format!("/{out}")
        }
    }
}

/// `path` starting with `/`.
fn rooted(path: &str) -> std::borrow::Cow<'_, str> {
    if path.starts_with('/') {
        path.into()
    } else {
        format!("/{path}").into()
    }
}

/// A target's base URL, prepared once for every forward to it. Its `Debug`
/// would show credentials, so it has none.
pub struct Base {
    url: Url,
    /// `scheme://host[:port]`, without user info: what a forward's path is
    /// appended to on the direct route (see [`target`]).
    origin: String,
    /// The base URL's own request target, and the Basic header its user
    /// info stands for.
    uri: Uri,
    basic: Option<HeaderValue>,
}

impl Base {
    /// Prepares `url`.
    ///
    /// # Errors
    /// [`UpstreamError::InvalidUrl`] if it is no valid request URI.
    pub fn new(url: Url) -> Result<Self, UpstreamError> {
        let (uri, basic) = request_target(url.clone())?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(UpstreamError::InvalidUrl("no scheme or host".into()));
        };
        Ok(Self {
            origin: format!("{scheme}://{authority}"),
            url,
            uri,
            basic,
        })
    }

    /// The URL as configured (with any credentials).
    #[must_use]
    pub fn url(&self) -> &Url {
        &self.url
    }
}

/// The request target to send `env` to on `base`, and the `Authorization:
/// Basic` header the base URL's user info stands for.
///
/// A path and query made only of characters a URL keeps as they are, with
/// no dot segments, are appended to the base as text; anything else takes
/// the general route (the `url` crate), which encodes, resolves and checks.
/// Both give the same URI (tested): the direct one only skips parsing the
/// URL twice, which every forward of a sidecar would pay.
///
/// # Errors
/// [`UpstreamError::PathOutsideBase`] when the joined path leaves the
/// target's base path (`..`, `%2e%2e` or `\` segments): a caller may choose
/// a path below the endpoint, never another resource of the backend, which
/// would get the endpoint's credentials. [`UpstreamError::InvalidUrl`] if
/// `metadata.path` or `metadata.query` is no string, or the URL is no valid
/// request URI.
pub fn target(
    base: &Base,
    env: &Envelope,
    rewrite: &Rewrite,
) -> Result<(Uri, Option<HeaderValue>), UpstreamError> {
    let (path, query) = requested(env)?;
    if path.is_none() && query.is_none() {
        return Ok((base.uri.clone(), base.basic.clone()));
    }
    let rewritten = path.map(|p| rewrite.apply(p));
    match direct(base, rewritten.as_deref(), query) {
        Some(uri) => Ok((uri, base.basic.clone())),
        None => request_target(joined(&base.url, rewritten.as_deref(), query)?),
    }
}

/// The path (`metadata.path`) and query (`metadata.query`) `env` asks for
/// below its endpoint, each `None` when empty.
fn requested(env: &Envelope) -> Result<(Option<&str>, Option<&str>), UpstreamError> {
    let extra = &env.metadata.extra;
    // Submit refuses other types; a producer's message could still carry one,
    // and sending it to the base URL instead would reach the wrong resource.
    let text = |key: &str| match extra.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(UpstreamError::InvalidUrl(format!(
            "metadata.{key} must be a string"
        ))),
    };
    // Empty means none: the base URL as configured, not with a `/` added.
    let path = text("path")?.filter(|p| !p.is_empty());
    // A leading `?` is the separator, not part of the first name; a
    // passthrough records the query verbatim (`/x??a=1` has `?a=1`).
    let query = text("query")?
        .map(|q| match q.strip_prefix('?') {
            Some(rest) if !env.passthrough => rest,
            _ => q,
        })
        .filter(|q| !q.is_empty());
    Ok((path, query))
}

/// The direct route of [`target`]: `None` unless the rewritten path and
/// the query are made only of characters the URL parser keeps as they are
/// (no `%`, `\` or characters it would encode) and the path has no dot
/// segments, as the URL parser reads them or as [`within`] does (`..;x`,
/// which servlet containers take for `..`), so that nothing would be
/// encoded, resolved or climb out. The joined path is checked all the same.
fn direct(base: &Base, rewritten: Option<&str>, query: Option<&str>) -> Option<Uri> {
    let kept = |text: &str, extra: &[u8]| {
        text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b"-._~!$&()*+,;=:@/".contains(&b) || extra.contains(&b)
        })
    };
    // The URL parser encodes `'` in the query of http(s) URLs, not in the path.
    let dot_segment = |s: &str| matches!(s.split(';').next(), Some("." | ".."));
    if !rewritten.is_none_or(|p| kept(p, b"'") && !p.split('/').any(dot_segment))
        || !query.is_none_or(|q| kept(q, b"?%"))
    {
        return None;
    }
    let base_path = base.url.path();
    let mut text = String::with_capacity(base.origin.len() + base_path.len() + 64);
    text.push_str(&base.origin);
    match rewritten.filter(|p| !p.is_empty()) {
        Some(p) => {
            text.push_str(base_path.trim_end_matches('/'));
            text.push_str(p);
        }
        None => text.push_str(base_path),
    }
    if !within(base_path, &text[base.origin.len()..]) {
        return None;
    }
    // The base's query, then the request's.
    match (base.url.query(), query) {
        (Some(b), Some(q)) if !b.is_empty() => {
            text.extend(["?", b, "&", q]);
        }
        (_, Some(q)) => text.extend(["?", q]),
        (Some(b), None) => text.extend(["?", b]),
        (None, None) => {}
    }
    Uri::try_from(text).ok()
}

/// The general route: `rewritten` appended to `base`'s path, `query` to its
/// query, through the URL parser (encoding what must be, resolving dot
/// segments) and checked to stay below `base`.
fn joined(base: &Url, rewritten: Option<&str>, query: Option<&str>) -> Result<Url, UpstreamError> {
    let mut url = base.clone();
    if let Some(rewritten) = rewritten.filter(|r| !r.is_empty()) {
        let joined = format!("{}{rewritten}", base.path().trim_end_matches('/'));
        // Checked as joined: `set_path` resolves the dot segments, and
        // above the root `..` resolves to the root, where the check
        // below would find `/../x` inside a base of `/`.
        if !within(base.path(), &joined) {
            return Err(UpstreamError::PathOutsideBase);
        }
        url.set_path(&joined);
    }
    if let Some(q) = query {
        let merged = match base.query() {
            Some(b) if !b.is_empty() => format!("{b}&{q}"),
            _ => q.to_owned(),
        };
        url.set_query(Some(&merged));
    }
    if url.host_str() != base.host_str() || !within(base.path(), url.path()) {
        return Err(UpstreamError::PathOutsideBase);
    }
    Ok(url)
}

/// The URI a forward is sent to, and the `Authorization: Basic` header
/// that the URL's user info stands for (`https://user:pw@host`, decoded
/// from percent-encoding as curl does): user info never goes on the wire
/// as part of the URI.
///
/// # Errors
/// [`UpstreamError::InvalidUrl`] if the URL is not a valid request URI
/// (the message does not quote it).
pub fn request_target(mut url: Url) -> Result<(Uri, Option<HeaderValue>), UpstreamError> {
    let mut basic = None;
    if !url.username().is_empty() || url.password().is_some() {
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = basic_credentials(
            &decode(url.username()),
            &decode(url.password().unwrap_or_default()),
        );
        let mut value = HeaderValue::from_str(&credentials)
            .map_err(|_| UpstreamError::InvalidHeader("authorization".to_owned()))?;
        value.set_sensitive(true);
        basic = Some(value);
        // Both fail only for URLs without a host, which config refuses.
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    url.set_fragment(None);
    let uri = url
        .as_str()
        .parse::<Uri>()
        .map_err(|e| UpstreamError::InvalidUrl(e.to_string()))?;
    Ok((uri, basic))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general route alone, as a URL: what [`target`] must agree with.
    fn target_url(base: &Url, env: &Envelope, rewrite: &Rewrite) -> Result<Url, UpstreamError> {
        let (path, query) = requested(env)?;
        if path.is_none() && query.is_none() {
            return Ok(base.clone());
        }
        let rewritten = path.map(|p| rewrite.apply(p));
        joined(base, rewritten.as_deref(), query)
    }

    fn check(
        base: &str,
        path: Option<&str>,
        query: Option<&str>,
        rw: Option<PathRewrite>,
        expected: &str,
    ) {
        let mut env: Envelope = serde_json::from_str(
            r#"{"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","payload":1}"#,
        )
        .expect("envelope");
        if let Some(p) = path {
            env.metadata.extra.insert("path".into(), p.into());
        }
        if let Some(q) = query {
            env.metadata.extra.insert("query".into(), q.into());
        }
        let rewrite = Rewrite::new(rw.as_ref()).expect("rewrite");
        let base = Url::parse(base).expect("base");
        let got = target_url(&base, &env, &rewrite).expect("url");
        assert_eq!(got.as_str(), expected, "{path:?} {query:?}");
        let (uri, _) = target(&Base::new(base).expect("base"), &env, &rewrite).expect("target");
        assert_eq!(uri.to_string(), expected, "{path:?} {query:?}");
    }

    #[test]
    fn the_direct_route_gives_the_general_routes_uri() {
        let bases = [
            "http://b:1",
            "http://b:1/api/",
            "https://u:p%40ss@b:8443/api/v1?k=1",
            "http://b:1/x?",
            "http://[::1]:8080/a%20b",
        ];
        let paths = [
            None,
            Some(""),
            Some("/orders/7"),
            Some("orders"),
            Some("/a;v=1/b:c@d/~e_f-g.h"),
            Some("/it's/(x)*+,$!="),
            Some("/a/./b"),
            Some("/a/../b"),
            Some("/a/.../b"),
            Some("/a b/\\"),
            Some("/%7Euser"),
            Some("/caf\u{e9}/{x}"),
            Some("//other/x"),
            Some("/api/rest"),
            Some("/..;/admin"),
            Some("/api/..;/x"),
            Some("/a/..;x/b"),
            Some("/a/.;/b;p=1"),
        ];
        let queries = [
            None,
            Some("a=1&b=2"),
            Some("?a=1"),
            Some("q=it's"),
            Some("x=%20&y=a%2Fb"),
            Some("s=a b"),
            Some("r=/p?q@:"),
        ];
        let rewrites = [Rewrite::Keep, Rewrite::StripPrefix("/api".into())];
        let mut direct_taken = 0;
        for base in bases {
            let url = Url::parse(base).expect("base");
            let prepared = Base::new(url.clone()).expect("base");
            for path in paths {
                for query in queries {
                    for rewrite in &rewrites {
                        for passthrough in [false, true] {
                            let mut env: Envelope = serde_json::from_str(
                                r#"{"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","payload":1}"#,
                            )
                            .expect("envelope");
                            env.passthrough = passthrough;
                            if let Some(p) = path {
                                env.metadata.extra.insert("path".into(), p.into());
                            }
                            if let Some(q) = query {
                                env.metadata.extra.insert("query".into(), q.into());
                            }
                            let general = target_url(&url, &env, rewrite).and_then(request_target);
                            let got = target(&prepared, &env, rewrite);
                            let case = format!("{base} {path:?} {query:?} {passthrough}");
                            match (general, got) {
                                (Ok((a, auth_a)), Ok((b, auth_b))) => {
                                    assert_eq!(a, b, "{case}");
                                    assert_eq!(auth_a, auth_b, "{case}");
                                }
                                (Err(a), Err(b)) => {
                                    assert_eq!(a.to_string(), b.to_string(), "{case}");
                                }
                                (a, b) => panic!("{case}: {a:?} vs {b:?}"),
                            }
                            let (path, query) = requested(&env).expect("text");
                            let rewritten = path.map(|p| rewrite.apply(p));
                            direct_taken += usize::from(
                                direct(&prepared, rewritten.as_deref(), query).is_some(),
                            );
                        }
                    }
                }
            }
        }
        // Most of these take the direct route: it is not dead code.
        assert!(direct_taken > 300, "{direct_taken}");
    }

    #[test]
    fn a_sidecars_usual_requests_take_the_direct_route() {
        let base = Base::new(Url::parse("http://app:8080").expect("url")).expect("base");
        for (path, query) in [
            ("/orders", None),
            ("/api/v1/users/7", Some("page=2&sort=-created")),
            ("/files/report-2026.pdf", Some("download=1")),
        ] {
            let uri = direct(&base, Some(path), query).expect("direct");
            let expected = match query {
                Some(q) => format!("http://app:8080{path}?{q}"),
                None => format!("http://app:8080{path}"),
            };
            assert_eq!(uri.to_string(), expected);
        }
    }

    fn strip(p: &str) -> Option<PathRewrite> {
        Some(PathRewrite {
            strip_prefix: Some(p.into()),
            ..PathRewrite::default()
        })
    }

    fn regex(re: &str, replace: &str) -> Option<PathRewrite> {
        Some(PathRewrite {
            regex: Some(re.into()),
            replace: Some(replace.into()),
            ..PathRewrite::default()
        })
    }

    #[test]
    fn a_path_cannot_climb_out_of_the_base_path() {
        let paths = [
            "/../../admin/purge",
            "/%2e%2e/%2E%2E/admin",
            "/..\\..\\admin",
            "/x/../../../admin",
            "/..%2F..%2Fadmin",
            "/%2e%2e%2fadmin",
            "/a/..%5c..%5Cadmin",
            "/..;/admin",
            "/a/..;/..;/admin",
            "/a/..;x/.;y/..;/admin",
        ];
        // Above a root base too, where the URL would resolve `..` to `/`.
        for (base, path) in ["http://b:1/hooks/public", "http://b:1", "http://b:1/"]
            .into_iter()
            .flat_map(|b| paths.map(|p| (b, p)))
        {
            let base = Url::parse(base).expect("base");
            let mut env: Envelope = serde_json::from_str(
                r#"{"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","payload":1}"#,
            )
            .expect("envelope");
            env.metadata.extra.insert("path".into(), path.into());
            let got = target_url(&base, &env, &Rewrite::Keep);
            assert!(
                matches!(got, Err(UpstreamError::PathOutsideBase)),
                "{base} {path}: {got:?}"
            );
            let prepared = Base::new(base.clone()).expect("base");
            let got = target(&prepared, &env, &Rewrite::Keep);
            assert!(
                matches!(got, Err(UpstreamError::PathOutsideBase)),
                "{base} {path}: {got:?}"
            );
        }
        // Inside the root, until the rewrite strips the prefix: the check is
        // on what is sent.
        let base = Base::new(Url::parse("http://b:1/hooks/public").expect("url")).expect("base");
        let mut env: Envelope = serde_json::from_str(
            r#"{"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","payload":1}"#,
        )
        .expect("envelope");
        env.metadata
            .extra
            .insert("path".into(), "/api/..;/admin".into());
        let got = target(&base, &env, &Rewrite::StripPrefix("/api".into()));
        assert!(
            matches!(got, Err(UpstreamError::PathOutsideBase)),
            "{got:?}"
        );
        // Dot segments that stay inside are resolved and allowed.
        check(
            "http://b:1/hooks/public",
            Some("/a/../b"),
            None,
            None,
            "http://b:1/hooks/public/b",
        );
    }

    #[test]
    fn a_path_or_query_that_is_not_text_is_refused_not_dropped() {
        let base = Url::parse("http://b:1/api").expect("base");
        for (key, value) in [
            ("path", serde_json::json!(5)),
            ("path", serde_json::json!(["a"])),
            ("query", serde_json::json!({"a": "1"})),
        ] {
            let mut env: Envelope = serde_json::from_str(
                r#"{"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","payload":1}"#,
            )
            .expect("envelope");
            env.metadata.extra.insert(key.into(), value.clone());
            let got = target_url(&base, &env, &Rewrite::Keep);
            assert!(
                matches!(&got, Err(UpstreamError::InvalidUrl(m)) if m.contains(key)),
                "{key}: {value}: {got:?}"
            );
        }
    }

    #[test]
    fn an_encoded_slash_inside_a_segment_passes_as_sent() {
        // GitLab-style ids: the bytes go as they came, under any base path.
        check(
            "http://b:1/",
            Some("/api/v4/projects/group%2Fproject/files/a%2Fb%5Cc.txt"),
            None,
            None,
            "http://b:1/api/v4/projects/group%2Fproject/files/a%2Fb%5Cc.txt",
        );
        check(
            "http://b:1/hooks",
            Some("/x/a%2f..%2Fb"),
            None,
            None,
            "http://b:1/hooks/x/a%2f..%2Fb",
        );
        // Climbing a level inside the base, even through an encoded slash, is fine.
        check(
            "http://b:1/hooks",
            Some("/x/..%2Fy"),
            None,
            None,
            "http://b:1/hooks/x/..%2Fy",
        );
    }

    #[test]
    fn user_info_becomes_basic_auth_and_leaves_the_uri() {
        let url = Url::parse("https://svc%40corp:p%3Ass@b:8443/x?k=1#frag").expect("url");
        let (uri, basic) = request_target(url).expect("target");
        assert_eq!(uri.to_string(), "https://b:8443/x?k=1");
        let basic = basic.expect("user info gives basic auth");
        assert!(basic.is_sensitive());
        // base64("svc@corp:p:ss")
        assert_eq!(basic.to_str().expect("ascii"), "Basic c3ZjQGNvcnA6cDpzcw==");

        let (uri, basic) = request_target(Url::parse("http://b:1/x").expect("url")).expect("ok");
        assert_eq!((uri.to_string().as_str(), basic), ("http://b:1/x", None));
    }

    #[test]
    fn url_table() {
        check("http://b:1/api/v1", None, None, None, "http://b:1/api/v1");
        // An empty `metadata.path` is no path: no slash appended.
        check(
            "http://b:1/api/v1",
            Some(""),
            None,
            None,
            "http://b:1/api/v1",
        );
        check(
            "http://b:1/api/",
            Some("/users/7"),
            None,
            None,
            "http://b:1/api/users/7",
        );
        check("http://b:1", Some("users"), None, None, "http://b:1/users");
        check(
            "http://b:1/x?k=1",
            None,
            Some("a=2"),
            None,
            "http://b:1/x?k=1&a=2",
        );
        check("http://b:1/x", None, Some("?a=2"), None, "http://b:1/x?a=2");
        check("http://b:1/x", None, Some("?"), None, "http://b:1/x");
        // A passthrough's query is replayed as the caller sent it.
        let mut replayed: Envelope = serde_json::from_str(
            r#"{"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","payload":1}"#,
        )
        .expect("envelope");
        replayed.passthrough = true;
        replayed
            .metadata
            .extra
            .insert("query".into(), "?a=1".into());
        let base = Url::parse("http://b:1/x").expect("base");
        let got = target_url(&base, &replayed, &Rewrite::Keep).expect("url");
        assert_eq!(got.as_str(), "http://b:1/x??a=1");
        check(
            "http://b:1/",
            Some("/api/orders/9"),
            Some("q=1"),
            strip("/api"),
            "http://b:1/orders/9?q=1",
        );
        check(
            "http://b:1/",
            Some("/other"),
            None,
            strip("/api"),
            "http://b:1/other",
        );
        // A prefix or a path without its leading slash is taken from the root.
        for (path, prefix) in [("api/orders/9", "/api"), ("/api/orders/9", "api")] {
            check(
                "http://b:1/",
                Some(path),
                None,
                strip(prefix),
                "http://b:1/orders/9",
            );
        }
        check(
            "http://b:1/",
            Some("apiv2/x"),
            None,
            strip("api"),
            "http://b:1/apiv2/x",
        );
        check(
            "http://b:1/",
            Some("/api"),
            None,
            strip("/api"),
            "http://b:1/",
        );
        // Exactly the prefix: the base path as configured, no slash added.
        check(
            "http://b:1/base",
            Some("/api"),
            None,
            strip("/api"),
            "http://b:1/base",
        );
        check(
            "http://b:1/base",
            Some("/api/"),
            None,
            strip("/api"),
            "http://b:1/base/",
        );
        check(
            "http://b:1/",
            Some("/v1/users/7"),
            None,
            regex("^/v1/(.*)$", "/v2/$1"),
            "http://b:1/v2/users/7",
        );
        check(
            "http://b:1/",
            Some("/apiv2/users"),
            None,
            strip("/api"),
            "http://b:1/apiv2/users",
        );
        // The path cannot escape the target.
        check(
            "http://b:1/base",
            Some("//evil.example/x"),
            None,
            None,
            "http://b:1/base//evil.example/x",
        );
    }
}
