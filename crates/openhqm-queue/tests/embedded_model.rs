//! Model-based test of the embedded queue: random sequences of publish,
//! receive, ack, retry, dead-letter, redrive, sync, restart and crash are run
//! against the real queue on disk and against a plain in-memory model; after
//! every step the two must agree on what is stored, leased and dead.
//! Deferred publishes are held in memory until a sync or a clean shutdown,
//! so a crash loses exactly those still held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_queue::{Delivery, Durability, Nack, OutgoingMessage, QueueBackend};

#[derive(Default, Debug)]
struct Model {
    /// body -> copies stored and not leased
    waiting: BTreeMap<String, usize>,
    /// bodies leased right now (each entry one delivery)
    leased: Vec<String>,
    /// body -> copies dead-lettered
    dead: BTreeMap<String, usize>,
    /// bodies published deferred and not written since (no sync, nack or
    /// clean shutdown): a crash loses them
    unwritten: BTreeSet<String>,
}

fn add(map: &mut BTreeMap<String, usize>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

fn take(map: &mut BTreeMap<String, usize>, key: &str) -> bool {
    match map.get_mut(key) {
        Some(n) if *n > 0 => {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
            true
        }
        _ => false,
    }
}

fn count(map: &BTreeMap<String, usize>) -> u64 {
    map.values().sum::<usize>() as u64
}

async fn dead_bodies(queue: &dyn QueueBackend) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in queue
        .dead_letters(usize::MAX)
        .await
        .expect("list dead letters")
    {
        add(&mut out, &String::from_utf8_lossy(&d.message.body));
    }
    out
}

struct Subject {
    dir: tempfile::TempDir,
    db: EmbeddedDb,
    queue: Arc<dyn QueueBackend>,
}

fn open(dir: tempfile::TempDir) -> Subject {
    let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
    let config = EmbeddedQueueConfig {
        name: "model".into(),
        dead_letter_name: "model-dlq".into(),
        lease: Duration::from_secs(600),
        max_payload: 1024,
    };
    let queue = Arc::new(EmbeddedQueue::open(db.clone(), config).expect("queue"));
    Subject { dir, db, queue }
}

