//! The embedded storage engine: one fjall database, one writer thread.
//!
//! Every write in the process (queue publishes, acks, status transitions) is a
//! job sent to a single writer thread. The thread drains whatever jobs are
//! waiting, applies them as one atomic fjall batch, and, if any job asked for
//! durability, makes the journal durable once for the whole group (group
//! commit). While it syncs, new jobs pile up in the channel and form the next
//! group, so throughput grows with concurrency instead of being capped by the
//! fsync rate.
//!
//! Having one writer buys three things:
//! - read-modify-write jobs (status transitions) are atomic without locks, since
//!   nothing else writes between their read and their write;
//! - writes are journaled in the order they were sent, so a durable write also
//!   makes every earlier write durable (the journal is recovered as a prefix);
//! - async tasks never block on the journal lock or on fsync.
//!
//! A write that nobody waits to see synced is synced within
//! [`Options::sync_every`] by a syncer thread, unless a durable write takes
//! it along sooner.
//!
//! Reads go straight to fjall from any thread and see every applied batch.
//! Jobs on the writer read hot keyspaces mostly from memory ([`recent`]).
//! On Linux, where allowed, the writer runs as `SCHED_BATCH` between durable
//! syncs ([`sched`]).

mod failure;
mod recent;
mod sched;
mod writer;

use std::path::Path;
use std::sync::Arc;

pub use fjall::{Keyspace, Slice};
use tokio::sync::{mpsc, oneshot};

use failure::Failure;
use writer::Syncs;
pub use writer::WriteCtx;

/// How far a write has to get before the caller is told it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Applied: visible to every reader, journaled in order, not yet synced.
    Applied,
    /// Handed to the OS: survives a crash of this process, not a power
    /// loss. For what only a crashing process must not lose.
    Flushed,
    /// Made durable according to the database's [`Durability`].
    Durable,
}

/// What "durable" means for this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` each group commit: survives power loss.
    Fsync,
    /// Hand each group commit to the OS: survives a process crash.
    Process,
}

/// Errors from the embedded engine.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The storage engine failed (I/O, corruption, poisoned after a failed sync).
    #[error("storage engine error: {0}")]
    Engine(fjall::Error),
    /// The writer thread has stopped; the database is closed or failed.
    #[error("embedded database is closed")]
    Closed,
    /// The engine failed for good; see [`EmbeddedDb::failed`].
    #[error("embedded storage failed: {0}")]
    Failed(Arc<str>),
}

// By hand, not `#[from]`: that would also make the fjall error this one's
// source, and error chains (`{:#}`) would print it twice.
impl From<fjall::Error> for DbError {
    fn from(e: fjall::Error) -> Self {
        Self::Engine(e)
    }
}

/// Memtable size per keyspace: bounds memory; larger only saves flushes.
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

/// Size of the tables compaction writes (fjall's default is 64 MiB).
///
/// A table is written through the page cache and synced once, at its end,
/// so its size is the burst the disk takes at once, and the journal's
/// fdatasync waits behind that burst. With these (LevelDB's size), and
/// flushes of at most one memtable, the submit p99 under `bench/run.sh` went
/// from about 60 ms to 16–20 ms at the same throughput, with fewer bytes
/// written per request; the price is more, smaller files.
///
/// fjall stores a keyspace's options when it creates it: a data directory
/// created by an earlier build keeps the sizes it was created with.
const TABLE_BYTES: u64 = 2 * 1024 * 1024;

/// How often [`EmbeddedDb::failed`] asks fjall itself whether it failed.
const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(1);

/// Table files fjall keeps open.
const MAX_OPEN_TABLES: usize = 256;

type Completion = Box<dyn FnOnce(Result<(), Arc<fjall::Error>>) + Send>;
type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Completion + Send>;

struct Request {
    job: Job,
    wait: Wait,
}

/// Options for [`EmbeddedDb::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// What a durable write guarantees.
    pub durability: Durability,
    /// Background threads fjall may use for flushes and compaction.
    pub worker_threads: usize,
    /// Longest a committed write waits to be made durable when no durable
    /// write comes sooner to take it along.
    pub sync_every: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            worker_threads: 1,
            sync_every: std::time::Duration::from_secs(1),
        }
    }
}

/// A handle to the embedded database; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedDb {
    inner: Arc<Inner>,
}

