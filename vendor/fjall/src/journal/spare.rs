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
//! The spare is named so that recovery, which only reads `*.jnl`, skips it:
//! it is written as [`PREPARING`], synced, then renamed to [`READY`]; only a
//! file named [`READY`] is complete.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A complete spare.
const READY: &str = "spare.jnlspare";
/// A spare being written.
const PREPARING: &str = "spare.jnlspare-tmp";
/// Written and synced at a time: each sync is small enough not to hold up
/// the journal's own syncs behind one large burst of writes.
const CHUNK: usize = 256 * 1024;

/// Takes the ready spare as the journal file at `path`, if there is one.
/// `path` must not exist yet.
pub fn take(path: &Path) -> Option<File> {
    let folder = path.parent()?;
    let spare = folder.join(READY);
    if !spare.try_exists().ok()? || path.try_exists().ok()? {
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

/// Folders whose spare this process is writing.
static WRITING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Writes a spare of `size` bytes in `folder` on a thread of its own,
/// unless one is ready or being written.
pub fn prepare(folder: PathBuf, size: u64) {
    {
        let mut writing = WRITING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if writing.contains(&folder) || folder.join(READY).exists() {
            return;
        }
        writing.insert(folder.clone());
    }
    let done = |folder: &Path| {
        WRITING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(folder);
    };
    let spawned = std::thread::Builder::new()
        .name("fjall:spare-jnl".into())
        .spawn({
            let folder = folder.clone();
            move || {
                if let Err(e) = write(&folder, size) {
                    log::warn!(
                        "Could not write a spare journal file in {}: {e:?}",
                        folder.display()
                    );
                    let _ = std::fs::remove_file(folder.join(PREPARING));
                }
                done(&folder);
            }
        });
    if spawned.is_err() {
        done(&folder);
    }
}

fn write(folder: &Path, size: u64) -> std::io::Result<()> {
    let tmp = folder.join(PREPARING);
    // Truncates what a crash may have left half written.
    let mut file = File::create(&tmp)?;
    let zeros = vec![0; CHUNK];
    let mut written = 0;
    while written < size {
        let n = CHUNK.min(usize::try_from(size - written).unwrap_or(CHUNK));
        file.write_all(&zeros[..n])?;
        file.sync_data()?;
        written += n as u64;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, folder.join(READY))?;
    crate::file::fsync_directory(folder)
}
