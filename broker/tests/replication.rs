//! The leader's side of replication on a standalone broker: one replica fetch for many shards
//! far behind stays within one frame, and every shard gets its turn.

mod common;

use common::*;
use shardq_broker::FsyncPolicy;
use shardq_protocol::{
    Acks, BatchBuilder, BrokerAddr, ProduceRequest, ReplicaFetchRequest, ReplicaPosition,
    ReplicaSet, Request, Response, ShardAssignment, ShardId, DEFAULT_MAX_FRAME,
};

const SHARDS: u32 = 24;

/// Broker 1 leads `shard` with broker 2 as a follower that is not in sync.
async fn lead(conn: &shardq_protocol::Connection, shard: &ShardId) {
    let set = ReplicaSet {
        leader: Some(BrokerAddr {
            id: 1,
            addr: String::new(),
        }),
        leader_epoch: 1,
        replicas: vec![1, 2],
        isr: vec![1],
        isr_version: 1,
        min_insync: 1,
    };
    let r = conn
        .request(Request::AssignShards {
            epoch: 1,
            shards: vec![ShardAssignment {
                shard: shard.clone(),
                epoch: 1,
                replication: set,
            }],
        })
        .await
        .unwrap();
    assert_eq!(r, Response::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_for_many_shards_far_behind_fits_one_frame_and_every_shard_gets_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let handle = broker(dir.path(), FsyncPolicy::Never).await;
    let conn = connect(&handle).await;
    // 24 shards x ~1.5 MB: far more than one 16 MiB frame.
    let mut ends = Vec::new();
    for p in 1..=SHARDS {
        let shard = ShardId::new("far", p);
        lead(&conn, &shard).await;
        for _ in 0..3 {
            let mut b = BatchBuilder::default();
            for i in 0..500u32 {
                b.push(None, &[i as u8; 1000], 0);
            }
            let r = conn
                .request(Request::Produce(ProduceRequest {
                    shard: shard.clone(),
                    epoch: 1,
                    producer: None,
                    acks: Acks::Leader,
                    batch: b.finish(),
                }))
                .await
                .unwrap();
            assert!(matches!(r, Response::Produced { .. }), "{r:?}");
        }
        ends.push(1500u64);
    }
    let mut at: Vec<u64> = vec![0; SHARDS as usize];
    let mut rounds = 0;
    while at.iter().zip(&ends).any(|(a, e)| a < e) {
        rounds += 1;
        assert!(rounds < 50, "no progress: {at:?}");
        // Like a follower: positions in a rotating order.
        let mut order: Vec<usize> = (0..SHARDS as usize).collect();
        order.rotate_left(rounds % SHARDS as usize);
        let positions = order
            .iter()
            .map(|&i| ReplicaPosition {
                shard: ShardId::new("far", i as u32 + 1),
                leader_epoch: 1,
                fetch_offset: at[i],
                last_epoch: (at[i] > 0).then_some(1),
                durable_end: at[i],
                groups_version: (1, 0),
            })
            .collect();
        let answer = conn
            .request(Request::ReplicaFetch(ReplicaFetchRequest {
                follower: 2,
                incarnation: 1,
                positions,
                max_bytes: DEFAULT_MAX_FRAME as u32,
                max_wait_ms: 0,
            }))
            .await
            .expect("the answer fits one frame");
        let Response::ReplicaFetched(results) = answer else {
            panic!("{answer:?}")
        };
        for r in results {
            let i = (r.shard.partition - 1) as usize;
            let data = r.result.expect("served");
            assert_eq!(data.diverging, None);
            for b in &data.batches {
                assert_eq!(b.base_offset, at[i]);
                at[i] = b.end_offset();
            }
        }
    }
    handle.shutdown().await;
}