struct Inner {
    db: fjall::Database,
    tx: mpsc::UnboundedSender<Request>,
    failure: Arc<Failure>,
    syncs: Arc<Syncs>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EmbeddedDb {
    /// Opens (or creates) the database in `path` and starts its writer thread.
    ///
    /// # Errors
    /// If the directory cannot be opened or recovered, or is locked by another process.
    pub fn open(path: &Path, options: &Options) -> Result<Self, DbError> {
        // Small memtables, cache and journal keep memory and disk bounded for a
        // queue whose entries live briefly (measured: bench/storage-engines).
        let db = fjall::Database::builder(path)
            .worker_threads(options.worker_threads.max(1))
            .manual_journal_persist(true)
            .cache_size(8 * 1024 * 1024)
            // Small tables mean many files: keep the open ones well under
            // the usual soft limit of 1024 descriptors (fjall's default is
            // 900), which client sockets share. A colder table is reopened.
            .max_cached_files(Some(MAX_OPEN_TABLES))
            .max_journaling_size(64 * 1024 * 1024)
            .open()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let failure = Arc::new(Failure::new());
        let syncs = Arc::new(Syncs::default());
        let io = |e| DbError::Engine(fjall::Error::Io(e));
        let thread = writer::spawn(
            db.clone(),
            rx,
            options.durability,
            Arc::clone(&failure),
            Arc::clone(&syncs),
        )
        .map_err(io)?;
        writer::spawn_syncer(tx.downgrade(), Arc::clone(&syncs), options.sync_every).map_err(io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                tx,
                failure,
                syncs,
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        })
    }

