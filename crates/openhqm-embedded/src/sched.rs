//! How the writer thread asks to be scheduled (Linux): `SCHED_BATCH` when a
//! job wakes it, a normal thread from a sync callers wait on until it next
//! sleeps.
//!
//! Why: the writer sleeps between groups and is woken by the first job sent.
//! A normal thread woken that way preempts the runtime thread that sent the
//! job (or interrupts the other core to run), so with waiting sidecar calls,
//! which write one outcome each and never wait on a sync, every call paid a
//! wake-up, a context switch away from the HTTP work and one back: 4.7% of
//! the process's CPU was that wake-up alone. A `SCHED_BATCH` thread does not
//! preempt when woken; it runs when a core comes free, by which time more
//! jobs wait to be grouped. Measured on the 2-core VM in alternating rounds
//! against the build without it: sidecar calls (`bench/sidecar.sh`'s load)
//! faster in 5 of 5 rounds, +2% to +28% (and +10% by the median of 13
//! earlier rounds with the policy set by hand, CPU per call about 62 µs
//! instead of 75); durable submits −6% to +12%, median +2%, same p99.
//!
//! A durable group is the exception: its callers' 202s wait on the journal's
//! fdatasync, and the writer must run the moment the disk answers. It is a
//! normal thread from before that sync until it next waits for jobs (always
//! `SCHED_BATCH`, durable submits had a p99 of 10–15 ms instead of 7).
//!
//! The hint stands aside unless the writer starts as a plain thread
//! (`SCHED_OTHER`, nice 0): a process run under `chrt`, `nice` or a
//! real-time policy keeps what its operator chose, and so does one where the
//! policy cannot be set (seccomp, or not Linux). Each switch sets nice 0 with
//! the policy (the one call the `thread-priority` crate offers), so a later
//! `renice` of the writer thread alone does not last.

/// The writer's scheduling, as the current thread (the writer) sets it.
pub(crate) struct Hint {
    active: bool,
    /// A normal thread now (between [`Hint::urgent`] and [`Hint::relaxed`]).
    urgent: std::cell::Cell<bool>,
}

impl Hint {
    /// Makes the current thread `SCHED_BATCH` if it may; the hint is
    /// inactive (every method a no-op) if not.
    pub(crate) fn for_this_thread() -> Self {
        let active = imp::is_plain() && {
            let set = imp::set_batch(true);
            if !set {
                // A refusal may come after the policy was applied.
                imp::set_batch(false);
            }
            set
        };
        tracing::debug!(
            active,
            "writer thread scheduling: SCHED_BATCH between durable syncs"
        );
        Self {
            active,
            urgent: std::cell::Cell::new(false),
        }
    }

    #[cfg(test)]
    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    /// Before a sync callers wait on: runs as soon as it is woken.
    pub(crate) fn urgent(&self) {
        if self.active && !self.urgent.replace(true) {
            imp::set_batch(false);
        }
    }

    /// Before the writer sleeps: back to `SCHED_BATCH`, so that the job that
    /// wakes it does not preempt its sender. Only then: while jobs keep
    /// coming the writer is never woken, and a switch per durable group (two
    /// system calls) cost 1% of the process's CPU under durable submits.
    pub(crate) fn relaxed(&self) {
        if self.active && self.urgent.replace(false) {
            imp::set_batch(true);
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
    };

    /// Sets the current thread's policy; `false` if refused. The nice value
    /// set with it is 0, which [`is_plain`] made sure it already was.
    pub(super) fn set_batch(batch: bool) -> bool {
        let policy = if batch {
            NormalThreadSchedulePolicy::Batch
        } else {
            NormalThreadSchedulePolicy::Other
        };
        set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(policy),
        )
        .is_ok()
    }

    /// `SCHED_OTHER` at nice 0: nobody chose this thread's priority.
    pub(super) fn is_plain() -> bool {
        let other = matches!(
            thread_schedule_policy(),
            Ok(ThreadSchedulePolicy::Normal(
                NormalThreadSchedulePolicy::Other
            ))
        );
        let nice = std::fs::read_to_string("/proc/thread-self/stat")
            .ok()
            .and_then(|stat| super::nice_of(&stat));
        other && nice == Some(0)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn set_batch(_batch: bool) -> bool {
        false
    }

    pub(super) fn is_plain() -> bool {
        false
    }
}

/// Field `n` (counted from 1) of a `/proc/<pid>/task/<tid>/stat` line, from
/// field 3 on: the command name, field 2, is in parentheses and may hold
/// spaces and `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn stat_field<T: std::str::FromStr>(stat: &str, n: usize) -> Option<T> {
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The nice value (field 19) in a stat line.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn nice_of(stat: &str) -> Option<i32> {
    stat_field(stat, 19)
}

#[cfg(test)]
mod tests {
    use super::nice_of;

    #[test]
    fn the_nice_value_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (openhqm (w) x) S 1 4242 4242 0 -1 4194560 1419 0 0 0 \
                    12 5 0 0 20 5 9 0 1803 1310720000 2533 18446744073709551615";
        assert_eq!(nice_of(stat), Some(5));
        let stat = "7 (openhqm-writer) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0";
        assert_eq!(nice_of(stat), Some(0));
        assert_eq!(nice_of("7 (openhqm-writer) R 1"), None);
        assert_eq!(nice_of("no parentheses"), None);
    }
}
