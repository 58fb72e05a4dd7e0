//! Choosing a target among the available ones.
//!
//! Every strategy works on the *candidates* (targets that are healthy, not
//! ejected and not behind an open breaker) so a sick target is skipped
//! without disturbing the others:
//! - round robin: each candidate in turn;
//! - weighted: smooth weighted round robin, as nginx does it, which spreads a
//!   heavy target's turns instead of sending them in a row;
//! - least connections: the less loaded (in-flight / weight) of two random
//!   candidates, the "power of two choices", which avoids the herd that
//!   always picking the global minimum causes;
//! - consistent hash: a ring of virtual nodes (100 per unit of weight) so a
//!   key keeps its target, and only the keys of a target that leaves move.
//!
//! The pieces are pure and take their randomness and state as arguments.

use std::collections::BTreeMap;

use openhqm_core::Envelope;

/// Virtual nodes per unit of weight on the hash ring.
pub const VNODES_PER_WEIGHT: u32 = 100;

/// Where the consistent-hash key comes from (`hash_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `metadata.<key>`: a metadata field (`endpoint`, `method` or an extra key).
    Metadata(String),
    /// `header:<Name>`: a client header, name compared case-insensitively.
    Header(String),
    /// `correlation_id`.
    CorrelationId,
}

impl HashKey {
    /// Parses a `hash_key` setting.
    ///
    /// # Errors
    /// What forms are accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(k) = s.strip_prefix("metadata.").filter(|k| !k.is_empty()) {
            Ok(Self::Metadata(k.to_owned()))
        } else if let Some(h) = s
            .strip_prefix("header:")
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            Ok(Self::Header(h.to_owned()))
        } else if s == "correlation_id" {
            Ok(Self::CorrelationId)
        } else {
            Err(format!(
                "`{s}` must be `metadata.<key>`, `header:<Name>` or `correlation_id`"
            ))
        }
    }

    /// The key's value in `env`, if present.
    #[must_use]
    pub fn extract(&self, env: &Envelope) -> Option<String> {
        match self {
            Self::Metadata(k) => match k.as_str() {
                "endpoint" => env.metadata.endpoint.clone(),
                "method" => env.metadata.method.clone(),
                _ => env.metadata.extra.get(k).map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            },
            Self::Header(h) => env
                .headers
                .as_ref()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(h))
                .map(|(_, v)| v.clone()),
            Self::CorrelationId => Some(env.correlation_id.to_string()),
        }
    }
}

/// A stable 64-bit hash: FNV-1a, then a splitmix64 finish for avalanche.
/// Stable across builds, unlike `std`'s hasher, so a ring built by another
/// version of OpenHQM puts keys in the same place.
#[must_use]
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A hash ring over targets identified by index.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// Builds the ring; `targets` are (identity, weight). The identity (the
    /// target URL) places the virtual nodes, so the order of targets in the
    /// configuration does not matter.
    #[must_use]
    pub fn new(targets: &[(&str, u32)]) -> Self {
        let mut points = Vec::new();
        for (idx, (id, weight)) in targets.iter().enumerate() {
            for v in 0..(*weight).max(1) * VNODES_PER_WEIGHT {
                points.push((hash64(format!("{id}#{v}").as_bytes()), idx));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The first candidate clockwise from the key's hash.
    #[must_use]
    pub fn pick(&self, key: &str, is_candidate: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash64(key.as_bytes());
        let start = self.points.partition_point(|(p, _)| *p < h);
        (0..self.points.len())
            .map(|i| self.points[(start + i) % self.points.len()].1)
            .find(|idx| is_candidate(*idx))
    }
}

/// Smooth weighted round robin over `candidates` (index, weight); `current`
/// holds each target's running weight between calls.
pub fn smooth_weighted(
    candidates: &[(usize, u32)],
    current: &mut BTreeMap<usize, i64>,
) -> Option<usize> {
    let total: i64 = candidates.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut best: Option<(usize, i64)> = None;
    for (idx, w) in candidates {
        let c = current.entry(*idx).or_insert(0);
        *c += i64::from(*w);
        if best.is_none_or(|(_, b)| *c > b) {
            best = Some((*idx, *c));
        }
    }
    let (chosen, _) = best?;
    if let Some(c) = current.get_mut(&chosen) {
        *c -= total;
    }
    Some(chosen)
}

/// Power of two choices over `candidates` (index, weight, in-flight), with
/// `rand(n)` drawing uniformly from `0..n`.
pub fn least_loaded_of_two(
    candidates: &[(usize, u32, u64)],
    mut rand: impl FnMut(usize) -> usize,
) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].0),
        n => {
            let a = rand(n);
            let b = (a + 1 + rand(n - 1)) % n;
            let load = |i: usize| {
                let (_, w, in_flight) = candidates[i];
                // Compare in_flight / weight without floats.
                (u128::from(in_flight), u128::from(w.max(1)))
            };
            let ((la, wa), (lb, wb)) = (load(a), load(b));
            Some(if la * wb <= lb * wa {
                candidates[a].0
            } else {
                candidates[b].0
            })
        }
    }
}

#[cfg(test)]
mod tests;
