use super::*;

use std::time::Duration;

fn open(dir: &Path) -> EmbeddedDb {
    EmbeddedDb::open(dir, &Options::default()).expect("open")
}

/// [`open`] with the syncer looking every `sync_every`.
fn open_syncing_every(dir: &Path, sync_every: Duration) -> EmbeddedDb {
    let options = Options {
        sync_every,
        ..Options::default()
    };
    EmbeddedDb::open(dir, &options).expect("open")
}

#[tokio::test]
async fn durable_write_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let ks = db.keyspace("items").expect("keyspace");
    let ks2 = ks.clone();
    db.write(Wait::Durable, move |ctx| {
        ctx.insert(&ks2, b"k", b"v".as_slice())
    })
    .await
    .expect("write");
    assert_eq!(ks.get(b"k").expect("get").as_deref(), Some(b"v".as_slice()));
    db.close().await;
    drop(ks);
    drop(db);

    let db = open(dir.path());
    let ks = db.keyspace("items").expect("keyspace");
    assert_eq!(ks.get(b"k").expect("get").as_deref(), Some(b"v".as_slice()));
    db.close().await;
}

/// Writes `k` = `v` in `items`, waiting as `wait` says.
async fn put(db: &EmbeddedDb, wait: Wait, k: &'static [u8]) {
    let ks = db.keyspace("items").expect("keyspace");
    db.write(wait, move |ctx| ctx.insert(&ks, k, b"v".as_slice()))
        .await
        .expect("write");
}

#[tokio::test]
async fn only_durable_writes_and_sync_make_groups_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_syncing_every(dir.path(), Duration::from_secs(3600));
    let before = db.syncs();
    put(&db, Wait::Applied, b"a").await;
    put(&db, Wait::Flushed, b"f").await;
    assert_eq!(
        db.syncs(),
        before,
        "applied and flushed writes are not synced"
    );
    db.sync().await.expect("sync");
    assert_eq!(db.syncs(), before + 1);
    put(&db, Wait::Durable, b"d").await;
    assert_eq!(db.syncs(), before + 2);
    db.close().await;
}

#[tokio::test]
async fn writes_nobody_synced_are_synced_within_sync_every_and_idle_costs_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_syncing_every(dir.path(), Duration::from_millis(50));
    let before = db.syncs();
    put(&db, Wait::Applied, b"a").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while db.syncs() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "an applied write was never synced"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let synced = db.syncs();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(db.syncs(), synced, "nothing to sync, yet synced again");
    db.close().await;
}

#[tokio::test]
async fn jobs_in_one_group_see_each_others_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let ks = db.keyspace("counter").expect("keyspace");
    // 200 concurrent read-modify-write increments must not lose an update,
    // whichever groups they land in.
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let db = db.clone();
        let ks = ks.clone();
        tasks.push(tokio::spawn(async move {
            db.write(Wait::Applied, move |ctx| {
                let n = ctx.get(&ks, b"n").expect("get").map_or(0, |v| {
                    u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes"))
                });
                ctx.insert(&ks, b"n", (n + 1).to_be_bytes().to_vec());
            })
            .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("write");
    }
    let n = ks.get(b"n").expect("get").expect("present");
    assert_eq!(
        u64::from_be_bytes(n.as_ref().try_into().expect("8 bytes")),
        200
    );
    db.close().await;
}

#[tokio::test]
async fn writes_after_close_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    db.close().await;
    let err = db.write(Wait::Applied, |_| ()).await.expect_err("closed");
    assert!(matches!(err, DbError::Closed), "{err}");
    assert!(db.probe().await.is_err());
}

/// Reads `key` the way a writer job does.
async fn writer_get(db: &EmbeddedDb, ks: &Keyspace, key: &'static [u8]) -> Option<Vec<u8>> {
    let ks = ks.clone();
    db.write(Wait::Applied, move |ctx| {
        ctx.get(&ks, key).expect("get").map(|v| v.to_vec())
    })
    .await
    .expect("write")
}

