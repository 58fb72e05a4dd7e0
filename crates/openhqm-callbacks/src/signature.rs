//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! A callback carries three headers:
//! - `webhook-id`: the message id, the same on every retry and duplicate;
//! - `webhook-timestamp`: seconds since the epoch when this attempt was sent;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!
//! The key is the base64 text after `whsec_` in the configured secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// Prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why a configured secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// It does not start with `whsec_`.
    #[error("must start with `whsec_` followed by the base64-encoded key")]
    Prefix,
    /// The rest is not base64.
    #[error("the part after `whsec_` is not valid base64")]
    Base64,
    /// The key is too short to be worth signing with.
    #[error("the key is {0} bytes; at least 24 are required (32 recommended)")]
    TooShort(usize),
}

/// The HMAC key; never printed.
#[derive(Clone)]
pub struct SigningKey(hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Parses a `whsec_<base64>` secret.
    ///
    /// # Errors
    /// [`SecretError`] saying what is wrong (never the secret itself).
    pub fn from_secret(secret: &str) -> Result<Self, SecretError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if key.len() < 24 {
            return Err(SecretError::TooShort(key.len()));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &key)))
    }

    fn signed_content(id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
        let mut content = Vec::with_capacity(id.len() + body.len() + 24);
        content.extend_from_slice(id.as_bytes());
        content.push(b'.');
        content.extend_from_slice(timestamp.to_string().as_bytes());
        content.push(b'.');
        content.extend_from_slice(body);
        content
    }

    /// The `webhook-signature` value for one attempt.
    #[must_use]
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let tag = hmac::sign(&self.0, &Self::signed_content(id, timestamp, body));
        format!("v1,{}", STANDARD.encode(tag.as_ref()))
    }

    /// Whether any `v1,` signature in a (space-separated) `webhook-signature`
    /// header matches, compared in constant time. What a receiver does; it
    /// should also refuse timestamps far from its clock.
    #[must_use]
    pub fn verify(&self, id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
        let content = Self::signed_content(id, timestamp, body);
        header.split(' ').any(|sig| {
            sig.strip_prefix("v1,")
                .and_then(|b64| STANDARD.decode(b64).ok())
                .is_some_and(|tag| hmac::verify(&self.0, &content, &tag).is_ok())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_like_the_reference_implementations() {
        let key = SigningKey::from_secret(SECRET).expect("secret");
        assert_eq!(key.sign(ID, TS, BODY), SIGNATURE);
        assert!(key.verify(ID, TS, BODY, SIGNATURE));
        assert!(key.verify(ID, TS, BODY, &format!("v1,bm9wZQ== {SIGNATURE}")));
        assert!(!key.verify(ID, TS + 1, BODY, SIGNATURE));
        assert!(!key.verify(ID, TS, b"{}", SIGNATURE));
        assert!(!key.verify("msg_other", TS, BODY, SIGNATURE));
        assert!(!key.verify(
            ID,
            TS,
            BODY,
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
    }

    #[test]
    fn bad_secrets_say_why() {
        assert_eq!(
            SigningKey::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect_err("prefix"),
            SecretError::Prefix
        );
        assert_eq!(
            SigningKey::from_secret("whsec_not base64!").expect_err("b64"),
            SecretError::Base64
        );
        assert_eq!(
            SigningKey::from_secret("whsec_c2hvcnQ=").expect_err("short"),
            SecretError::TooShort(5)
        );
        assert_eq!(
            format!("{:?}", SigningKey::from_secret(SECRET).expect("secret")),
            "SigningKey(***)"
        );
    }
}
