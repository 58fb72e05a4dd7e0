//! Correlation ids.
//!
//! Ids are UUIDv7: still "a UUID" for clients of the earlier implementation, but
//! time-ordered, so storage engines append instead of scattering writes across a
//! B-tree, and expiry can scan from the oldest key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The id a client uses to follow one request through the system.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(Uuid);

impl CorrelationId {
    /// A new, time-ordered id.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The same id for the same `name` every time: a UUIDv5 in OpenHQM's own
    /// namespace ([`CorrelationId::NAMESPACE`]). Used for messages that
    /// arrive without one (see [`crate::foreign`]), so a redelivery maps to
    /// the request it already is.
    #[must_use]
    pub fn derived(name: &[u8]) -> Self {
        Self(Uuid::new_v5(&Self::NAMESPACE, name))
    }

    /// The id a producer's own `correlation_id` text stands for: the UUID it
    /// is, or for any other text (`order-17`: the earlier implementation let
    /// producers choose) the same derived id every time, [`CorrelationId::derived`]
    /// of `id:<text>`. The status and response resources map their path the
    /// same way, so such a request is followed by the producer's own id.
    #[must_use]
    pub fn from_text(text: &str) -> Self {
        text.parse()
            .unwrap_or_else(|_| Self::derived(format!("id:{text}").as_bytes()))
    }

    /// Deserializes as [`CorrelationId::from_text`]: for fields producers write.
    ///
    /// # Errors
    /// When the value is not a string.
    pub fn deserialize_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::from_text(&text))
    }

    /// The UUIDv5 namespace of [`CorrelationId::derived`].
    pub const NAMESPACE: Uuid = Uuid::from_u128(0x3f83_c66c_d918_40d5_8453_fe74_9c4c_37f1);

    /// The 16 bytes of the id, in an order that sorts by creation time for v7 ids.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its 16 bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// Whether the id is a UUIDv7, whose bytes sort by its creation time.
    #[must_use]
    pub fn is_time_ordered(&self) -> bool {
        self.0.get_version_num() == 7
    }

    /// Milliseconds since the Unix epoch encoded in the id, for ids that
    /// carry a time (v1, v6, v7).
    #[must_use]
    pub fn timestamp_ms(&self) -> Option<u64> {
        let ts = self.0.get_timestamp()?;
        let (secs, nanos) = ts.to_unix();
        Some(secs * 1000 + u64::from(nanos) / 1_000_000)
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CorrelationId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_and_round_trip() {
        let a = CorrelationId::new();
        let b = CorrelationId::new();
        assert!(a < b, "v7 ids must be monotonic within a process");
        assert_eq!(a.to_string().parse::<CorrelationId>().ok(), Some(a));
        assert_eq!(CorrelationId::from_bytes(*a.as_bytes()), a);
        assert!(a.timestamp_ms().is_some_and(|ms| ms > 1_700_000_000_000));
    }

    #[test]
    fn a_producers_own_id_maps_to_the_same_uuid_every_time() {
        let a = CorrelationId::new();
        assert_eq!(
            CorrelationId::from_text(&a.to_string()),
            a,
            "a UUID is itself"
        );
        let ext = CorrelationId::from_text("order-17");
        assert_eq!(ext, CorrelationId::from_text("order-17"));
        assert_ne!(ext, CorrelationId::from_text("order-18"));
        assert_eq!(ext, CorrelationId::derived(b"id:order-17"));
    }
}
