//! Domain types shared by every OpenHQM crate.
//!
//! This crate does no I/O and needs no async runtime: it holds the vocabulary
//! (correlation ids, the versioned queue envelope, request status and its legal
//! transitions, result records) and the pure decisions (retry backoff, how an
//! attempt's outcome is settled). Everything here is deterministic given its
//! inputs, so it is tested with plain tables.

pub mod body;
pub mod callback;
pub mod cause;
pub mod envelope;
pub mod foreign;
pub mod hop_by_hop;
pub mod id;
pub mod outcome;
pub mod path;
pub mod record;
pub mod retry_after;
pub mod secret;
pub mod status;
pub mod time;

pub use callback::{CallbackPolicy, CallbackUrlError};
pub use envelope::{Envelope, Metadata, SubmitRequest};
pub use foreign::{DecodeError, Decoded, Decoder, Incoming, MessageFormat, Shape};
pub use id::CorrelationId;
pub use outcome::{Backoff, Decision, Failure, FailureKind, LastResponse, decide};
pub use record::{Hold, RawHeaders, RequestRecord, ResultData};
pub use secret::Secret;
pub use status::RequestStatus;

/// An optional number given as a number (YAML) or as text (an environment
/// variable or `--set`, which carry no type when the default is unset).
///
/// # Errors
/// When the value is neither `null`, a number, nor text that parses as one.
pub fn number_or_text<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + std::str::FromStr,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Given<T> {
        Number(T),
        Text(String),
        // Anything else (`-1` for an unsigned key, `true`): read again as
        // `T` below for serde's own words, not "did not match any variant".
        Other(serde_json::Value),
    }
    match <Option<Given<T>> as serde::Deserialize>::deserialize(d)? {
        None => Ok(None),
        Some(Given::Number(n)) => Ok(Some(n)),
        Some(Given::Other(v)) => serde_json::from_value(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(Given::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("expected a number, got `{t}`"))),
    }
}

/// Deserializes an explicit `null` as the type's default, as an absent
/// field is: producers and config files written for the earlier
/// implementation send `null` for "not set".
///
/// # Errors
/// When the value is neither `null` nor a valid `T`.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Option::unwrap_or_default)
}
