//! The router with real `shardq_broker` nodes: brokers register and heartbeat on their own,
//! topic create pushes assignments so a produce right after it works, the proxy reaches the
//! owners, heartbeat reports show up in describe, and a broker restart brings its shards back.

mod common;

use std::time::Duration;

use shardq_broker::{BrokerConfig, BrokerHandle};
use shardq_protocol::{
    Acks, BatchBuilder, ErrorKind, FetchRequest, ProduceRequest, Request, Response, ShardId,
    StoredBatch,
};

use common::*;

async fn broker(id: u32, dir: &std::path::Path, router: &str) -> BrokerHandle {
    let mut config = BrokerConfig::new(id, dir.join(format!("broker-{id}")));
    config.router = Some(router.to_string());
    config.heartbeat = Duration::from_millis(50);
    shardq_broker::start(config).await.expect("broker starts")
}

fn produce(shard: &ShardId, epoch: u64, values: &[&str]) -> Request {
    let mut b = BatchBuilder::default();
    for v in values {
        b.push(None, v.as_bytes(), 0);
    }
    Request::Produce(ProduceRequest {
        shard: shard.clone(),
        epoch,
        producer: None,
        acks: Acks::Durable,
        batch: b.finish(),
    })
}

fn fetch(shard: &ShardId, epoch: u64, offset: u64) -> Request {
    Request::Fetch(FetchRequest {
        shard: shard.clone(),
        epoch,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms: 200,
    })
}

fn values(batches: &[StoredBatch], from: u64) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| b.records_from(from))
        .map(|(_, r)| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

#[tokio::test]
async fn produce_and_fetch_through_the_router_reach_the_owners() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(&dir.path().join("router"), Duration::from_secs(3)).await;
    let raddr = router.addr().to_string();
    let mut brokers = Vec::new();
    for id in 1..=3 {
        brokers.push(broker(id, dir.path(), &raddr).await);
    }
    let c = client(&raddr).await;
    await_up(&c, &[1, 2, 3]).await;
    ask(
        &c,
        Request::CreateTopic {
            name: "T1".into(),
            partitions: 6,
            replication_factor: None,
            min_insync: None,
            retention: Default::default(),
        },
    )
    .await
    .unwrap();
    let table = routing(&c, &["T1"]).await;

    for route in &table.shards {
        let shard = &route.shard;
        let a = format!("{shard}-a");
        let b = format!("{shard}-b");
        // Right after the create, through the router: the push made the owner ready.
        match ask(&c, produce(shard, table.epoch, &[&a, &b])).await {
            Ok(Response::Produced {
                base_offset: 0,
                count: 2,
                ..
            }) => {}
            other => panic!("{shard}: {other:?}"),
        }
        // The record really is on the owner: read it there directly.
        let owner = client(&route.owner.as_ref().unwrap().addr).await;
        match ask(&owner, fetch(shard, table.epoch, 0)).await {
            Ok(Response::Fetched {
                high_watermark: 2,
                batches,
                ..
            }) => {
                assert_eq!(values(&batches, 0), vec![a.clone(), b.clone()]);
            }
            other => panic!("{shard}: {other:?}"),
        }
        // And back through the router.
        match ask(&c, fetch(shard, table.epoch, 1)).await {
            Ok(Response::Fetched {
                high_watermark: 2,
                batches,
                ..
            }) => {
                assert_eq!(values(&batches, 1), vec![b]);
            }
            other => panic!("{shard}: {other:?}"),
        }
        let commit = Request::CommitOffset {
            shard: shard.clone(),
            epoch: table.epoch,
            group: "g".into(),
            offset: 2,
        };
        assert!(matches!(ask(&c, commit).await, Ok(Response::Committed)));
    }

    // Owners report their shards in heartbeats; describe shows the offsets.
    eventually("reports with end offsets", || async {
        match ask(&c, Request::DescribeTopic { name: "T1".into() }).await {
            Ok(Response::Topic(d)) => d
                .shards
                .iter()
                .all(|(_, r)| r.as_ref().is_some_and(|r| r.end_offset == 2))
                .then_some(()),
            other => panic!("{other:?}"),
        }
    })
    .await;

    for b in brokers {
        b.shutdown().await;
    }
    router.shutdown().await;
}

#[tokio::test]
async fn a_restarted_broker_gets_its_shards_and_data_back() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(&dir.path().join("router"), Duration::from_millis(400)).await;
    let raddr = router.addr().to_string();
    let b1 = broker(1, dir.path(), &raddr).await;
    let b2 = broker(2, dir.path(), &raddr).await;
    let c = client(&raddr).await;
    await_up(&c, &[1, 2]).await;
    ask(
        &c,
        Request::CreateTopic {
            name: "R".into(),
            partitions: 4,
            // One replica: the shard waits for its broker (replicated ones fail over).
            replication_factor: Some(1),
            min_insync: None,
            retention: Default::default(),
        },
    )
    .await
    .unwrap();
    let table = routing(&c, &["R"]).await;
    let shard = table
        .shards
        .iter()
        .find(|r| r.owner.as_ref().is_some_and(|o| o.id == 1))
        .expect("broker 1 owns a shard")
        .shard
        .clone();
    ask(&c, produce(&shard, table.epoch, &["kept"]))
        .await
        .unwrap();

    b1.shutdown().await;
    eventually("broker 1 down", || async {
        (brokers(&c).await.get(&1) == Some(&shardq_protocol::BrokerStatus::Down)).then_some(())
    })
    .await;
    assert!(routing(&c, &["R"])
        .await
        .route(&shard)
        .unwrap()
        .owner
        .is_none());
    assert!(matches!(
        ask(&c, produce(&shard, table.epoch, &["lost?"])).await,
        Err(ErrorKind::Unavailable { .. })
    ));

    let b1 = broker(1, dir.path(), &raddr).await;
    await_up(&c, &[1, 2]).await;
    let back = routing(&c, &["R"]).await;
    assert_eq!(
        back.route(&shard).unwrap().owner.as_ref().map(|o| o.id),
        Some(1)
    );
    assert_eq!(back.epoch, table.epoch, "nothing changed owner");
    // The restarted broker leads again once the router's assignment (a new leader epoch:
    // it is a new process) reached it; until then the shard answers NotOwner or Unavailable
    // (its failover on the registration may still be running), which clients retry.
    let batches = eventually("the restarted broker serves its shard", || async {
        match ask(&c, fetch(&shard, back.epoch, 0)).await {
            Ok(Response::Fetched { batches, .. }) => Some(batches),
            Err(ErrorKind::NotOwner { .. } | ErrorKind::Unavailable { .. }) => None,
            other => panic!("{other:?}"),
        }
    })
    .await;
    assert_eq!(values(&batches, 0), vec!["kept"]);
    b1.shutdown().await;
    b2.shutdown().await;
    router.shutdown().await;
}
