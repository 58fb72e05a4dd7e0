//! storage-bench: durable group-commit insert benchmark for candidate queue storage engines.
//!
//! Usage:
//!   storage-bench all [--n N] [--dir DIR]            run every engine x layout x mode (one child process each)
//!   storage-bench run ENGINE LAYOUT MODE [--n N] [--dir DIR]
//!     ENGINE = fjall | redb | sqlite ; LAYOUT = seq | rand ; MODE = insert | cycle
//!
//! Each commit = 64 envelopes (~200 B), made durable with an fsync before the next one starts.
//! `cycle` mode: each commit inserts 64 new envelopes and deletes (acks) the 64 inserted
//! ACK_LAG commits earlier; the rest is drained at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const ACK_LAG: usize = 16; // commits between enqueue and ack in cycle mode (~1024 in flight)
const TIME_LIMIT: Duration = Duration::from_secs(60);

trait Engine {
    /// Atomically insert `puts` and delete `dels`, durable (fsync) on return.
    fn commit(&mut self, puts: &[([u8; 16], Vec<u8>)], dels: &[[u8; 16]]);
    fn close(self: Box<Self>);
}

// ---------------- fjall ----------------
struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}
impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir).open().unwrap();
        // Optional tuning: FJALL_MEMTABLE_MB (default 64 MiB in fjall 3.1).
        let memtable_mb: Option<u64> = std::env::var("FJALL_MEMTABLE_MB").ok().map(|v| v.parse().unwrap());
        let ks = db
            .keyspace("queue", || {
                let o = fjall::KeyspaceCreateOptions::default();
                match memtable_mb {
                    Some(mb) => o.max_memtable_size(mb * 1024 * 1024),
                    None => o,
                }
            })
            .unwrap();
        Fjall { db, ks }
    }
}
impl Engine for Fjall {
    fn commit(&mut self, puts: &[([u8; 16], Vec<u8>)], dels: &[[u8; 16]]) {
        let mut b = self.db.batch();
        for (k, v) in puts {
            b.insert(&self.ks, k.as_slice(), v.as_slice());
        }
        for k in dels {
            b.remove(&self.ks, k.as_slice());
        }
        b.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    fn close(self: Box<Self>) {
        drop(self.ks);
        drop(self.db);
    }
}

// ---------------- redb ----------------
const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("queue");
struct Redb {
    db: redb::Database,
}
impl Redb {
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("queue.redb")).unwrap();
        Redb { db }
    }
}
impl Engine for Redb {
    fn commit(&mut self, puts: &[([u8; 16], Vec<u8>)], dels: &[[u8; 16]]) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in puts {
                t.insert(k.as_slice(), v.as_slice()).unwrap();
            }
            for k in dels {
                t.remove(k.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn close(self: Box<Self>) {
        drop(self.db);
    }
}

// ---------------- sqlite ----------------
struct Sqlite {
    conn: rusqlite::Connection,
}
impl Sqlite {
    fn open(dir: &Path) -> Self {
        let conn = rusqlite::Connection::open(dir.join("queue.sqlite")).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS q (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
        )
        .unwrap();
        Sqlite { conn }
    }
}
impl Engine for Sqlite {
    fn commit(&mut self, puts: &[([u8; 16], Vec<u8>)], dels: &[[u8; 16]]) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut ins = tx.prepare_cached("INSERT INTO q (k, v) VALUES (?1, ?2)").unwrap();
            for (k, v) in puts {
                ins.execute((k.as_slice(), v.as_slice())).unwrap();
            }
            let mut del = tx.prepare_cached("DELETE FROM q WHERE k = ?1").unwrap();
            for k in dels {
                del.execute((k.as_slice(),)).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn close(self: Box<Self>) {
        self.conn.close().map_err(|(_, e)| e).unwrap();
    }
}

// ---------------- helpers ----------------
fn write_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap()
}

/// Allocated bytes (like `du`), so preallocated-but-unused file space is not counted.
fn dir_size(p: &Path) -> u64 {
    dir_sizes(p).1
}

/// (apparent bytes, allocated bytes)
fn dir_sizes(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let md = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if md.is_dir() {
                let (a, b) = dir_sizes(&e.path());
                total.0 += a;
                total.1 += b;
            } else {
                total.0 += md.len();
                total.1 += md.blocks() * 512;
            }
        }
    }
    total
}

/// Small xorshift PRNG so envelope contents vary (realistic compressibility).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn envelope(id: &[u8; 16], seq: u64, rng: &mut Rng) -> Vec<u8> {
    const ALPH: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut payload = String::with_capacity(20);
    for _ in 0..20 {
        payload.push(ALPH[(rng.next() % ALPH.len() as u64) as usize] as char);
    }
    let v = format!(
        r#"{{"id":"{}","queue":"orders","seq":{},"attempt":0,"enqueued_at":{},"headers":{{"ct":"application/json"}},"payload":{{"order":{},"note":"{}"}}}}"#,
        uuid::Uuid::from_bytes(*id),
        seq,
        1_700_000_000_000u64 + seq,
        rng.next() % 1_000_000,
        payload
    );
    v.into_bytes()
}

