//! Stored messages kept in memory while they are stored, so that handing
//! one out reads no storage.
//!
//! Why: a fjall read takes the tree's version lock, which a flush or
//! compaction holds while it fsyncs the new version file. `receive` runs on
//! a runtime thread, so under load such a read parked that thread (and every
//! connection it serves) for 10-50 ms a few times a second, measured with
//! `perf sched`. The bodies are in memory at publish anyway.
//!
//! What the cache holds is what this process would deliver next: settles
//! update it, while writes that only matter after a crash (the attempt
//! stored for an interrupted lease) do not. Memory is bounded by bytes; a
//! message published past the budget, or recovered past it on open, is read
//! from storage when it is taken, as before.

use std::collections::HashMap;

use super::record::StoredRecord;

/// What a kept record costs beyond its body and attributes (map slot,
/// allocations), so that budgeting small messages stays honest.
const ENTRY_OVERHEAD: usize = 96;

pub(crate) struct RecordCache {
    records: HashMap<u64, StoredRecord>,
    bytes: usize,
    budget: usize,
}

fn cost(rec: &StoredRecord) -> usize {
    let attributes: usize = rec.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    rec.body.len() + attributes + ENTRY_OVERHEAD
}

impl RecordCache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            records: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    /// Keeps `rec` as message `seq`'s next delivery, replacing what was kept.
    /// A record that does not fit the budget is not kept, and an older copy
    /// of it is dropped, so that storage is read instead of a stale copy.
    pub(crate) fn keep(&mut self, seq: u64, rec: StoredRecord) {
        self.forget(seq);
        let cost = cost(&rec);
        if self.bytes + cost <= self.budget {
            self.bytes += cost;
            self.records.insert(seq, rec);
        }
    }

    /// A copy of the kept record (cheap: the body is shared).
    pub(crate) fn get(&self, seq: u64) -> Option<StoredRecord> {
        self.records.get(&seq).cloned()
    }

    /// Drops message `seq`: it left the queue, or what is kept is outdated.
    pub(crate) fn forget(&mut self, seq: u64) {
        if let Some(old) = self.records.remove(&seq) {
            self.bytes -= cost(&old);
        }
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::*;

    fn rec(body: &'static [u8], attempt: u32) -> StoredRecord {
        StoredRecord {
            attempt,
            not_before_ms: 0,
            priority: 0,
            attributes: BTreeMap::new(),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn keeps_within_budget_and_accounts_every_change() {
        let mut cache = RecordCache::new(2 * (ENTRY_OVERHEAD + 4));
        cache.keep(1, rec(b"aaaa", 1));
        cache.keep(2, rec(b"bbbb", 1));
        cache.keep(3, rec(b"cccc", 1));
        assert!(cache.get(3).is_none(), "over budget: read from storage");
        assert_eq!(
            cache.get(1).map(|r| r.body),
            Some(Bytes::from_static(b"aaaa"))
        );

        cache.keep(1, rec(b"aaaa", 2));
        assert_eq!(cache.get(1).map(|r| r.attempt), Some(2), "replaced");
        assert_eq!(cache.bytes(), 2 * (ENTRY_OVERHEAD + 4));

        cache.forget(2);
        cache.keep(3, rec(b"cccc", 1));
        assert!(cache.get(3).is_some(), "room again once one left");
    }

    #[test]
    fn a_replacement_too_large_drops_the_stale_copy() {
        let mut cache = RecordCache::new(ENTRY_OVERHEAD + 4);
        cache.keep(1, rec(b"aaaa", 1));
        cache.keep(1, rec(b"a much larger body", 2));
        assert!(cache.get(1).is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
