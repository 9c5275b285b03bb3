//! The shard-transfer calls migration builds on: fence (writes answer `Moving`, reads continue),
//! export of the log and of group/producer state, unfence, and drop.

mod common;

use common::*;
use shardq_broker::FsyncPolicy;
use shardq_protocol::{
    Connection, ErrorKind, Offset, ProducerSeq, Request, Response, ShardId, StoredBatch,
};

async fn export(
    conn: &Connection,
    shard: &ShardId,
    from: Offset,
    max_bytes: u32,
) -> (Vec<StoredBatch>, Offset, bool) {
    match conn
        .request(Request::ExportShard {
            shard: shard.clone(),
            from_offset: from,
            max_bytes,
        })
        .await
        .unwrap()
    {
        Response::Exported {
            batches,
            end_offset,
            fenced,
        } => (batches, end_offset, fenced),
        other => panic!("unexpected answer to export: {other:?}"),
    }
}

#[tokio::test]
async fn fence_export_unfence_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = connect(&handle).await;
    let shard = ShardId::new("mv", 1);
    assign(&conn, &shard, 2).await;
    let big = vec![9u8; 30_000];
    for seq in 0..5u64 {
        let ps = Some(ProducerSeq {
            producer_id: 11,
            sequence: seq,
        });
        produce(&conn, &shard, batch_of(&[&big, &big, &big]), ps)
            .await
            .unwrap();
    }
    let commit = |offset| Request::CommitOffset {
        shard: shard.clone(),
        epoch: 2,
        group: "g1".into(),
        offset,
    };
    assert_eq!(conn.request(commit(4)).await.unwrap(), Response::Committed);

    // Before the fence: an export says not fenced.
    let (_, end, fenced) = export(&conn, &shard, 0, 1).await;
    assert_eq!((end, fenced), (15, false));

    let fenced = conn
        .request(Request::FenceShard {
            shard: shard.clone(),
            move_id: 7,
        })
        .await
        .unwrap();
    assert_eq!(fenced, Response::Fenced { end_offset: 15 });
    let err = server_error(
        produce(&conn, &shard, batch_of(&[b"x"]), None)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, ErrorKind::Moving { .. }), "{err:?}");
    assert!(matches!(
        server_error(conn.request(commit(5)).await.unwrap_err()),
        ErrorKind::Moving { .. }
    ));
    // Reads continue while fenced.
    assert_eq!(read_all(&conn, &shard, 0).await.len(), 15);
    assert_eq!(
        conn.request(Request::FetchOffset {
            shard: shard.clone(),
            epoch: 2,
            group: "g1".into()
        })
        .await
        .unwrap(),
        Response::GroupOffset { offset: Some(4) }
    );

    // Export, chunk by chunk, returns every record, stored entries whole and in order.
    let mut from = 0;
    let mut exported = Vec::new();
    for _ in 0..100 {
        let (batches, end, fenced) = export(&conn, &shard, from, 50_000).await;
        assert!(fenced);
        assert_eq!(end, 15);
        if from == end {
            assert!(batches.is_empty());
            break;
        }
        for b in &batches {
            assert_eq!(b.base_offset, from, "export chunks must be contiguous");
            from = b.end_offset();
            exported.extend(b.batch.iter().map(|r| r.unwrap().value));
        }
    }
    assert_eq!(exported.len(), 15);
    assert!(exported.iter().all(|v| v[..] == big[..]));

    match conn
        .request(Request::ExportMeta {
            shard: shard.clone(),
        })
        .await
        .unwrap()
    {
        Response::Meta(meta) => {
            assert_eq!(meta.groups, vec![("g1".to_string(), 4)]);
            assert_eq!(meta.producers.len(), 1);
            assert_eq!(meta.producers[0].producer_id, 11);
            assert_eq!(meta.producers[0].last_sequence, 4);
            assert_eq!(meta.producers[0].base_offset, 12);
        }
        other => panic!("unexpected answer to export-meta: {other:?}"),
    }

    // A fence survives a restart (the shard stays fenced until unfenced or dropped).
    conn.close();
    handle.shutdown().await;
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = connect(&handle).await;
    let err = server_error(
        produce(&conn, &shard, batch_of(&[b"x"]), None)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, ErrorKind::Moving { .. }), "{err:?}");

    assert_eq!(
        conn.request(Request::UnfenceShard {
            shard: shard.clone(),
            move_id: 7
        })
        .await
        .unwrap(),
        Response::Ok
    );
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"x"]), None)
            .await
            .unwrap()
            .0,
        15
    );

    // A drop older than the current assignment is refused; a current one deletes the copy.
    let err = server_error(
        conn.request(Request::DropShard {
            shard: shard.clone(),
            epoch: 1,
        })
        .await
        .unwrap_err(),
    );
    assert!(matches!(err, ErrorKind::BadRequest { .. }), "{err:?}");
    assert_eq!(
        conn.request(Request::DropShard {
            shard: shard.clone(),
            epoch: 2
        })
        .await
        .unwrap(),
        Response::Ok
    );
    let err = server_error(
        conn.request(Request::ExportMeta {
            shard: shard.clone(),
        })
        .await
        .unwrap_err(),
    );
    assert!(matches!(err, ErrorKind::NotOwner { .. }), "{err:?}");

    // A new assignment after the drop starts an empty log.
    assign(&conn, &shard, 3).await;
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"fresh"]), None)
            .await
            .unwrap()
            .0,
        0
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn unsupported_and_standalone_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = connect(&handle).await;
    let err = server_error(
        conn.request(Request::Metadata { topics: vec![] })
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, ErrorKind::Unavailable { .. }), "{err:?}");
    let err = server_error(
        conn.request(Request::Heartbeat {
            id: 1,
            report: Default::default(),
            uuid: String::new(),
            incarnation: 1,
        })
        .await
        .unwrap_err(),
    );
    assert!(matches!(err, ErrorKind::Unsupported { .. }), "{err:?}");
    // An unknown move is named, so a router knows to send ImportShard (again).
    let err = server_error(
        conn.request(Request::MoveStatus { move_id: 1 })
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(&err, ErrorKind::UnknownShard { reason, .. } if reason.contains("no move 1")),
        "{err:?}"
    );
    handle.shutdown().await;
}
