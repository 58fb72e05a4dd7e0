//! The writer thread: drains jobs, commits them as one batch, syncs once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fjall::{Keyspace, PersistMode, Slice};
use tokio::sync::mpsc;

use crate::failure::{Failure, ReportPanic, cause_of};
use crate::recent::{Recent, Writes};
use crate::sched::Hint;
use crate::{Completion, Durability, Job, Request, Wait};

/// Most jobs folded into one group; bounds the latency of the first job.
const MAX_GROUP: usize = 4096;

/// The view a job gets of the database: reads see earlier jobs of the same
/// group, writes join the group's atomic batch.
pub struct WriteCtx<'a> {
    batch: fjall::OwnedWriteBatch,
    overlay: Writes,
    recent: &'a mut Recent,
    stop: bool,
}

impl WriteCtx<'_> {
    /// Reads `key`, seeing writes made earlier in this group; for a hot
    /// keyspace (see [`crate::EmbeddedDb::hot_keyspace`]) usually from memory.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn get(&self, ks: &Keyspace, key: &[u8]) -> fjall::Result<Option<Slice>> {
        if let Some(v) = self.overlay.get(ks.id(), key) {
            return Ok(v.clone());
        }
        match self.recent.lookup(ks, key) {
            Some(known) => Ok(known),
            None => ks.get(key),
        }
    }

    /// Writes `key` = `value` in this group.
    pub fn insert(&mut self, ks: &Keyspace, key: &[u8], value: impl Into<Slice>) {
        let value: Slice = value.into();
        self.overlay.insert(ks.id(), key, Some(value.clone()));
        self.batch.insert(ks, key, value);
    }

    /// Deletes `key` in this group.
    pub fn remove(&mut self, ks: &Keyspace, key: &[u8]) {
        self.overlay.insert(ks.id(), key, None);
        self.batch.remove(ks, key);
    }

    pub(crate) fn stop(&mut self) {
        self.stop = true;
    }

    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.recent.remembered()
    }

    /// Starts remembering `ks`'s writes across groups.
    pub(crate) fn make_hot(&mut self, ks: &Keyspace) -> fjall::Result<()> {
        self.recent.make_hot(ks)
    }
}

/// Whether committed writes wait for a sync, and how many syncs there were.
#[derive(Default)]
pub(crate) struct Syncs {
    /// A group was committed and not made durable since.
    pending: AtomicBool,
    /// Groups made durable (by the database's [`Durability`]).
    done: AtomicU64,
}

impl Syncs {
    pub(crate) fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn committed(&self, made_durable: bool) {
        if made_durable {
            self.pending.store(false, Ordering::Release);
            self.done.fetch_add(1, Ordering::Relaxed);
        } else {
            self.pending.store(true, Ordering::Release);
        }
    }
}

pub(crate) fn spawn(
    db: fjall::Database,
    rx: mpsc::UnboundedReceiver<Request>,
    durability: Durability,
    failure: Arc<Failure>,
    syncs: Arc<Syncs>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("openhqm-writer".into())
        .spawn(move || run(&db, rx, durability, &failure, &syncs))
}

/// Every `every`, asks the writer for a sync if a committed group still
/// waits for one: writes nobody waited to see synced (results, acks, calls
/// answered before their message reached the disk) are durable within
/// `every`, as with Redis's `appendfsync everysec`. Holds the channel only
/// weakly, so it ends with the database.
pub(crate) fn spawn_syncer(
    tx: mpsc::WeakUnboundedSender<Request>,
    syncs: Arc<Syncs>,
    every: Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("openhqm-syncer".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(tx) = tx.upgrade() else { return };
                if syncs.pending.load(Ordering::Acquire) {
                    let job: Job = Box::new(|_| Box::new(|_| {}));
                    if tx
                        .send(Request {
                            job,
                            wait: Wait::Durable,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
        .map(drop)
}

fn run(
    db: &fjall::Database,
    mut rx: mpsc::UnboundedReceiver<Request>,
    durability: Durability,
    failure: &Failure,
    syncs: &Syncs,
) {
    let _panic = ReportPanic(failure);
    let mode = match durability {
        Durability::Fsync => PersistMode::SyncData,
        Durability::Process => PersistMode::Buffer,
    };
    let mut group = Vec::with_capacity(256);
    let mut recent = Recent::default();
    let hint = Hint::for_this_thread();
    loop {
        let first = match rx.try_recv() {
            Ok(job) => job,
            Err(mpsc::error::TryRecvError::Empty) => {
                // About to sleep: a job that wakes it must not preempt its sender.
                hint.relaxed();
                match rx.blocking_recv() {
                    Some(job) => job,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        let stop = commit_group(db, &mut group, &mut recent, mode, &hint, failure, syncs);
        if stop {
            break;
        }
    }
    // Whatever the OS still buffers is synced on the way out.
    if let Err(e) = db.persist(PersistMode::SyncAll) {
        failure.report(&cause_of(&e));
    }
}

/// Applies and commits one group; returns `true` if a job asked the writer to stop.
fn commit_group(
    db: &fjall::Database,
    group: &mut Vec<Request>,
    recent: &mut Recent,
    mode: PersistMode,
    hint: &Hint,
    failure: &Failure,
    syncs: &Syncs,
) -> bool {
    let mut ctx = WriteCtx {
        batch: db.batch(),
        overlay: recent.overlay(),
        recent,
        stop: false,
    };
    let mut applied: Vec<Completion> = Vec::new();
    // Flushed and durable jobs, and the persist they need (the strongest asked).
    let mut persisted: Vec<Completion> = Vec::new();
    let mut persist: Option<PersistMode> = None;
    for req in group.drain(..) {
        let done = (req.job)(&mut ctx);
        match req.wait {
            Wait::Applied => applied.push(done),
            Wait::Flushed => {
                persist = persist.or(Some(PersistMode::Buffer));
                persisted.push(done);
            }
            Wait::Durable => {
                persist = Some(mode);
                persisted.push(done);
            }
        }
    }
    let WriteCtx {
        batch,
        overlay,
        recent,
        stop,
    } = ctx;
    let batch_was_empty = batch.is_empty();
    let result = if batch_was_empty {
        Ok(())
    } else {
        batch.commit()
    };
    match &result {
        Ok(()) => recent.remember(overlay),
        Err(_) => recent.forget_all(),
    }
    let result = result.map_err(Arc::new);
    for done in applied {
        done(result.clone());
    }
    let wrote = !batch_was_empty;
    // A durable group: its callers (202s) wait on this fdatasync, so the
    // writer must run the moment the disk answers.
    let urgent = persist == Some(PersistMode::SyncData);
    if urgent {
        hint.urgent();
    }
    let result = match (result, persist) {
        (Ok(()), Some(persist)) => db.persist(persist).map_err(Arc::new),
        (other, _) => other,
    };
    if result.is_ok() && (wrote || persist == Some(mode)) {
        syncs.committed(persist == Some(mode));
    }
    if let Err(e) = &result {
        // Every commit error leaves fjall poisoned: the first one is the news.
        failure.report(&cause_of(e));
    }
    for done in persisted {
        done(result.clone());
    }
    stop
}