async fn writer_put(db: &EmbeddedDb, ks: &Keyspace, key: Vec<u8>, value: Vec<u8>) {
    let ks = ks.clone();
    db.write(Wait::Applied, move |ctx| ctx.insert(&ks, &key, value))
        .await
        .expect("write");
}

#[tokio::test]
async fn hot_keyspace_answers_from_memory_and_knows_new_keys_are_absent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let plain = db.keyspace("hot").expect("keyspace");
    plain.insert(b"m", b"stored before").expect("insert");
    let hot = db.hot_keyspace("hot").expect("hot keyspace");

    // Written by the writer, then changed behind its back: a job still sees
    // the writer's own latest value, so it did not read fjall.
    writer_put(&db, &hot, b"a".to_vec(), b"written".to_vec()).await;
    plain.insert(b"a", b"behind its back").expect("insert");
    assert_eq!(
        writer_get(&db, &hot, b"a").await.as_deref(),
        Some(b"written".as_slice())
    );

    // Above every stored key and never written: known absent without a read.
    plain.insert(b"z", b"behind its back").expect("insert");
    assert_eq!(writer_get(&db, &hot, b"z").await, None);

    // At or below the ceiling and not remembered: read from fjall.
    assert_eq!(
        writer_get(&db, &hot, b"m").await.as_deref(),
        Some(b"stored before".as_slice())
    );
    plain.insert(b"b", b"from fjall").expect("insert");
    assert_eq!(
        writer_get(&db, &hot, b"b").await.as_deref(),
        Some(b"from fjall".as_slice())
    );
    db.close().await;
}

#[tokio::test]
async fn hot_keyspace_memory_is_bounded_and_forgotten_keys_are_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let hot = db.hot_keyspace("hot").expect("hot keyspace");
    // 40 MiB of writes through an 8 MiB memory: the early keys are forgotten.
    let value = vec![7u8; 4096];
    for i in 0u32..10_000 {
        writer_put(&db, &hot, i.to_be_bytes().to_vec(), value.clone()).await;
    }
    let remembered = db
        .write(Wait::Applied, |ctx| ctx.remembered())
        .await
        .expect("write");
    assert!(
        remembered < 2_100,
        "remembers {remembered} entries of 4 KiB"
    );
    assert!(remembered > 0);
    // A forgotten key is at or below the raised ceiling, so it is read from
    // fjall rather than wrongly reported absent.
    let ks = hot.clone();
    let first = db
        .write(Wait::Applied, move |ctx| {
            ctx.get(&ks, &0u32.to_be_bytes())
                .expect("get")
                .map(|v| v.len())
        })
        .await
        .expect("write");
    assert_eq!(first, Some(4096));
    db.close().await;
}

/// Bytes that lz4 cannot shrink, so a table's size is the data's size.
fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, deterministic noise.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[tokio::test]
async fn compaction_writes_small_tables_so_no_sync_is_a_long_burst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let ks = db.keyspace("bulk").expect("keyspace");
    let tables = ks.path().join("tables");
    let sizes = || -> Vec<u64> {
        // A table compaction has just deleted is skipped.
        let mut sizes: Vec<u64> = std::fs::read_dir(&tables)
            .map(|dir| {
                dir.filter_map(|e| Some(e.ok()?.metadata().ok()?.len()))
                    .collect()
            })
            .unwrap_or_default();
        sizes.sort_unstable();
        sizes
    };
    // Level-0 tables of 1.5 MiB, flushed one by one, with keys in random
    // order so that they overlap and compaction must merge them (it moves
    // tables of ordered keys down as they are).
    for table in 0u64..6 {
        for i in table * 384..(table + 1) * 384 {
            // An odd multiplier is a bijection: distinct keys, scattered.
            let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes().to_vec();
            writer_put(&db, &ks, key, incompressible(i, 4096)).await;
        }
        let flushing = ks.clone();
        tokio::task::spawn_blocking(move || flushing.rotate_memtable_and_wait())
            .await
            .expect("join")
            .expect("flush");
    }
    let flushed = 384 * 4096 + 128 * 1024;
    // Wait until a merge has written a table larger than a flush, nothing
    // is left for compaction on level 0, and the files have stopped changing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no merge settled: {last:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = sizes();
        let merged = now.last().is_some_and(|&largest| largest > flushed);
        if merged && ks.l0_table_count() < 4 && now == last {
            break;
        }
        last = now;
    }
    // Merges write tables of 2 MiB (each finishing the block it is
    // writing); fjall's default, 64 MiB, writes one table of all 7.5 MiB.
    let largest = *last.last().expect("some table");
    assert!(
        largest <= 2 * 1024 * 1024 + 128 * 1024,
        "largest table is {largest} bytes: {last:?}"
    );
    db.close().await;
}

