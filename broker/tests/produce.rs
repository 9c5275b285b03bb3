//! Produce-side behaviour over the wire: idempotent retries, refusals (not owner, oversized record,
//! out-of-order sequence), and a garbage-sending client that must not disturb anyone else.

mod common;

use std::time::Duration;

use common::*;
use shardq_broker::{start, FsyncPolicy};
use shardq_protocol::{ErrorKind, ProducerSeq, ShardId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_retried_batch_is_appended_once() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Always).await;
    let conn = connect(&handle).await;
    let shard = ShardId::new("idem", 1);
    assign(&conn, &shard, 1).await;

    let p = |sequence| {
        Some(ProducerSeq {
            producer_id: 42,
            sequence,
        })
    };
    let b0 = batch_of(&[b"a", b"b"]);
    assert_eq!(
        produce(&conn, &shard, b0.clone(), p(0)).await.unwrap(),
        (0, 2, false)
    );
    assert_eq!(
        produce(&conn, &shard, b0.clone(), p(0)).await.unwrap(),
        (0, 2, true)
    );
    let b1 = batch_of(&[b"c"]);
    assert_eq!(
        produce(&conn, &shard, b1.clone(), p(1)).await.unwrap(),
        (2, 1, false)
    );
    assert_eq!(
        produce(&conn, &shard, b1, p(1)).await.unwrap(),
        (2, 1, true)
    );
    // An older sequence is a duplicate too: nothing is appended.
    assert_eq!(
        produce(&conn, &shard, b0, p(0)).await.unwrap(),
        (2, 1, true)
    );
    // A gap is refused with what was expected.
    let err = server_error(
        produce(&conn, &shard, batch_of(&[b"x"]), p(5))
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(
            err,
            ErrorKind::OutOfOrderSequence {
                expected: 2,
                got: 5,
                producer_id: 42,
                ..
            }
        ),
        "{err:?}"
    );
    // Another producer has its own sequence space.
    let other = Some(ProducerSeq {
        producer_id: 7,
        sequence: 9,
    });
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"d"]), other)
            .await
            .unwrap(),
        (3, 1, false)
    );
    assert_eq!(
        read_all(&conn, &shard, 0).await,
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn producer_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let shard = ShardId::new("idem", 2);
    let p0 = Some(ProducerSeq {
        producer_id: 1,
        sequence: 0,
    });
    let handle = broker(dir.path(), FsyncPolicy::Always).await;
    let conn = connect(&handle).await;
    assign(&conn, &shard, 1).await;
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"x", b"y"]), p0)
            .await
            .unwrap(),
        (0, 2, false)
    );
    conn.close();
    handle.shutdown().await;

    let handle = broker(dir.path(), FsyncPolicy::Always).await;
    let conn = connect(&handle).await;
    // Served at once after the restart: no new assignment needed.
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"x", b"y"]), p0)
            .await
            .unwrap(),
        (0, 2, true)
    );
    let p1 = Some(ProducerSeq {
        producer_id: 1,
        sequence: 1,
    });
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"z"]), p1).await.unwrap(),
        (2, 1, false)
    );
    assert_eq!(read_all(&conn, &shard, 0).await.len(), 3);
    handle.shutdown().await;
}

#[tokio::test]
async fn unassigned_shards_and_oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), FsyncPolicy::Never);
    config.max_record_bytes = 1000;
    let handle = start(config).await.unwrap();
    let conn = connect(&handle).await;
    let shard = ShardId::new("t", 1);

    let err = server_error(
        produce(&conn, &shard, batch_of(&[b"a"]), None)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&err, ErrorKind::NotOwner { shard, .. } if shard == "t:P1"),
        "{err:?}"
    );
    let err = server_error(fetch(&conn, &shard, 0, 1000, 0).await.unwrap_err());
    assert!(matches!(err, ErrorKind::NotOwner { .. }), "{err:?}");

    assign(&conn, &shard, 3).await;
    let big = vec![0u8; 1001];
    let err = server_error(
        produce(&conn, &shard, batch_of(&[b"ok", &big]), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err,
        ErrorKind::RecordTooLarge {
            size: 1001,
            max: 1000
        }
    );
    // Nothing of the refused batch was appended.
    assert_eq!(
        produce(&conn, &shard, batch_of(&[&big[..1000]]), None)
            .await
            .unwrap(),
        (0, 1, false)
    );

    // Past the end reads nothing and tells where the shard ends (a reader that outlived a crash
    // reads on from there; see the consumer).
    let (hw, batches) = fetch(&conn, &shard, 5, 1000, 0).await.unwrap();
    assert_eq!(hw, 1);
    assert!(batches.is_empty());
    // The NotOwner answer carries the newest epoch this broker has seen.
    let err = server_error(
        produce(&conn, &ShardId::new("t", 2), batch_of(&[b"a"]), None)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(err, ErrorKind::NotOwner { epoch: 3, .. }),
        "{err:?}"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn garbage_closes_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let good = connect(&handle).await;
    let shard = ShardId::new("g", 1);
    assign(&good, &shard, 1).await;

    for garbage in [
        &b"\x00\x00\x00\x05hello"[..],
        &b"\xff\xff\xff\xffxxxx"[..],
        &b"GET / HTTP/1.1\r\n\r\n"[..],
    ] {
        let mut raw = tokio::net::TcpStream::connect(handle.addr()).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        let mut buf = [0u8; 256];
        // The server closes the socket (EOF or reset), within a bounded time.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match raw.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "garbage {garbage:?} did not close the connection"
        );
    }
    assert_eq!(
        produce(&good, &shard, batch_of(&[b"still here"]), None)
            .await
            .unwrap(),
        (0, 1, false)
    );
    let fresh = connect(&handle).await;
    assert_eq!(
        read_all(&fresh, &shard, 0).await,
        vec![b"still here".to_vec()]
    );
    handle.shutdown().await;
}
