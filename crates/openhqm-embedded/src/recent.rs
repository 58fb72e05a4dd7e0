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

use std::collections::HashMap;

use fjall::{Keyspace, Slice};

/// A key in some keyspace: `(keyspace id, key bytes)`.
pub(crate) type Key = (u64, Vec<u8>);

/// Bytes of keys and values remembered, both generations together.
const BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// What a remembered entry costs beyond its key and value bytes (map slot,
/// allocations), so that budgeting small entries stays honest.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Default)]
pub(crate) struct Recent {
    /// Ceiling per hot keyspace; `None` as a value means "nothing stored".
    ceilings: HashMap<u64, Option<Vec<u8>>>,
    young: HashMap<Key, Option<Slice>>,
    young_bytes: usize,
    old: HashMap<Key, Option<Slice>>,
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
        let k = (id, key.to_vec());
        if let Some(v) = self.young.get(&k).or_else(|| self.old.get(&k)) {
            return Some(v.clone());
        }
        match ceiling {
            Some(c) if key <= c.as_slice() => None,
            _ => Some(None),
        }
    }

    /// Remembers a committed group's writes (those to hot keyspaces).
    pub(crate) fn remember(&mut self, writes: HashMap<Key, Option<Slice>>) {
        for (key, value) in writes {
            if !self.is_hot(key.0) {
                continue;
            }
            self.young_bytes +=
                key.1.len() + value.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD;
            self.young.insert(key, value);
        }
        if self.young_bytes > BUDGET_BYTES / 2 {
            self.age();
        }
    }

    /// Drops the old generation, raising the ceilings by its keys, and makes
    /// the young one old.
    fn age(&mut self) {
        let forgotten = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
        self.young_bytes = 0;
        for ((ks, key), _) in forgotten {
            if let Some(ceiling) = self.ceilings.get_mut(&ks)
                && ceiling.as_ref().is_none_or(|c| key > *c)
            {
                *ceiling = Some(key);
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
