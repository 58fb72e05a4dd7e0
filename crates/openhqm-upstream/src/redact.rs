//! The endpoint's own secrets, masked out of text quoted from a backend.
//!
//! A backend's error page may echo the request it got, auth header
//! included. OpenHQM knows what it sent: the auth value (and the token or
//! password inside it) and any credentials in the target URLs. Every excerpt
//! of a backend body that goes into an error (and so into logs, the stored
//! `error` and a dead letter's reason) has them replaced by `***`. The
//! backend's answer itself, kept as the request's result, is left as sent.

use base64::Engine as _;
use openhqm_core::Secret;
use url::Url;

use crate::config::{EndpointConfig, is_sensitive_header};
use crate::error::excerpt;
use crate::headers::AuthHeader;

/// Query values shorter than this are not taken for secrets (`?v=1`).
const SHORTEST_QUERY_SECRET: usize = 4;

/// What to mask; longest first, so a value containing another goes whole.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<Secret>,
}

impl Redactor {
    /// The secrets of one endpoint: its auth value, the token or password in
    /// it, and the password and query values of its target URLs.
    #[must_use]
    pub fn new<'a>(
        cfg: &EndpointConfig,
        auth: Option<&AuthHeader>,
        targets: impl IntoIterator<Item = &'a Url>,
    ) -> Self {
        let mut found: Vec<String> = Vec::new();
        if let Some(auth) = auth {
            found.push(auth.value.expose().to_owned());
            // The token without its scheme, and the bare credentials, as a
            // backend may print them decoded.
            if let Some(encoded) = auth.value.expose().strip_prefix("Basic ") {
                found.push(encoded.to_owned());
                let pair = base64::engine::general_purpose::STANDARD.decode(encoded);
                if let Ok(pair) = String::from_utf8(pair.unwrap_or_default()) {
                    found.push(pair);
                }
            }
        }
        found.push(cfg.auth_token.expose().to_owned());
        found.push(cfg.auth_password.expose().to_owned());
        // Static headers named like credentials (`X-Api-Key`), as
        // `check-config` masks them.
        found.extend(
            cfg.headers
                .iter()
                .filter(|(name, _)| is_sensitive_header(name))
                .map(|(_, value)| value.clone()),
        );
        // Whatever the file took from the environment, as `check-config`
        // and target names leave it out.
        found.extend(
            cfg.from_env
                .values
                .iter()
                .map(Secret::expose)
                .filter(|v| v.len() >= SHORTEST_QUERY_SECRET)
                .map(str::to_owned),
        );
        for url in targets {
            if let Some(password) = url.password() {
                found.push(password.to_owned());
                found.extend(decoded(password));
            }
            // User info is sent as `Authorization: Basic` (`request_target`):
            // a backend may echo that header.
            if let Ok((_, Some(basic))) = crate::rewrite::request_target(url.clone())
                && let Ok(value) = basic.to_str()
            {
                found.push(value.to_owned());
                found.extend(value.strip_prefix("Basic ").map(str::to_owned));
            }
            for (_, value) in url.query_pairs() {
                if value.len() >= SHORTEST_QUERY_SECRET {
                    found.push(value.into_owned());
                }
            }
        }
        found.retain(|s| !s.is_empty());
        // As a URL or form echoes them: percent-encoded (`/` as `%2F`), a
        // space as `+` or `%20`, hex digits in either case.
        let encoded: Vec<String> = found
            .iter()
            .flat_map(|s| {
                let form = url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                // A `+` of the secret itself is `%2B`: every `+` left is a space.
                let path = form.replace('+', "%20");
                [lower_hex(&form), lower_hex(&path), form, path]
            })
            .filter(|e| !found.contains(e))
            .collect();
        found.extend(encoded);
        // As a JSON echo writes them: `"` and `\` escaped, and `/` as `\/`
        // by PHP's json_encode and others.
        let escaped: Vec<String> = found
            .iter()
            .filter_map(|s| {
                let quoted = serde_json::to_string(s).ok()?;
                let json = quoted.strip_prefix('"')?.strip_suffix('"')?.to_owned();
                let slashed = json.replace('/', "\\/");
                Some([json, slashed])
            })
            .flatten()
            .filter(|e| !found.contains(e))
            .collect();
        found.extend(escaped);
        found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        found.dedup();
        Self {
            secrets: found.iter().map(|s| Secret::from(s.as_str())).collect(),
        }
    }

    /// `text` with every secret replaced by `***`.
    #[must_use]
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.expose()) {
                out = out.replace(s.expose(), "***");
            }
        }
        out
    }

    /// The start of a backend body for an error message, secrets masked.
    /// The whole body is masked before it is cut: masking shortens the text,
    /// so a window cut first could pull an unmasked part of a later copy
    /// into view. (Bodies are bounded by `max_response_size`, and this runs
    /// on the error path only.)
    #[must_use]
    pub fn excerpt(&self, body: &[u8]) -> String {
        excerpt(self.redact(&String::from_utf8_lossy(body)).as_bytes())
    }
}

/// A percent-encoded URL part, decoded, if that changes it.
fn decoded(part: &str) -> Option<String> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .ok()
        .filter(|d| d != part)
        .map(std::borrow::Cow::into_owned)
}

