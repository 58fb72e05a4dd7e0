//! What the writer remembers between groups: the latest values of recently
//! written keys of *hot* keyspaces, whose jobs read what was just written
//! (status transitions, idempotency claims).
//!
//! Why: a fjall read takes the tree's version lock, which a flush or
//! compaction holds while it fsyncs the new version file. Measured under
//! load, that parked the writer thread (and every write of the process) for
//! 30-80 ms a few times a second. Answering from memory keeps the writer off
//! that lock for the reads that matter: a request's transitions follow its
//! creation within milliseconds.
//!
//! Absence is known too, without a read. Per hot keyspace the writer keeps a
//! *ceiling*: the largest key that may be stored but is not remembered (the
//! largest key stored when the keyspace became hot, raised by every key
//! forgotten since). A key above the ceiling that is not remembered was never
//! written. With time-ordered keys (UUIDv7 correlation ids) a new request's
//! id is always above it, so creating a record needs no read either.
//!
//! Memory is bounded: two generations, the older dropped whole (raising the
//! ceilings by its keys) once the younger holds half the budget.

use fjall::{Keyspace, Slice};
use rustc_hash::FxHashMap;

/// Writes by keyspace id and key; `None` is a deletion. Looked up by a
/// borrowed key, without allocating, and hashed with FxHash: the keys are
/// ours (ids and fixed-layout keys) and the maps live on the writer thread
/// for every job, where SipHash and a `to_vec` per lookup showed up in
/// profiles.
#[derive(Default)]
pub(crate) struct Writes(FxHashMap<u64, FxHashMap<Vec<u8>, Option<Slice>>>);

impl Writes {
    pub(crate) fn get(&self, ks: u64, key: &[u8]) -> Option<&Option<Slice>> {
        self.0.get(&ks)?.get(key)
    }

    pub(crate) fn insert(&mut self, ks: u64, key: &[u8], value: Option<Slice>) {
        let keys = self.0.entry(ks).or_default();
        match keys.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                keys.insert(key.to_vec(), value);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.values().map(FxHashMap::len).sum()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Bytes of keys and values remembered, both generations together.
const BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// What a remembered entry costs beyond its key and value bytes (map slot,
/// allocations), so that budgeting small entries stays honest.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Default)]
pub(crate) struct Recent {
    /// Ceiling per hot keyspace; `None` as a value means "nothing stored".
    ceilings: FxHashMap<u64, Option<Vec<u8>>>,
    young: Writes,
    young_bytes: usize,
    old: Writes,
    /// The last group's emptied overlay, kept for its allocated capacity:
    /// a new map per group grew (rehashing) with every group.
    emptied: Writes,
}

impl Recent {
    /// Starts remembering `ks`. Its ceiling is the largest key stored now.
    pub(crate) fn make_hot(&mut self, ks: &Keyspace) -> fjall::Result<()> {
        let last = ks.last_key_value().map(|kv| kv.key()).transpose()?;
        self.ceilings.insert(ks.id(), last.map(|k| k.to_vec()));
        Ok(())
    }

    fn is_hot(&self, ks: u64) -> bool {
        self.ceilings.contains_key(&ks)
    }

    /// `Some(value)` if the stored value of `key` is known without reading
    /// fjall (`Some(None)`: known absent); `None` if fjall must be asked.
    pub(crate) fn lookup(&self, ks: &Keyspace, key: &[u8]) -> Option<Option<Slice>> {
        let id = ks.id();
        let ceiling = self.ceilings.get(&id)?;
        if let Some(v) = self.young.get(id, key).or_else(|| self.old.get(id, key)) {
            return Some(v.clone());
        }
        match ceiling {
            Some(c) if key <= c.as_slice() => None,
            _ => Some(None),
        }
    }

    /// An empty overlay for the next group.
    pub(crate) fn overlay(&mut self) -> Writes {
        std::mem::take(&mut self.emptied)
    }

    /// Remembers a committed group's writes (those to hot keyspaces), and
    /// keeps the emptied overlay for the next group.
    pub(crate) fn remember(&mut self, mut writes: Writes) {
        for (ks, keys) in &mut writes.0 {
            if !self.is_hot(*ks) {
                keys.clear();
                continue;
            }
            let young = self.young.0.entry(*ks).or_default();
            for (key, value) in keys.drain() {
                self.young_bytes +=
                    key.len() + value.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD;
                young.insert(key, value);
            }
        }
        self.emptied = writes;
        if self.young_bytes > BUDGET_BYTES / 2 {
            self.age();
        }
    }

    /// Drops the old generation, raising the ceilings by its keys, and makes
    /// the young one old.
    fn age(&mut self) {
        let forgotten = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        self.young_bytes = 0;
        for (ks, keys) in forgotten.0 {
            let Some(ceiling) = self.ceilings.get_mut(&ks) else {
                continue;
            };
            if let Some(highest) = keys.into_keys().max()
                && ceiling.as_ref().is_none_or(|c| highest > *c)
            {
                *ceiling = Some(highest);
            }
        }
    }

    /// Forgets everything and stops vouching for absence: after a failed
    /// commit, memory may hold writes that never reached fjall.
    pub(crate) fn forget_all(&mut self) {
        self.young.clear();
        self.old.clear();
        self.young_bytes = 0;
        self.ceilings.clear();
    }

    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.young.len() + self.old.len()
    }
}