    /// Opens (or creates) a keyspace, the unit of key ordering.
    ///
    /// # Errors
    /// On I/O failure.
    pub fn keyspace(&self, name: &str) -> Result<Keyspace, DbError> {
        let options = || {
            let compaction =
                fjall::compaction::Leveled::default().with_table_target_size(TABLE_BYTES);
            fjall::KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES)
                .compaction_strategy(Arc::new(compaction))
        };
        Ok(self.inner.db.keyspace(name, options)?)
    }

    /// Opens a keyspace whose writer jobs read what they wrote recently
    /// (read-modify-write by key): the writer remembers its latest writes
    /// (bounded), so those reads rarely wait on fjall, and knows a key above
    /// every key it has stored or forgotten is absent without reading. Made
    /// for time-ordered keys.
    ///
    /// The registration is queued like any write, so every later job sees it.
    ///
    /// # Errors
    /// On I/O failure, or [`DbError::Closed`].
    pub fn hot_keyspace(&self, name: &str) -> Result<Keyspace, DbError> {
        let ks = self.keyspace(name)?;
        let hot = ks.clone();
        self.write_detached(move |ctx| {
            if let Err(e) = ctx.make_hot(&hot) {
                // Still correct, only slower: reads of this keyspace go to fjall.
                tracing::warn!(error = %e, "keyspace not made hot");
            }
        })?;
        Ok(ks)
    }

    /// Runs `op` on the writer thread as part of the next group and waits as
    /// `wait` says. The value `op` returns is handed back once the group is
    /// committed; if the commit fails the value is dropped and the error returned.
    ///
    /// # Errors
    /// [`DbError::Closed`] after shutdown or a fatal failure, or the commit's error.
    pub async fn write<R, F>(&self, wait: Wait, op: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> R + Send + 'static,
    {
        self.write_then(wait, op, |value| value).await
    }

    /// As [`write`](Self::write), and once the group is committed `then`
    /// turns `op`'s value into the answer, on the writer thread, whether or
    /// not the caller still waits. In-memory state that must follow a
    /// committed write (a message made receivable, waiters woken) is kept
    /// there, so a caller dropped mid-write (a client gone, a timeout) cannot
    /// leave a write without it. `then` must be quick and must not wait.
    ///
    /// # Errors
    /// As [`write`](Self::write); `then` does not run.
    pub async fn write_then<R, T, F, G>(&self, wait: Wait, op: F, then: G) -> Result<T, DbError>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> R + Send + 'static,
        G: FnOnce(R) -> T + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            let value = op(ctx);
            Box::new(move |result| {
                let _ = done_tx.send(result.map(|()| then(value)));
            })
        });
        self.inner
            .tx
            .send(Request { job, wait })
            .map_err(|_| DbError::Closed)?;
        match done_rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(shared_error(&e)),
            Err(_) => Err(DbError::Closed),
        }
    }

    /// Queues `op` without waiting for it; it is still applied in order with
    /// every other write, and a failure marks the database unhealthy.
    ///
    /// # Errors
    /// [`DbError::Closed`] if the writer has stopped.
    pub fn write_detached<F>(&self, op: F) -> Result<(), DbError>
    where
        F: FnOnce(&mut WriteCtx<'_>) + Send + 'static,
    {
        self.send_detached(Wait::Applied, op)
    }

    /// Like [`EmbeddedDb::write_detached`], but the group holding `op` is
    /// flushed to the OS ([`Wait::Flushed`]) as if a caller waited for it:
    /// for a write that must survive this process crashing soon after,
    /// though nobody can wait for it.
    ///
    /// # Errors
    /// [`DbError::Closed`] if the writer has stopped.
    pub fn write_detached_flushed<F>(&self, op: F) -> Result<(), DbError>
    where
        F: FnOnce(&mut WriteCtx<'_>) + Send + 'static,
    {
        self.send_detached(Wait::Flushed, op)
    }

    fn send_detached<F>(&self, wait: Wait, op: F) -> Result<(), DbError>
    where
        F: FnOnce(&mut WriteCtx<'_>) + Send + 'static,
    {
        let job: Job = Box::new(move |ctx| {
            op(ctx);
            Box::new(|_| {})
        });
        self.inner
            .tx
            .send(Request { job, wait })
            .map_err(|_| DbError::Closed)
    }

    /// Proves the writer is alive and the journal can be synced.
    ///
    /// # Errors
    /// Why it cannot.
    pub async fn probe(&self) -> Result<(), DbError> {
        if let Some(cause) = self.inner.failure.cause() {
            return Err(DbError::Failed(cause));
        }
        self.sync().await
    }

    /// Makes every write applied before it durable by the database's
    /// [`Durability`]: the journal holds them in order, so one sync covers all.
    ///
    /// # Errors
    /// [`DbError::Closed`], or the sync's error.
    pub async fn sync(&self) -> Result<(), DbError> {
        self.write(Wait::Durable, |_| ()).await
    }

    /// How many group commits were made durable (by the database's
    /// [`Durability`]) so far.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.done()
    }

    /// Resolves, with the cause, once the engine has failed for good: a
    /// commit failed (fjall then refuses every write until a restart), the
    /// writer thread panicked, or fjall says it is poisoned while the writer
    /// is stuck inside it. Never for a healthy or closed database.
    pub async fn failed(&self) -> Arc<str> {
        let reported = self.inner.failure.reported();
        tokio::pin!(reported);
        let mut watchdog = tokio::time::interval(WATCHDOG);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cause = &mut reported => return cause,
                _ = watchdog.tick(), if !self.inner.tx.is_closed() => self.ask_fjall().await,
            }
        }
    }

    /// The cause, if the engine has failed for good (see [`EmbeddedDb::failed`]).
    #[must_use]
    pub fn failure(&self) -> Option<Arc<str>> {
        self.inner.failure.cause()
    }

    /// Reports fjall's poisoning even if the writer is stuck inside fjall.
    async fn ask_fjall(&self) {
        // Flushing the journal's buffer to the OS is cheap, and refused by a
        // poisoned database.
        let db = self.inner.db.clone();
        let persisted =
            tokio::task::spawn_blocking(move || db.persist(fjall::PersistMode::Buffer)).await;
        if let Ok(Err(e)) = persisted {
            self.inner.failure.report(&failure::cause_of(&e));
        }
    }

    /// Approximate bytes on disk (journal and tables).
    #[must_use]
    pub fn disk_space(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }

    /// Stops the writer after the jobs already queued, syncs, and waits for it.
    /// Later writes fail with [`DbError::Closed`]. Safe to call more than once.
    pub async fn close(&self) {
        // A final durable no-op flushes everything queued before it.
        let _ = self.write(Wait::Durable, |ctx| ctx.stop()).await;
        let handle = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn shared_error(e: &fjall::Error) -> DbError {
    DbError::Engine(fjall::Error::Io(std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests;
