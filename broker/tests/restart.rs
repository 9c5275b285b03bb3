//! Restart safety: after a clean shutdown, after dropping the handle without one, and after a real
//! `kill -9` of a broker process, everything acknowledged under `fsync always` is there, offsets
//! continue densely and producer state still deduplicates retries.
//!
//! The kill -9 test re-runs this test binary as a child process (`crash_child` below, which only
//! acts when `SHARDQ_CRASH_CHILD_DIR` is set) so the broker really dies without any cleanup.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use shardq_broker::FsyncPolicy;
use shardq_protocol::{ProducerSeq, ShardId};
use tokio::io::{AsyncBufReadExt, BufReader};

const CHILD_ENV: &str = "SHARDQ_CRASH_CHILD_DIR";

#[tokio::test]
async fn data_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let shard = ShardId::new("r", 1);
    let handle = broker(dir.path(), FsyncPolicy::Always).await;
    let conn = connect(&handle).await;
    assign(&conn, &shard, 1).await;
    for i in 0..20u32 {
        let v = i.to_be_bytes();
        assert_eq!(
            produce(&conn, &shard, batch_of(&[&v, &v]), None)
                .await
                .unwrap()
                .0,
            i as u64 * 2
        );
    }
    conn.close();
    handle.shutdown().await;

    let handle = broker(dir.path(), FsyncPolicy::Always).await;
    let conn = connect(&handle).await;
    assert_eq!(read_all(&conn, &shard, 0).await.len(), 40);
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"next"]), None)
            .await
            .unwrap()
            .0,
        40
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn data_survives_dropping_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let shard = ShardId::new("r", 2);
    let handle = broker(dir.path(), FsyncPolicy::Always).await;
    let conn = connect(&handle).await;
    assign(&conn, &shard, 1).await;
    for i in 0..10u32 {
        produce(&conn, &shard, batch_of(&[&i.to_be_bytes()]), None)
            .await
            .unwrap();
    }
    drop(conn);
    drop(handle);

    // The old instance's tasks release the database shortly after the drop; start() waits for
    // sled's lock.
    let handle = broker(dir.path(), FsyncPolicy::Always).await;
    let conn = connect(&handle).await;
    let all = read_all(&conn, &shard, 0).await;
    assert_eq!(
        all,
        (0..10u32)
            .map(|i| i.to_be_bytes().to_vec())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"next"]), None)
            .await
            .unwrap()
            .0,
        10
    );
    handle.shutdown().await;
}

/// Runs a broker for the parent test and waits to be killed. Does nothing in a normal test run.
#[tokio::test]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let handle = broker(std::path::Path::new(&dir), FsyncPolicy::Always).await;
    println!("CHILD_ADDR {}", handle.addr());
    // Bounded: the parent kills us long before this.
    tokio::time::sleep(Duration::from_secs(60)).await;
    handle.shutdown().await;
}

#[tokio::test]
async fn acknowledged_data_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            // libtest prints `test crash_child ... ` before the test's own output on that line.
            if let Some((_, a)) = l.split_once("CHILD_ADDR ") {
                return a.trim().to_string();
            }
        }
        panic!("child exited without reporting its address");
    })
    .await
    .expect("child reports its address");

    let conn = Arc::new(
        shardq_protocol::Connection::connect(&addr, Default::default())
            .await
            .unwrap(),
    );
    let shard = ShardId::new("crash", 1);
    assign(&conn, &shard, 1).await;
    // Several producers in flight, so acknowledgements come from shared (group) flushes; the
    // child is killed while more are in flight.
    let (tx, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let (conn, shard, tx) = (conn.clone(), shard.clone(), tx.clone());
        producers.push(tokio::spawn(async move {
            for seq in 0..10_000u64 {
                let value = format!("p{p}-s{seq}");
                let ps = Some(ProducerSeq {
                    producer_id: p,
                    sequence: seq,
                });
                match produce(&conn, &shard, batch_of(&[value.as_bytes()]), ps).await {
                    Ok((base, _, _)) => {
                        if tx.send((base, value)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acks = Vec::new();
    while acks.len() < 200 {
        match tokio::time::timeout(Duration::from_secs(20), acked.recv()).await {
            Ok(Some(a)) => acks.push(a),
            other => panic!("producers stalled: {other:?}"),
        }
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for p in producers {
        let _ = p.await;
    }
    while let Ok(a) = acked.try_recv() {
        acks.push(a);
    }

    let handle = broker(dir.path(), FsyncPolicy::Always).await;
    let conn = connect(&handle).await;
    let all = read_all(&conn, &shard, 0).await;
    for (offset, value) in &acks {
        assert_eq!(
            all.get(*offset as usize).map(Vec::as_slice),
            Some(value.as_bytes()),
            "acknowledged record at offset {offset} lost after kill -9"
        );
    }
    // Offsets continue densely and the producers' state came back: the last acknowledged batch of
    // producer 0, retried, is a duplicate.
    let next = produce(&conn, &shard, batch_of(&[b"after"]), None)
        .await
        .unwrap()
        .0;
    assert_eq!(next, all.len() as u64);
    let (last_off, last_val) = acks
        .iter()
        .filter(|(_, v)| v.starts_with("p0-"))
        .max_by_key(|(o, _)| *o)
        .cloned()
        .expect("producer 0 got acknowledgements");
    let seq: u64 = last_val.trim_start_matches("p0-s").parse().unwrap();
    let retry = produce(
        &conn,
        &shard,
        batch_of(&[last_val.as_bytes()]),
        Some(ProducerSeq {
            producer_id: 0,
            sequence: seq,
        }),
    )
    .await
    .unwrap();
    assert!(
        retry.2,
        "a retried batch after kill -9 must be recognised as a duplicate"
    );
    assert!(retry.0 >= last_off);
    handle.shutdown().await;
}
