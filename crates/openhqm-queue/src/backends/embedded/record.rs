//! On-disk layout of queue entries.
//!
//! Keys are `u64` sequence numbers, big-endian so they sort in publish order.
//! A message value is `[version=1][attempt u32][not_before_ms u64][priority u8]
//! [attributes_len u32][attributes JSON][body]`; a dead letter prefixes it with
//! `[version=1][dead_lettered_at_ms u64][reason_len u32][reason]`.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::{DeadLetter, Message, OutgoingMessage};

const VERSION: u8 = 1;
const MAX_PRIORITY: u8 = 9;

/// A corrupt or unknown record.
#[derive(Debug, thiserror::Error)]
#[error("corrupt queue record: {0}")]
pub(crate) struct CorruptRecord(&'static str);

pub(crate) fn encode_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn decode_key(key: &[u8]) -> Result<u64, CorruptRecord> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| CorruptRecord("key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredRecord {
    pub attempt: u32,
    pub not_before_ms: u64,
    pub priority: u8,
    pub attributes: BTreeMap<String, String>,
    pub body: Bytes,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptRecord> {
        if self.0.len() < n {
            return Err(CorruptRecord("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CorruptRecord> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, CorruptRecord> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| CorruptRecord("u32"))?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, CorruptRecord> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| CorruptRecord("u64"))?;
        Ok(u64::from_be_bytes(b))
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], CorruptRecord> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn version(&mut self) -> Result<(), CorruptRecord> {
        if self.u8()? == VERSION {
            Ok(())
        } else {
            Err(CorruptRecord("unknown record version"))
        }
    }
}

fn put_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl StoredRecord {
    pub fn new(message: OutgoingMessage) -> Self {
        Self {
            attempt: 1,
            not_before_ms: 0,
            priority: message.priority.min(MAX_PRIORITY),
            attributes: message.attributes,
            body: message.body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let attrs = if self.attributes.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(&self.attributes).unwrap_or_default()
        };
        let mut out = Vec::with_capacity(22 + attrs.len() + self.body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.attempt.to_be_bytes());
        out.extend_from_slice(&self.not_before_ms.to_be_bytes());
        out.push(self.priority);
        put_len_prefixed(&mut out, &attrs);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(raw: &[u8]) -> Result<Self, CorruptRecord> {
        let mut r = Reader(raw);
        r.version()?;
        let attempt = r.u32()?;
        let not_before_ms = r.u64()?;
        let priority = r.u8()?.min(MAX_PRIORITY);
        let attrs = r.len_prefixed()?;
        let attributes = if attrs.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_slice(attrs).map_err(|_| CorruptRecord("attributes"))?
        };
        Ok(Self {
            attempt,
            not_before_ms,
            priority,
            attributes,
            body: Bytes::copy_from_slice(r.0),
        })
    }

    pub fn to_message(&self, seq: u64) -> Message {
        Message {
            id: seq.to_string(),
            body: self.body.clone(),
            attributes: self.attributes.clone(),
            attempt: self.attempt,
        }
    }
}

/// A dead-lettered message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeadRecord {
    pub dead_lettered_at_ms: u64,
    pub reason: String,
    pub record: StoredRecord,
}

impl DeadRecord {
    pub fn encode(&self) -> Vec<u8> {
        let inner = self.record.encode();
        let mut out = Vec::with_capacity(13 + self.reason.len() + inner.len());
        out.push(VERSION);
        out.extend_from_slice(&self.dead_lettered_at_ms.to_be_bytes());
        put_len_prefixed(&mut out, self.reason.as_bytes());
        out.extend_from_slice(&inner);
        out
    }

    pub fn decode(raw: &[u8]) -> Result<Self, CorruptRecord> {
        let mut r = Reader(raw);
        r.version()?;
        let dead_lettered_at_ms = r.u64()?;
        let reason = String::from_utf8_lossy(r.len_prefixed()?).into_owned();
        Ok(Self {
            dead_lettered_at_ms,
            reason,
            record: StoredRecord::decode(r.0)?,
        })
    }

    /// When `raw` was dead-lettered, read from its header alone.
    pub fn dead_lettered_at(raw: &[u8]) -> Result<u64, CorruptRecord> {
        let mut r = Reader(raw);
        r.version()?;
        r.u64()
    }

    pub fn into_dead_letter(self, seq: u64) -> DeadLetter {
        DeadLetter {
            message: self.record.to_message(seq),
            reason: self.reason,
            dead_lettered_at_ms: self.dead_lettered_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut attributes = BTreeMap::new();
        attributes.insert("k".to_owned(), "v".to_owned());
        let rec = StoredRecord {
            attempt: 3,
            not_before_ms: 1234,
            priority: 7,
            attributes,
            body: Bytes::from_static(b"{\"x\":1}"),
        };
        assert_eq!(StoredRecord::decode(&rec.encode()).ok(), Some(rec.clone()));
        let dead = DeadRecord {
            dead_lettered_at_ms: 99,
            reason: "bad".into(),
            record: rec,
        };
        assert_eq!(DeadRecord::dead_lettered_at(&dead.encode()).ok(), Some(99));
        assert_eq!(DeadRecord::decode(&dead.encode()).ok(), Some(dead));
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        for raw in [
            &b""[..],
            &[2u8][..],
            &[1u8, 0, 0][..],
            &[1u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9][..],
        ] {
            assert!(StoredRecord::decode(raw).is_err(), "{raw:?}");
        }
        assert!(decode_key(b"123").is_err());
    }
}
