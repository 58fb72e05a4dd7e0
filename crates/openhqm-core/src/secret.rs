//! Secrets: read like strings, never printed.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that prints as `***` (Debug, Display, Serialize) once set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// `text` as an error may quote it when it is not a well-formed URL (a
/// misspelt scheme, a pasted `user:pw@host/x?key=K`): what may be user info
/// (up to the last `@`) and a query masked.
#[must_use]
pub fn without_credentials(text: &str) -> String {
    let text = match text.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => text.to_owned(),
    };
    match text.split_once('?') {
        Some((before, _)) => format!("{before}?***"),
        None => text,
    }
}

impl Secret {
    /// The secret value, for the one place that must use it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether a value is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn masked(&self) -> &'static str {
        if self.0.is_empty() { "" } else { "***" }
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.masked())
    }
}

/// A secret is text. YAML reads an unquoted `98765432` or `1.5` as a number,
/// so a number is taken as its text: the alternative, serde's "invalid type:
/// integer `98765432`, expected a string", would print the secret. (A number
/// is read back as YAML parsed it: `0123` becomes `123`, so such secrets
/// should be quoted.) Booleans are taken as text for the same reason.
///
/// `null` is refused without naming a value; the config loader treats a
/// `null` key as not set, so the key's default applies (empty for
/// credentials, `redis://localhost:6379` for a Redis URL).
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    // A number or boolean is refused without being quoted (serde's own
    // error would print it), and not taken as its text either: YAML may
    // have changed it (`0123` reads as 123, `1.10` as 1.1), and a password
    // that is silently different fails far from the config.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(unquoted())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(unquoted())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(unquoted())
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(unquoted())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(unquoted())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(unquoted())
    }

    // The rest (bytes, a sequence, a mapping) keeps serde's errors, which
    // name the kind of value, never its content.
}

fn unquoted<E: de::Error>() -> E {
    E::custom(
        "a secret must be text: quote it (it was read as a number or a boolean, which may have changed it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: serde_json::Value, expected: Result<&str, &str>) {
        let got = serde_json::from_value::<Secret>(input.clone());
        match (got, expected) {
            (Ok(s), Ok(want)) => assert_eq!(s.expose(), want, "{input}"),
            (Err(e), Err(want)) => assert_eq!(e.to_string(), want, "{input}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn a_secret_is_text_and_errors_never_quote_it() {
        check(serde_json::json!("hunter2"), Ok("hunter2"));
        check(serde_json::json!("0123"), Ok("0123"));
        let unquoted = "a secret must be text: quote it (it was read as a number or a boolean, which may have changed it)";
        for number in [
            serde_json::json!(98_765_432),
            serde_json::json!(-12),
            serde_json::json!(1.5),
            serde_json::json!(true),
        ] {
            check(number, Err(unquoted));
        }
        check(
            serde_json::json!(null),
            Err("invalid type: null, expected a string"),
        );
        check(
            serde_json::json!([98_765_432]),
            Err("invalid type: sequence, expected a string"),
        );
        check(
            serde_json::json!({"k": "hunter2"}),
            Err("invalid type: map, expected a string"),
        );
    }

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).expect("json"), "\"***\"");
        assert_eq!(Secret::default().to_string(), "");
    }
}
