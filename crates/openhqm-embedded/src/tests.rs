use super::*;

fn open(dir: &Path) -> EmbeddedDb {
    EmbeddedDb::open(dir, &Options::default()).expect("open")
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