#[tokio::test]
async fn a_failed_flush_is_reported_and_refuses_later_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("db");
    let db = open(&data);
    let ks = db.keyspace("items").expect("keyspace");
    let failed = tokio::spawn({
        let db = db.clone();
        async move { db.failed().await }
    });
    // The next flush cannot create its table file.
    std::fs::remove_dir_all(&data).expect("delete the directory");
    let value = vec![7u8; 256 * 1024];
    let mut refused = None;
    for i in 0u32..200 {
        let ks = ks.clone();
        let value = value.clone();
        let written = db
            .write(Wait::Durable, move |ctx| {
                ctx.insert(&ks, &i.to_be_bytes(), value);
            })
            .await;
        if written.is_err() {
            refused = Some(i);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let refused = refused.expect("writes went on after the flush failed");
    assert!(refused > 0, "the first write cannot have failed");
    let error = tokio::time::timeout(std::time::Duration::from_secs(5), failed)
        .await
        .expect("failed() resolved")
        .expect("join");
    assert!(error.contains("poisoned the database"), "{error}");
    assert!(
        db.probe().await.is_err(),
        "a failed database probes unhealthy"
    );
    db.close().await;
}

#[tokio::test]
async fn a_panic_on_the_writer_thread_is_reported_as_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let written = db
        .write(Wait::Applied, |_| {
            panic!("a job that panics (expected by this test)")
        })
        .await;
    assert!(written.is_err(), "the panicking job cannot succeed");
    let cause = tokio::time::timeout(std::time::Duration::from_secs(5), db.failed())
        .await
        .expect("failed() resolved");
    assert!(cause.contains("panicked"), "{cause}");
    assert!(
        db.write(Wait::Applied, |_| ()).await.is_err(),
        "later writes fail"
    );
}

/// Field `n` (from 1) of the calling thread's `/proc` stat line.
#[cfg(target_os = "linux")]
fn this_threads_stat<T: std::str::FromStr>(n: usize) -> T {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
    crate::sched::stat_field(&stat, n).expect("a stat field")
}

/// The scheduling policy of the calling thread.
#[cfg(target_os = "linux")]
fn this_threads_policy() -> u32 {
    this_threads_stat(41)
}

#[cfg(target_os = "linux")]
fn this_threads_nice() -> i32 {
    this_threads_stat(19)
}

/// The policy of thread `tid` of this process.
#[cfg(target_os = "linux")]
fn threads_policy(tid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
    crate::sched::stat_field(&stat, 41).expect("a stat field")
}

