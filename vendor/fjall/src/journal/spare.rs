// Added to fjall 3.1.13 by OpenHQM (vendor/README.md); not part of upstream fjall.

//! A spare journal file, written full of zeros and synced ahead of time,
//! which the next journal takes instead of a sparse file.
//!
//! Why: a journal created with `set_len` is sparse, so every write into it
//! allocates blocks, and every `fdatasync` then also writes the file's
//! metadata (the inode and its extents): a second I/O, waited on, behind
//! each durable commit. Writes into blocks written before change no
//! metadata. Zeros read as the end of a journal, as a sparse file's holes do,
//! so recovery sees a spare taken into use as an empty journal.
//!
//! The spare is named so that recovery, which only reads `*.jnl`, skips it.
//! Each spare is written under a name of its own ([`PREPARING`] and a
//! number), synced, then renamed to [`READY`]: only a complete spare is ever
//! named [`READY`], and nothing writes to a file after it got that name, so
//! a journal taken from it is written by the journal alone. A writer stops
//! when the journal that asked for it is dropped (a rotation, or the
//! database closed), and a name left by a crash or by another writer is
//! removed before a new spare is written (its writer's rename then fails).
//!
//! Linux only: elsewhere `sync_data` may be a full device flush per chunk
//! (`F_FULLFSYNC` on macOS), too dear for what it saves.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A complete spare.
const READY: &str = "spare.jnlspare";
/// A spare being written, followed by a number of its own.
const PREPARING: &str = "spare.jnlspare-tmp";

/// Takes the ready spare as the journal file at `path`, if there is one of
/// `size` bytes. `path` must not exist yet.
pub fn take(path: &Path, size: u64) -> Option<File> {
    let folder = path.parent()?;
    let spare = folder.join(READY);
    if spare.metadata().ok()?.len() != size || path.try_exists().ok()? {
        return None;
    }
    if let Err(e) = std::fs::rename(&spare, path) {
        log::warn!(
            "Could not take the spare journal file {}: {e:?}",
            spare.display()
        );
        return None;
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .inspect_err(|e| {
            log::warn!(
                "Could not open the spare journal file at {}: {e:?}",
                path.display()
            );
        })
        .ok()
}

/// A spare being written; dropping it stops the writer.
pub struct Preparing(Arc<AtomicBool>);

impl Drop for Preparing {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Starts writing a spare of `size` bytes in `folder` on a thread of its
/// own, unless one is ready.
pub fn prepare(folder: PathBuf, size: u64) -> Preparing {
    let stop = Arc::new(AtomicBool::new(false));
    if cfg!(target_os = "linux") && !folder.join(READY).exists() {
        let stopped = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("fjall:spare-jnl".into())
            .spawn(move || {
                if let Err(e) = write(&folder, size, &stopped) {
                    log::warn!(
                        "Could not write a spare journal file in {}: {e:?}",
                        folder.display()
                    );
                }
            });
        if let Err(e) = spawned {
            log::warn!("Could not start writing a spare journal file: {e:?}");
        }
    }
    Preparing(stop)
}

/// Written and synced at a time: each sync is small enough not to hold up
/// the journal's own syncs behind one large burst of writes.
const CHUNK: usize = 256 * 1024;

fn write(folder: &Path, size: u64, stop: &AtomicBool) -> std::io::Result<()> {
    use std::io::Write;

    remove_unfinished(folder)?;
    let tmp = folder.join(format!(
        "{PREPARING}{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    let mut file = File::create_new(&tmp)?;
    let zeros = vec![0; CHUNK];
    let mut written = 0;
    while written < size {
        if stop.load(Ordering::Acquire) {
            drop(file);
            return std::fs::remove_file(&tmp);
        }
        let n = CHUNK.min(usize::try_from(size - written).unwrap_or(CHUNK));
        file.write_all(&zeros[..n])?;
        file.sync_data()?;
        written += n as u64;
    }
    file.sync_all()?;
    drop(file);
    if stop.load(Ordering::Acquire) {
        return std::fs::remove_file(&tmp);
    }
    std::fs::rename(&tmp, folder.join(READY))?;
    crate::file::fsync_directory(folder)
}

/// Removes spares a crash (or a closed database's writer) left unfinished.
fn remove_unfinished(folder: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(PREPARING))
        {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
