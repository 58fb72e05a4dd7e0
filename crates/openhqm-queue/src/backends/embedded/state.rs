//! In-memory dispatch state of the embedded queue: what is waiting, delayed
//! or leased. Rebuilt from storage on open; storage stays the source of truth.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

pub(crate) const MAX_PRIORITY: u8 = 9;
const LEVELS: usize = MAX_PRIORITY as usize + 1;

/// The two clocks the state runs on. A delay is stored, so it falls due at
/// a wall-clock time that means the same after a restart; a lease lives only
/// in memory, so it runs on the monotonic clock, which a clock step (NTP,
/// a suspended VM) cannot move: a step forward must not expire every lease
/// at once and have all in-flight work run twice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub wall_ms: u64,
    pub mono_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    token: u64,
    deadline_ms: u64,
    priority: u8,
    attempt: u32,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    ready: [VecDeque<u64>; LEVELS],
    ready_len: usize,
    /// (due_ms, seq, priority)
    delayed: BinaryHeap<Reverse<(u64, u64, u8)>>,
    leased: HashMap<u64, Lease>,
    /// (deadline_ms, seq, token); entries whose lease moved on are skipped.
    lease_deadlines: BinaryHeap<Reverse<(u64, u64, u64)>>,
    next_token: u64,
    /// Attempt numbers raised by expired leases, not yet seen in storage.
    attempt_floor: HashMap<u64, u32>,
    pub dead_count: u64,
    pub closed: bool,
    /// Deferred messages not written (see [`super::held`]).
    pub held: super::held::Held,
}

impl State {
    pub fn depth(&self) -> u64 {
        (self.ready_len + self.delayed.len() + self.leased.len()) as u64
    }

    pub fn restore(&mut self, seq: u64, priority: u8, not_before_ms: u64, now_ms: u64) {
        if not_before_ms > now_ms {
            self.delayed.push(Reverse((not_before_ms, seq, priority)));
        } else {
            self.push_ready(seq, priority);
        }
    }

    pub fn push_ready(&mut self, seq: u64, priority: u8) {
        self.ready[usize::from(priority.min(MAX_PRIORITY))].push_back(seq);
        self.ready_len += 1;
    }

    pub fn push_delayed(&mut self, seq: u64, priority: u8, due_ms: u64) {
        self.delayed.push(Reverse((due_ms, seq, priority)));
    }

    /// Moves due delayed messages to ready and expired leases back to ready.
    /// Returns the messages whose lease expired, with their next attempt number.
    pub fn promote(&mut self, now: Now) -> Vec<(u64, u32)> {
        while let Some(Reverse((due, seq, priority))) = self.delayed.peek().copied() {
            if due > now.wall_ms {
                break;
            }
            self.delayed.pop();
            self.push_ready(seq, priority);
        }
        let mut expired = Vec::new();
        while let Some(Reverse((deadline, seq, token))) = self.lease_deadlines.peek().copied() {
            if deadline > now.mono_ms {
                break;
            }
            self.lease_deadlines.pop();
            let current = self.leased.get(&seq).copied();
            if let Some(lease) =
                current.filter(|l| l.token == token && l.deadline_ms <= now.mono_ms)
            {
                self.leased.remove(&seq);
                // An expired message goes to the front: it has waited longest.
                self.ready[usize::from(lease.priority)].push_front(seq);
                self.ready_len += 1;
                self.attempt_floor.insert(seq, lease.attempt + 1);
                expired.push((seq, lease.attempt + 1));
            }
        }
        expired
    }

    /// Leases up to `max` waiting messages, highest priority first, until
    /// `deadline_ms` on the monotonic clock.
    pub fn lease(&mut self, max: usize, deadline_ms: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for priority in (0..LEVELS).rev() {
            while out.len() < max {
                let Some(seq) = self.ready[priority].pop_front() else {
                    break;
                };
                self.ready_len -= 1;
                self.next_token += 1;
                let token = self.next_token;
                #[allow(clippy::cast_possible_truncation)]
                let lease = Lease {
                    token,
                    deadline_ms,
                    priority: priority as u8,
                    attempt: 1,
                };
                self.leased.insert(seq, lease);
                self.lease_deadlines
                    .push(Reverse((deadline_ms, seq, token)));
                out.push((seq, token));
            }
        }
        out
    }

    /// Ends a lease if `token` still holds it; returns the message's priority.
    pub fn release(&mut self, seq: u64, token: u64) -> Option<u8> {
        match self.leased.get(&seq) {
            Some(lease) if lease.token == token => {
                let priority = lease.priority;
                self.leased.remove(&seq);
                Some(priority)
            }
            _ => None,
        }
    }