/// The writer runs as `SCHED_BATCH` (3) while it applies writes, and as a
/// normal thread (`SCHED_OTHER`, 0) from a durable group's fdatasync until
/// it next waits for jobs; then `SCHED_BATCH` again. Where the hint stands
/// aside (a policy or nice value chosen from outside, or refused), the
/// writer keeps the policy it was started with throughout.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_writer_yields_the_cpu_except_while_callers_wait_on_its_sync() {
    const OTHER: u32 = 0;
    const BATCH: u32 = 3;
    // Tried on a scratch thread started as the writer is: from this one.
    let hint_applies = std::thread::spawn(|| crate::sched::Hint::for_this_thread().is_active())
        .join()
        .expect("scratch thread");
    let inherited = this_threads_policy();
    if inherited == OTHER && this_threads_nice() == 0 {
        // sched(7): any thread may move itself to SCHED_BATCH (unless a
        // sandbox's seccomp filter refuses the call).
        assert!(hint_applies, "a plain thread could not become SCHED_BATCH");
    }
    let (batch, other) = if hint_applies {
        (BATCH, OTHER)
    } else {
        (inherited, inherited)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let applying = db.write(Wait::Applied, |_| this_threads_policy()).await;
    assert_eq!(applying.expect("write"), batch);
    let (applying, telling) = db
        .write_then(
            Wait::Durable,
            |_| this_threads_policy(),
            |applying| (applying, this_threads_policy()),
        )
        .await
        .expect("durable write");
    assert_eq!(applying, batch, "before the sync");
    assert_eq!(telling, other, "after the sync, telling its callers");
    // Once it has nothing to do, it waits for jobs as SCHED_BATCH.
    let writer: u32 = db
        .write(Wait::Applied, |_| {
            // `/proc/thread-self` links to `<pid>/task/<tid>`.
            let link = std::fs::read_link("/proc/thread-self").expect("thread-self");
            link.file_name()
                .and_then(|tid| tid.to_str()?.parse().ok())
                .expect("a thread id")
        })
        .await
        .expect("write");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while threads_policy(writer) != batch {
        assert!(
            std::time::Instant::now() < deadline,
            "an idle writer stayed a normal thread"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = db.write(Wait::Applied, |_| this_threads_policy()).await;
    assert_eq!(after.expect("write"), batch, "woken by a job");
}

/// The journals after the first are fjall's spare (vendor/README.md): a
/// file written full of zeros before it is taken, so that a durable
/// commit's fdatasync writes no metadata. What such a journal holds
/// survives a reopen.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn later_journals_are_written_before_they_are_used_and_recover() {
    use std::os::unix::fs::MetadataExt;
    const VALUE: usize = 64 * 1024;
    const JOURNAL: u64 = 64 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let ks = db.keyspace("items").expect("keyspace");
    // Incompressible values, so the journal grows by what is written.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut value = move || {
        (0..VALUE / 8)
            .flat_map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()
            })
            .collect::<Vec<u8>>()
    };
    let mut key = 0u32;
    // 1 MiB per durable write.
    let mut write_mib = async |db: &EmbeddedDb| {
        let (ks, values) = (ks.clone(), (0..16).map(|_| value()).collect::<Vec<_>>());
        let first = key;
        key += 16;
        db.write(Wait::Durable, move |ctx| {
            for (i, v) in (first..).zip(values) {
                ctx.insert(&ks, &i.to_be_bytes(), v);
            }
        })
        .await
        .expect("write");
        first + 15
    };
    // A spare is written once the first journal holds a quarter of its size.
    for _ in 0..20 {
        write_mib(&db).await;
    }
    let spare = dir.path().join("spare.jnlspare");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !spare.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no spare journal 60 s after the first journal was a quarter full"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spare_inode = std::fs::metadata(&spare).expect("spare").ino();
    // The next journal is that file.
    let journal_of_spare = || {
        std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "jnl")
                    && std::fs::metadata(p).is_ok_and(|m| m.ino() == spare_inode)
            })
    };
    let mut last_key = 0;
    for _ in 0..80 {
        if journal_of_spare().is_some() {
            break;
        }
        last_key = write_mib(&db).await;
    }
    let journal = journal_of_spare().expect("a journal taken from the spare");
    let meta = std::fs::metadata(&journal).expect("journal");
    assert_eq!(meta.len(), JOURNAL, "a spare is a whole journal");
    assert!(meta.blocks() * 512 >= JOURNAL, "every block written before");
    let last_key = write_mib(&db).await.max(last_key);
    db.close().await;
    drop(ks);
    drop(db);

    let db = open(dir.path());
    let ks = db.keyspace("items").expect("keyspace");
    assert!(
        ks.get(last_key.to_be_bytes()).expect("get").is_some(),
        "written into the spare, read back after a reopen"
    );
    db.close().await;
}