/// `encoded` with the hex digits of its `%XX` escapes in lower case.
fn lower_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut digits = 0;
    for c in encoded.chars() {
        if digits > 0 {
            out.push(c.to_ascii_lowercase());
            digits -= 1;
        } else {
            if c == '%' {
                digits = 2;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthType;
    use crate::error::BODY_EXCERPT;
    use crate::headers::auth_header;

    fn check(cfg: &EndpointConfig, body: &str, expected: &str) {
        let url = Url::parse(cfg.url.as_deref().unwrap_or("http://b/")).expect("url");
        let r = Redactor::new(cfg, auth_header(cfg).as_ref(), [&url]);
        assert_eq!(r.redact(body), expected, "{body}");
    }

    #[test]
    fn secrets_are_masked() {
        let mut bearer = EndpointConfig::with_url("http://b/");
        bearer.auth_type = Some(AuthType::Bearer);
        bearer.auth_token = Secret::from("supersecret123");
        check(
            &bearer,
            "authorization: Bearer supersecret123",
            "authorization: ***",
        );
        check(
            &bearer,
            r#"{"token":"supersecret123"}"#,
            r#"{"token":"***"}"#,
        );
        let mut basic = EndpointConfig::with_url("http://u:p%40ss-word@b/?code=KEY-9876&v=1");
        basic.auth_type = Some(AuthType::Basic);
        basic.auth_username = Some("user".into());
        basic.auth_password = Secret::from("hunter22");
        check(
            &basic,
            "Basic dXNlcjpodW50ZXIyMg== user:hunter22 hunter22",
            "*** *** ***",
        );
        check(&basic, "code=KEY-9876 v=1 p@ss-word", "code=*** v=1 ***");
        // The token without its scheme.
        check(&basic, "token=dXNlcjpodW50ZXIyMg==;", "token=***;");
        check(&EndpointConfig::with_url("http://b/"), "nothing", "nothing");
    }

    #[test]
    fn what_the_file_took_from_the_environment_is_masked() {
        let mut e = EndpointConfig::with_url("https://hooks.example/services/T0/B0/HOOKSECRET");
        e.headers.insert("X-Custom".into(), "CUSTOMSECRET".into());
        e.from_env.values = vec![
            Secret::from("T0/B0/HOOKSECRET"),
            Secret::from("CUSTOMSECRET"),
            Secret::from("443"),
        ];
        check(
            &e,
            "no route for /services/T0/B0/HOOKSECRET (x-custom: CUSTOMSECRET) on 443",
            "no route for /services/*** (x-custom: ***) on 443",
        );
        check(&e, "path=T0%2FB0%2FHOOKSECRET", "path=***");
    }

    #[test]
    fn a_secret_across_the_cut_is_masked_too() {
        let mut e = EndpointConfig::with_url("http://b/");
        e.auth_type = Some(AuthType::ApiKey);
        e.auth_token = Secret::from("k3y-k3y-k3y");
        let r = Redactor::new(&e, auth_header(&e).as_ref(), []);
        let body = format!("{}k3y-k3y-k3y and more", "x".repeat(BODY_EXCERPT - 4));
        let text = r.excerpt(body.as_bytes());
        assert!(!text.contains("k3y"), "{text}");
        assert!(text.ends_with('…'), "{text}");
    }

    #[test]
    fn a_second_copy_pulled_into_view_by_masking_the_first_is_masked_too() {
        let mut e = EndpointConfig::with_url("http://b/");
        e.auth_type = Some(AuthType::Bearer);
        let token = "t0ken-".repeat(7); // 42 bytes
        e.auth_token = Secret::from(token.as_str());
        let r = Redactor::new(&e, auth_header(&e).as_ref(), []);
        // The second copy starts just before the cut; masking the first
        // shortens the text by 39 bytes.
        let body = format!(
            "{token}{}{token} tail",
            "x".repeat(BODY_EXCERPT - token.len() - 10)
        );
        let text = r.excerpt(body.as_bytes());
        assert!(!text.contains("t0ken"), "{text}");
    }

    #[test]
    fn url_user_info_is_masked_as_the_basic_header_it_becomes() {
        // base64("carol:UrlPw-888")
        check(
            &EndpointConfig::with_url("http://carol:UrlPw-888@b/"),
            "authorization: Basic Y2Fyb2w6VXJsUHctODg4",
            "authorization: ***",
        );
    }

    #[test]
    fn secrets_are_masked_as_json_escapes_them() {
        let mut e = EndpointConfig::with_url("http://b/");
        e.auth_type = Some(AuthType::Bearer);
        e.auth_token = Secret::from("AbC/dEf+Tok\"en\\Quote-555");
        check(
            &e,
            r#"{"a":"Bearer AbC\/dEf+Tok\"en\\Quote-555","b":"AbC/dEf+Tok\"en\\Quote-555"}"#,
            r#"{"a":"***","b":"***"}"#,
        );
    }

    #[test]
    fn secrets_are_masked_as_a_url_encodes_them() {
        let mut e = EndpointConfig::with_url("http://b/");
        e.auth_type = Some(AuthType::Bearer);
        e.auth_token = Secret::from("tok-SeCrEt/\"x1");
        check(
            &e,
            "GET /echo?auth=Bearer+tok-SeCrEt%2F%22x1&t=tok-SeCrEt%2F%22x1",
            "GET /echo?auth=***&t=***",
        );
        // Path-style (`%20` for the space) and lower-case hex, as other
        // encoders write them.
        check(
            &e,
            "GET /echo/Bearer%20tok-SeCrEt%2f%22x1?t=tok-SeCrEt%2f%22x1",
            "GET /echo/***?t=***",
        );
    }

    #[test]
    fn static_credential_headers_are_secrets_too() {
        let mut e = EndpointConfig::with_url("http://b/");
        e.headers.insert("X-Api-Key".into(), "static-key-42".into());
        e.headers.insert("X-Team".into(), "payments".into());
        let r = Redactor::new(&e, None, []);
        assert_eq!(
            r.redact("x-api-key: static-key-42, x-team: payments"),
            "x-api-key: ***, x-team: payments"
        );
    }
}