fn key(layout: &str, seq: u64) -> [u8; 16] {
    match layout {
        "seq" => *uuid::Uuid::now_v7().as_bytes(),
        "rand" => *uuid::Uuid::new_v4().as_bytes(),
        "u64" => {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&seq.to_be_bytes());
            k
        }
        _ => panic!("layout must be seq|rand|u64"),
    }
}

fn run(engine: &str, layout: &str, mode: &str, n: usize, base: &Path) {
    let dir = base.join(format!("{engine}-{layout}-{mode}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wb0 = write_bytes();
    let mut e: Box<dyn Engine> = match engine {
        "fjall" => Box::new(Fjall::open(&dir)),
        "redb" => Box::new(Redb::open(&dir)),
        "sqlite" => Box::new(Sqlite::open(&dir)),
        _ => panic!("engine must be fjall|redb|sqlite"),
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut pending: std::collections::VecDeque<Vec<[u8; 16]>> = Default::default();
    let mut seq = 0u64;
    let mut env_bytes = 0u64;
    let mut max_dir = 0u64;
    let mut commits = 0u64;
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(n / BATCH + 1);
    while (seq as usize) < n && t0.elapsed() < TIME_LIMIT {
        let puts: Vec<([u8; 16], Vec<u8>)> = (0..BATCH)
            .map(|_| {
                let k = key(layout, seq);
                let v = envelope(&k, seq, &mut rng);
                seq += 1;
                env_bytes += v.len() as u64;
                (k, v)
            })
            .collect();
        let dels = if mode == "cycle" && pending.len() >= ACK_LAG {
            pending.pop_front().unwrap()
        } else {
            Vec::new()
        };
        if mode == "cycle" {
            pending.push_back(puts.iter().map(|(k, _)| *k).collect());
        }
        let tc = Instant::now();
        e.commit(&puts, &dels);
        lat.push(tc.elapsed());
        commits += 1;
        if commits % 256 == 0 {
            max_dir = max_dir.max(dir_size(&dir));
        }
    }
    // drain remaining acks (cycle mode)
    while let Some(d) = pending.pop_front() {
        e.commit(&[], &d);
    }
    let elapsed = t0.elapsed();
    let wb_open = write_bytes() - wb0;
    let size_open = dir_size(&dir);
    max_dir = max_dir.max(size_open);
    e.close();
    let wb_closed = write_bytes() - wb0;
    let (apparent_closed, size_closed) = dir_sizes(&dir);
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    let n = seq as f64;
    // machine-readable line
    println!(
        "RESULT engine={engine} layout={layout} mode={mode} n={seq} secs={:.2} ins_per_s={:.0} \
         commits_per_s={:.0} p50_ms={:.2} p99_ms={:.2} avg_env_B={:.0} wb_per_env_B={:.0} \
         wb_per_env_incl_close_B={:.0} dir_open_MB={:.2} dir_closed_MB={:.2} dir_closed_apparent_MB={:.2} dir_max_MB={:.2}",
        elapsed.as_secs_f64(),
        n / elapsed.as_secs_f64(),
        commits as f64 / elapsed.as_secs_f64(),
        p(0.5),
        p(0.99),
        env_bytes as f64 / n,
        wb_open as f64 / n,
        wb_closed as f64 / n,
        size_open as f64 / 1e6,
        size_closed as f64 / 1e6,
        apparent_closed as f64 / 1e6,
        max_dir as f64 / 1e6,
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut n = 200_000usize;
    let mut base = PathBuf::from("/work/storage-bench-tmp");
    let mut pos = Vec::new();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--n" => {
                n = args[i + 1].parse().unwrap();
                i += 1;
            }
            "--dir" => {
                base = PathBuf::from(&args[i + 1]);
                i += 1;
            }
            s => pos.push(s.to_string()),
        }
        i += 1;
    }
    std::fs::create_dir_all(&base).unwrap();
    match pos.first().map(String::as_str) {
        Some("run") => run(&pos[1], &pos[2], &pos[3], n, &base),
        Some("all") | None => {
            let exe = std::env::current_exe().unwrap();
            let engines: Vec<String> = pos.get(1).map_or_else(
                || vec!["fjall".into(), "redb".into(), "sqlite".into()],
                |s| s.split(',').map(String::from).collect(),
            );
            for engine in &engines {
                for mode in ["insert", "cycle"] {
                    for layout in ["seq", "rand"] {
                        let st = std::process::Command::new(&exe)
                            .args(["run", engine, layout, mode, "--n", &n.to_string()])
                            .arg("--dir")
                            .arg(&base)
                            .status()
                            .unwrap();
                        assert!(st.success());
                    }
                }
            }
        }
        Some(x) => panic!("unknown command {x}"),
    }
}
