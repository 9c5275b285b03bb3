//! Long-poll fetch: a fetch at the end waits for the next append and answers within milliseconds of
//! it; an idle fetch answers empty after its max wait.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shardq_broker::FsyncPolicy;
use shardq_protocol::ShardId;

#[tokio::test]
async fn a_waiting_fetch_returns_soon_after_a_produce() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = std::sync::Arc::new(connect(&handle).await);
    let shard = ShardId::new("lp", 1);
    assign(&conn, &shard, 1).await;
    produce(&conn, &shard, batch_of(&[b"first"]), None)
        .await
        .unwrap();

    let waiter = {
        let (conn, shard) = (conn.clone(), shard.clone());
        tokio::spawn(async move {
            let r = fetch(&conn, &shard, 1, 1 << 20, 10_000).await;
            (r, Instant::now())
        })
    };
    // The fetch must really be waiting before we produce: give it a moment, then check it has
    // not answered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "fetch at the end answered without waiting"
    );
    let produced_at = Instant::now();
    produce(&conn, &shard, batch_of(&[b"second"]), None)
        .await
        .unwrap();
    let (result, answered_at) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiting fetch answers after a produce")
        .unwrap();
    let (hw, batches) = result.unwrap();
    assert_eq!(hw, 2);
    let recs = records_from(&batches, 1);
    assert_eq!(recs.len(), 1);
    assert_eq!(&recs[0].1.value[..], b"second");
    let latency = answered_at.duration_since(produced_at);
    assert!(
        latency < Duration::from_millis(250),
        "woke {latency:?} after the produce"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn an_idle_fetch_answers_empty_after_max_wait() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = connect(&handle).await;
    let shard = ShardId::new("lp", 2);
    assign(&conn, &shard, 1).await;
    let started = Instant::now();
    let (hw, batches) = fetch(&conn, &shard, 0, 1 << 20, 200).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(hw, 0);
    assert!(batches.is_empty());
    assert!(
        waited >= Duration::from_millis(190),
        "answered after {waited:?}, before max_wait"
    );
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    handle.shutdown().await;
}

#[tokio::test]
async fn fetch_respects_max_bytes_but_returns_at_least_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = connect(&handle).await;
    let shard = ShardId::new("mb", 1);
    assign(&conn, &shard, 1).await;
    let v = vec![1u8; 10_000];
    for _ in 0..10 {
        produce(&conn, &shard, batch_of(&[&v]), None).await.unwrap();
    }
    let (_, one) = fetch(&conn, &shard, 3, 1, 0).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].base_offset, 3);
    let (_, some) = fetch(&conn, &shard, 0, 35_000, 0).await.unwrap();
    assert!(
        (3..=4).contains(&some.len()),
        "{} batches for 35 kB",
        some.len()
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_waiting_fetch_learns_at_once_that_the_shard_left() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = std::sync::Arc::new(connect(&handle).await);
    let shard = ShardId::new("lp", 3);
    assign(&conn, &shard, 1).await;
    let waiter = {
        let (conn, shard) = (conn.clone(), shard.clone());
        tokio::spawn(async move { fetch(&conn, &shard, 0, 1 << 20, 10_000).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "fetch at the end answered without waiting"
    );
    let dropped = conn
        .request(shardq_protocol::Request::DropShard {
            shard: shard.clone(),
            epoch: 1,
        })
        .await
        .unwrap();
    assert_eq!(dropped, shardq_protocol::Response::Ok);
    let result = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiting fetch answers when the shard is dropped")
        .unwrap();
    let err = server_error(result.unwrap_err());
    assert!(
        matches!(err, shardq_protocol::ErrorKind::NotOwner { .. }),
        "{err:?}"
    );
    handle.shutdown().await;
}

/// A fetch past the end (the reader's position outlived records a crash took back) does not wait
/// for the log to grow past it, which would make the reader skip the records written meanwhile:
/// it answers at once with the real end.
#[tokio::test]
async fn a_fetch_past_the_end_answers_at_once_with_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = connect(&handle).await;
    let shard = ShardId::new("lp", 9);
    assign(&conn, &shard, 1).await;
    produce(&conn, &shard, batch_of(&[b"a", b"b"]), None)
        .await
        .unwrap();
    let started = Instant::now();
    let (hw, batches) = fetch(&conn, &shard, 5, 1 << 20, 10_000).await.unwrap();
    assert_eq!(hw, 2);
    assert!(batches.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?} for a log that ends before the offset",
        started.elapsed()
    );
    handle.shutdown().await;
}