async fn run(seed: u64, steps: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut subject = open(tempfile::tempdir().expect("tempdir"));
    let mut model = Model::default();
    let mut held: Vec<Delivery> = Vec::new();
    let mut next = 0u32;
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        match rng.u8(0..100) {
            0..=29 => {
                let body = format!("m{next}");
                next += 1;
                let deferred = rng.bool();
                let message = OutgoingMessage {
                    durability: if deferred {
                        Durability::Deferred
                    } else {
                        Durability::Full
                    },
                    ..OutgoingMessage::new(body.clone().into_bytes())
                };
                subject.queue.publish(message).await.expect("publish");
                add(&mut model.waiting, &body);
                if deferred {
                    model.unwritten.insert(body);
                }
            }
            30..=49 => {
                let got = subject
                    .queue
                    .receive(rng.usize(1..4), Duration::ZERO)
                    .await
                    .expect("receive");
                let expected = count(&model.waiting).min(got.len() as u64 + 3); // at most what waits
                assert!(
                    got.len() as u64 <= expected,
                    "{ctx}: more deliveries than waiting messages"
                );
                if count(&model.waiting) > 0 {
                    assert!(
                        !got.is_empty(),
                        "{ctx}: messages wait but none was delivered"
                    );
                }
                for d in got {
                    let body = String::from_utf8_lossy(&d.message().body).into_owned();
                    assert!(
                        take(&mut model.waiting, &body),
                        "{ctx}: delivered {body} which is not waiting"
                    );
                    model.leased.push(body);
                    held.push(d);
                }
            }
            50..=64 if !held.is_empty() => {
                let i = rng.usize(0..held.len());
                held.swap_remove(i).ack().await.expect("ack");
                let body = model.leased.swap_remove(i);
                model.unwritten.remove(&body);
            }
            65..=74 if !held.is_empty() => {
                let i = rng.usize(0..held.len());
                held.swap_remove(i)
                    .nack(Nack::Retry {
                        delay: Duration::ZERO,
                    })
                    .await
                    .expect("retry");
                let body = model.leased.swap_remove(i);
                model.unwritten.remove(&body);
                add(&mut model.waiting, &body);
            }
            75..=84 if !held.is_empty() => {
                let i = rng.usize(0..held.len());
                held.swap_remove(i)
                    .nack(Nack::DeadLetter {
                        reason: "model".into(),
                    })
                    .await
                    .expect("dlq");
                let body = model.leased.swap_remove(i);
                model.unwritten.remove(&body);
                add(&mut model.dead, &body);
            }
            85..=91 => {
                let limit = rng.usize(1..4);
                let before = dead_bodies(&*subject.queue).await;
                let moved = subject.queue.redrive(limit).await.expect("redrive");
                assert_eq!(
                    moved,
                    count(&model.dead).min(limit as u64),
                    "{ctx}: redrive count"
                );
                // Which dead letters move first is the queue's choice; learn it
                // from the listing, then check the model held exactly those.
                let mut gone = before;
                for (body, n) in dead_bodies(&*subject.queue).await {
                    for _ in 0..n {
                        assert!(
                            take(&mut gone, &body),
                            "{ctx}: redrive created dead letter {body}"
                        );
                    }
                }
                assert_eq!(
                    count(&gone),
                    moved,
                    "{ctx}: listing disagrees with redrive count"
                );
                for (body, n) in gone {
                    for _ in 0..n {
                        assert!(
                            take(&mut model.dead, &body),
                            "{ctx}: redrove {body} which was not dead"
                        );
                        add(&mut model.waiting, &body);
                    }
                }
            }
            92..=93 => {
                subject.queue.sync().await.expect("sync");
                model.unwritten.clear();
            }
            94..=99 => {
                // A restart: leases are lost and every unacknowledged message
                // waits again. A clean one (`close`) writes what is held; a
                // crash (no `close`: the writes already made are flushed, as
                // the OS would keep them) loses it.
                let crash = rng.bool();
                held.clear();
                for body in model.leased.drain(..) {
                    add(&mut model.waiting, &body);
                }
                if crash {
                    for body in std::mem::take(&mut model.unwritten) {
                        assert!(take(&mut model.waiting, &body), "{ctx}: {body} held");
                    }
                } else {
                    subject.queue.close().await;
                    model.unwritten.clear();
                }
                subject.db.close().await;
                // Every handle must be gone before the directory is opened again.
                let Subject { dir, db, queue } = subject;
                drop((queue, db));
                subject = open(dir);
            }
            _ => {}
        }
        let stored = count(&model.waiting) + model.leased.len() as u64;
        assert_eq!(
            subject.queue.depth().await.expect("depth"),
            stored,
            "{ctx}: depth"
        );
        assert_eq!(
            subject.queue.dead_letter_depth().await.expect("dlq"),
            count(&model.dead),
            "{ctx}: dead letters"
        );
    }
    // Redriven bodies are compared as a multiset by draining everything.
    held.clear();
    for body in model.leased.drain(..) {
        add(&mut model.waiting, &body);
    }
    subject.queue.close().await;
    subject.db.close().await;
    let Subject { dir, db, queue } = subject;
    drop((queue, db));
    let subject = open(dir);
    let mut drained = BTreeMap::new();
    loop {
        let got = subject
            .queue
            .receive(16, Duration::ZERO)
            .await
            .expect("receive");
        if got.is_empty() {
            break;
        }
        for d in got {
            add(&mut drained, &String::from_utf8_lossy(&d.message().body));
            d.ack().await.expect("ack");
        }
    }
    let dead = dead_bodies(&*subject.queue).await;
    assert_eq!(
        count(&drained),
        count(&model.waiting),
        "seed {seed}: final waiting count"
    );
    assert_eq!(
        count(&dead),
        count(&model.dead),
        "seed {seed}: final dead count"
    );
    let mut all_model = model.waiting.clone();
    for (k, v) in &model.dead {
        *all_model.entry(k.clone()).or_default() += v;
    }
    let mut all_real = drained;
    for (k, v) in dead {
        *all_real.entry(k).or_default() += v;
    }
    assert_eq!(
        all_real, all_model,
        "seed {seed}: no message lost or duplicated"
    );
    subject.db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_agrees_with_the_model() {
    for seed in 0..24 {
        run(seed, 250).await;
    }
}