    /// Ends a lease that never reached its consumer: the message goes back
    /// to the front, as the same attempt.
    pub fn give_back(&mut self, seq: u64, token: u64) {
        if let Some(priority) = self.release(seq, token) {
            self.ready[usize::from(priority)].push_front(seq);
            self.ready_len += 1;
        }
    }

    /// Pushes a lease's deadline out; `false` if `token` no longer holds it.
    pub fn extend(&mut self, seq: u64, token: u64, deadline_ms: u64) -> bool {
        match self.leased.get_mut(&seq) {
            Some(lease) if lease.token == token => {
                lease.deadline_ms = deadline_ms;
                self.lease_deadlines
                    .push(Reverse((deadline_ms, seq, token)));
                true
            }
            _ => false,
        }
    }

    /// Settles the attempt number of a fresh lease: the stored one, or higher
    /// if an earlier lease expired before storage caught up.
    pub fn note_attempt(&mut self, seq: u64, token: u64, stored: u32) -> u32 {
        let attempt = stored.max(self.attempt_floor.remove(&seq).unwrap_or(0));
        if let Some(lease) = self.leased.get_mut(&seq).filter(|l| l.token == token) {
            lease.attempt = attempt;
        }
        attempt
    }

    /// Every leased message: its lease token and the attempt it was
    /// delivered as.
    pub fn leased_attempts(&self) -> Vec<(u64, u64, u32)> {
        self.leased
            .iter()
            .map(|(seq, l)| (*seq, l.token, l.attempt))
            .collect()
    }

    /// Whether `token` still holds the lease on `seq`.
    pub fn holds(&self, seq: u64, token: u64) -> bool {
        self.leased.get(&seq).is_some_and(|l| l.token == token)
    }

    /// Drops a leased message that vanished from storage.
    pub fn forget(&mut self, seq: u64) {
        self.leased.remove(&seq);
        self.attempt_floor.remove(&seq);
    }

    /// How long until the next delayed message or lease falls due.
    pub fn next_due(&self, now: Now) -> Option<Duration> {
        let delayed = self
            .delayed
            .peek()
            .map(|Reverse((due, _, _))| due.saturating_sub(now.wall_ms));
        let lease = self
            .lease_deadlines
            .peek()
            .map(|Reverse((due, _, _))| due.saturating_sub(now.mono_ms));
        let ms = match (delayed, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ms.map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both clocks at `ms`.
    fn at(ms: u64) -> Now {
        Now {
            wall_ms: ms,
            mono_ms: ms,
        }
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut s = State::default();
        s.push_ready(1, 0);
        s.push_ready(2, 5);
        s.push_ready(3, 0);
        s.push_ready(4, 5);
        let order: Vec<u64> = s.lease(10, 100).into_iter().map(|(seq, _)| seq).collect();
        assert_eq!(order, vec![2, 4, 1, 3]);
        assert_eq!(s.depth(), 4);
    }

    #[test]
    fn stale_token_cannot_settle_or_extend_after_expiry() {
        let mut s = State::default();
        s.push_ready(1, 0);
        let (_, token) = s.lease(1, 100)[0];
        assert_eq!(s.note_attempt(1, token, 1), 1);
        assert_eq!(s.promote(at(100)), vec![(1, 2)]);
        let (_, token2) = s.lease(1, 200)[0];
        assert_eq!(
            s.note_attempt(1, token2, 1),
            2,
            "expiry counts as an attempt"
        );
        assert_ne!(token, token2);
        assert!(!s.extend(1, token, 500));
        assert_eq!(s.release(1, token), None);
        assert_eq!(s.release(1, token2), Some(0));
        assert_eq!(s.depth(), 0);
    }

    #[test]
    fn extended_lease_does_not_expire_at_old_deadline() {
        let mut s = State::default();
        s.push_ready(1, 0);
        let (_, token) = s.lease(1, 100)[0];
        assert!(s.extend(1, token, 300));
        assert!(s.promote(at(150)).is_empty());
        assert_eq!(s.promote(at(300)), vec![(1, 2)]);
    }

    #[test]
    fn a_wall_clock_step_expires_no_lease_but_moves_delays() {
        let mut s = State::default();
        s.push_ready(1, 0);
        s.push_delayed(2, 0, 1_000);
        let (_, token) = s.lease(1, 100)[0];
        let stepped = Now {
            wall_ms: 1_000_000,
            mono_ms: 50,
        };
        assert!(s.promote(stepped).is_empty(), "the lease still holds");
        assert!(s.extend(1, token, 200));
        assert_eq!(s.lease(10, 300).len(), 1, "the delayed message is due");
        assert_eq!(s.next_due(stepped), Some(Duration::from_millis(50)));
    }
}
