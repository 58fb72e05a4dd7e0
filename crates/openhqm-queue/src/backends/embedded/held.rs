//! Deferred messages held in memory instead of written.
//!
//! A [`Durability::Deferred`](crate::Durability) message belongs to a caller
//! that waits for its answer, and the answer is its acknowledgement. Most are
//! answered within milliseconds, so writing each one, and its lease's attempt
//! and its deletion, would be three writes for nothing: the message is held
//! here, and only a [`sync`](crate::QueueBackend::sync) (before a `202`, or
//! at shutdown) writes it. A crash loses what is held, as a reverse proxy
//! loses the calls in flight; the callers got no answer, and replaying their
//! calls after a restart would only run them twice when they send them again.
//!
//! A sync marks the entries it writes, and they stay here until its commit:
//! until then they are read from here, not from storage that does not hold
//! them yet, and settling a marked one deletes its key (in a later group
//! than the write, so in order).

use std::collections::HashMap;

use super::record::StoredRecord;

/// Most bytes of bodies held at once; past it, deferred messages are
/// written like any other, so waiting callers cannot grow memory without
/// bound (`server.max_pending` counts requests, not bytes).
pub(crate) const BUDGET_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug)]
struct Entry {
    record: StoredRecord,
    /// A sync wrote it; its commit takes the entry out.
    written: bool,
}

/// What settling a message found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// It was never written: nothing to delete.
    Unwritten,
    /// Storage holds it (or will, once a sync commits): delete the key.
    Stored,
}

#[derive(Debug, Default)]
pub(crate) struct Held {
    entries: HashMap<u64, Entry>,
    bytes: usize,
}

fn size(record: &StoredRecord) -> usize {
    record.body.len()
        + record
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

impl Held {
    /// Holds `record` as message `seq`, or gives it back if the budget is spent.
    pub fn hold(&mut self, seq: u64, record: StoredRecord) -> Result<(), StoredRecord> {
        let size = size(&record);
        if self.bytes + size > BUDGET_BYTES {
            return Err(record);
        }
        self.bytes += size;
        self.entries.insert(
            seq,
            Entry {
                record,
                written: false,
            },
        );
        Ok(())
    }

    /// The held message `seq`, if it is held.
    pub fn get(&self, seq: u64) -> Option<&StoredRecord> {
        self.entries.get(&seq).map(|e| &e.record)
    }

    /// The message was settled: it is held no more.
    pub fn settle(&mut self, seq: u64) -> Settled {
        match self.remove(seq) {
            Some(entry) if !entry.written => Settled::Unwritten,
            _ => Settled::Stored,
        }
    }

    /// Marks every unwritten entry written and returns them, for a sync to write.
    pub fn mark_for_sync(&mut self) -> Vec<(u64, StoredRecord)> {
        self.entries
            .iter_mut()
            .filter(|(_, e)| !e.written)
            .map(|(seq, e)| {
                e.written = true;
                (*seq, e.record.clone())
            })
            .collect()
    }

    /// The sync that wrote `seqs` committed: storage has them now.
    pub fn committed(&mut self, seqs: &[u64]) {
        for seq in seqs {
            if self.entries.get(seq).is_some_and(|e| e.written) {
                self.remove(*seq);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        self.bytes -= size(&entry.record);
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(body: usize) -> StoredRecord {
        StoredRecord {
            attempt: 1,
            not_before_ms: 0,
            priority: 0,
            attributes: Default::default(),
            body: Bytes::from(vec![b'x'; body]),
        }
    }

    #[test]
    fn an_unwritten_message_needs_no_delete_and_a_written_one_does() {
        let mut held = Held::default();
        held.hold(1, record(10)).expect("fits");
        held.hold(2, record(10)).expect("fits");
        assert_eq!(held.settle(1), Settled::Unwritten);
        let written = held.mark_for_sync();
        assert_eq!(written.len(), 1);
        assert!(held.mark_for_sync().is_empty(), "written once");
        // Settled between the sync's write and its commit: delete it.
        assert_eq!(held.settle(2), Settled::Stored);
        assert_eq!(held.len(), 0);
        assert_eq!(held.bytes, 0);
    }

    #[test]
    fn written_entries_stay_readable_until_their_commit() {
        let mut held = Held::default();
        held.hold(1, record(10)).expect("fits");
        let seqs: Vec<u64> = held.mark_for_sync().into_iter().map(|(s, _)| s).collect();
        assert!(held.get(1).is_some(), "storage may not have it yet");
        held.hold(2, record(10)).expect("fits");
        held.committed(&seqs);
        assert!(held.get(1).is_none());
        assert!(held.get(2).is_some(), "held after the sync: not written");
    }

    #[test]
    fn past_the_budget_a_message_is_given_back() {
        let mut held = Held::default();
        held.hold(1, record(BUDGET_BYTES - 5)).expect("fits");
        let back = held.hold(2, record(10)).expect_err("over budget");
        assert_eq!(back.body.len(), 10);
        assert_eq!(held.settle(1), Settled::Unwritten);
        held.hold(2, back).expect("fits again");
    }
}
