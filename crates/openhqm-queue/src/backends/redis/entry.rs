//! Stream entries: how a message is laid out in fields, and reading replies.
//!
//! Fields of an entry:
//! - `payload`: the body, byte for byte (what external producers write);
//! - `attempt`: the attempt of its first delivery from this entry (absent = 1);
//! - `origin`: the message id, kept across retries and redrives (absent = the
//!   entry's own id, so an external producer's entry needs nothing else);
//! - `priority`: as published (kept, not acted on);
//! - `attr:<name>`: one per attribute;
//! - any other field: an outside producer's own (e.g. binary-mode CloudEvents
//!   `ce_id`, `content-type`), read as an attribute under its own name. An
//!   `attr:` field of the same name wins.
//!
//! Dead letters add `reason` and `dead_at` (epoch ms).

use std::collections::BTreeMap;

use bytes::Bytes;
use redis::Value;

use crate::{DeadLetter, Message, OutgoingMessage};

pub(crate) const PAYLOAD: &str = "payload";
const ATTEMPT: &str = "attempt";
const ORIGIN: &str = "origin";
const PRIORITY: &str = "priority";
const ATTR: &str = "attr:";
const REASON: &str = "reason";
const DEAD_AT: &str = "dead_at";
/// Fields of our own layout, never read as attributes.
const RESERVED: &[&str] = &[PAYLOAD, ATTEMPT, ORIGIN, PRIORITY, REASON, DEAD_AT];

/// The XADD field/value arguments for a new message.
pub(crate) fn publish_fields(message: &OutgoingMessage) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields = Vec::with_capacity(2 + message.attributes.len());
    fields.push((PAYLOAD.into(), message.body.to_vec()));
    if message.priority != 0 {
        fields.push((PRIORITY.into(), message.priority.to_string().into_bytes()));
    }
    for (k, v) in &message.attributes {
        fields.push((format!("{ATTR}{k}").into_bytes(), v.clone().into_bytes()));
    }
    fields
}

/// One stream entry as read: its id and raw fields.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    fn number(&self, name: &str) -> Option<u64> {
        std::str::from_utf8(self.field(name)?).ok()?.parse().ok()
    }

    /// The stable message id.
    pub fn origin(&self) -> String {
        self.field(ORIGIN)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| self.id.clone())
    }

    /// The attempt this entry started at.
    pub fn base_attempt(&self) -> u32 {
        self.number(ATTEMPT)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .max(1)
    }

    /// The message, if the entry has a body; `deliveries` is the entry's
    /// delivery count (1 on its first delivery).
    pub fn message(&self, deliveries: u64) -> Option<Message> {
        let body = self.field(PAYLOAD)?;
        let extra = u32::try_from(deliveries.saturating_sub(1)).unwrap_or(u32::MAX);
        Some(Message {
            id: self.origin(),
            body: Bytes::copy_from_slice(body),
            attributes: self.attributes(),
            attempt: self.base_attempt().saturating_add(extra),
        })
    }

    fn attributes(&self) -> BTreeMap<String, String> {
        let value = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let mut out: BTreeMap<String, String> = self
            .fields
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()) && !k.starts_with(ATTR))
            .map(|(k, v)| (k.clone(), value(v)))
            .collect();
        for (k, v) in &self.fields {
            if let Some(name) = k.strip_prefix(ATTR) {
                out.insert(name.to_owned(), value(v));
            }
        }
        out
    }

    /// Reads a dead-letter stream entry. A malformed entry's body is empty.
    pub fn dead_letter(&self) -> DeadLetter {
        let reason = self
            .field(REASON)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        DeadLetter {
            message: Message {
                id: self.origin(),
                body: Bytes::copy_from_slice(self.field(PAYLOAD).unwrap_or_default()),
                attributes: self.attributes(),
                attempt: self.base_attempt(),
            },
            reason,
            // One written by others (the earlier implementation) carries no
            // time of its own: its entry id's is when it was added.
            dead_lettered_at_ms: self
                .number(DEAD_AT)
                .or_else(|| self.id.split('-').next()?.parse().ok())
                .unwrap_or(0),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        other => text(other).unwrap_or_default().into_bytes(),
    }
}

/// `[id, [field, value, ...]]`; `None` for anything else (e.g. a deleted entry).
pub(crate) fn parse_entry(v: &Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let id = text(parts.first()?)?;
    let Value::Array(flat) = parts.get(1)? else {
        return None;
    };
    let fields = flat
        .chunks_exact(2)
        .filter_map(|kv| Some((text(&kv[0])?, bytes(&kv[1]))))
        .collect();
    Some(Entry { id, fields })
}

/// A list of entries, as from XRANGE.
pub(crate) fn parse_entries(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(items) => items.iter().filter_map(parse_entry).collect(),
        _ => Vec::new(),
    }
}

/// XREADGROUP's reply for one stream: `[[stream, [entries]]]`, or nil on timeout.
pub(crate) fn parse_read(v: &Value) -> Vec<Entry> {
    let Value::Array(streams) = v else {
        return Vec::new();
    };
    streams
        .iter()
        .filter_map(|s| match s {
            Value::Array(pair) => pair.get(1).map(parse_entries),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The prepare script's reply.
pub(crate) struct Prepared {
    /// Entries taken over, with their delivery counts.
    pub claimed: Vec<(Entry, u64)>,
    /// Ms until the next delayed retry is due.
    pub next_due_ms: Option<u64>,
    /// Where the next takeover scan starts.
    pub cursor: String,
}

pub(crate) fn parse_prepare(v: &Value) -> Prepared {
    let Value::Array(parts) = v else {
        return Prepared {
            claimed: Vec::new(),
            next_due_ms: None,
            cursor: "0-0".into(),
        };
    };
    let claimed = match parts.first() {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| {
                let Value::Array(t) = item else { return None };
                let entry = parse_entry(&Value::Array(t.get(..2)?.to_vec()))?;
                let count = int(t.get(2)?).and_then(|n| u64::try_from(n).ok())?;
                Some((entry, count))
            })
            .collect(),
        _ => Vec::new(),
    };
    Prepared {
        claimed,
        next_due_ms: parts
            .get(1)
            .and_then(int)
            .and_then(|n| u64::try_from(n).ok()),
        cursor: parts.get(2).and_then(text).unwrap_or_else(|| "0-0".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Entry {
        Entry {
            id: id.into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn a_dead_letter_without_its_time_is_dated_by_its_entry_id() {
        let ours = entry(
            "1700000000000-0",
            &[(PAYLOAD, "{}"), (DEAD_AT, "1700000005000")],
        );
        assert_eq!(ours.dead_letter().dead_lettered_at_ms, 1_700_000_005_000);
        let legacy = entry("1700000000000-3", &[(PAYLOAD, "{}")]);
        assert_eq!(legacy.dead_letter().dead_lettered_at_ms, 1_700_000_000_000);
    }
}
