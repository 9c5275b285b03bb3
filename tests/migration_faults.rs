//! Faults during a live move, with real processes under `shardq up`: the destination broker is
//! killed with SIGKILL mid-copy, or the router is killed mid-move. `shardq up` restarts what died;
//! the move resumes (or rolls back), every shard ends owned by exactly one broker, and the
//! verifier passes for the traffic that flowed throughout.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::UpCluster;
use shardq_consumer::Consumer;
use shardq_producer::Producer;
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{
    ClusterStatus, Connection, MovePhase, Request, Response, ShardId, ShardSpec,
};

#[derive(Clone, Copy, Debug)]
enum Victim {
    Destination,
    Router,
}

async fn status(client: &ClusterClient) -> Option<ClusterStatus> {
    match client.admin(Request::Status).await {
        Ok(Response::Status(s)) => Some(s),
        _ => None,
    }
}

fn in_flight(st: &ClusterStatus) -> bool {
    st.moves.iter().any(|m| {
        !matches!(
            m.phase,
            MovePhase::Done | MovePhase::Failed | MovePhase::RolledBack
        )
    })
}

const BIG_RECORDS: u64 = 12_000;

async fn scenario(victim: Victim) {
    // Moves are throttled to 4 MB/s so a 3 MB shard takes long enough to be caught mid-copy.
    let up = UpCluster::start(2, &["--broker-arg=--move-max-mbps=4"]).await;
    let at = up.endpoint();
    let client = at.client().await;
    for (t, p) in [("Big", 4), ("F", 8)] {
        client
            .admin(Request::CreateTopic {
                name: t.into(),
                partitions: p,
                // One replica: the import copy is what the faults interrupt.
                replication_factor: Some(1),
                min_insync: None,
                retention: Default::default(),
            })
            .await
            .unwrap();
    }
    // Preload: ~12 MB over Big's 4 partitions.
    let mut cfg = at.producer_config();
    cfg.delivery_timeout = Duration::from_secs(60);
    let producer = Producer::connect(cfg).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..BIG_RECORDS {
        let mut v = vec![b'b'; 1024];
        v[..8].copy_from_slice(&i.to_le_bytes());
        acks.push(
            producer
                .send(&ShardSpec::All("Big".into()), None, Bytes::from(v))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.expect("preload acknowledged");
    }
    producer.close().await;

    // Live traffic on F throughout: 2 producers x 2,500 records at 250/s, 2 consumers.
    let logs = tempfile::tempdir().unwrap();
    for p in 1..=2u32 {
        let text: String = (0..2500u32)
            .map(|i| {
                let part = if i % 5 == 0 {
                    format!("P{}", 1 + i % 8)
                } else {
                    "*".into()
                };
                format!("12:00:00\tp{p}-m{i}\t{part}\tF\n")
            })
            .collect();
        std::fs::write(logs.path().join(format!("producer_{p}.txt")), text).unwrap();
    }
    let dir = logs.path();
    let consumers = [
        common::spawn_consumer(&at, dir, 1, &["F:*"], 10),
        common::spawn_consumer(&at, dir, 2, &["F:P2", "F:P5"], 10),
    ];
    let extra = ["--rate", "250", "--timeout-secs", "90"];
    let producers = [1, 2].map(|p| common::spawn_producer(&at, dir, p, &["F:*"], &extra));

    // Broker 3 joins; wait for a move of a Big shard to it to be copying, then kill the victim.
    let (id, _) = shardq::up::request_broker(up.dir.path()).await.unwrap();
    assert_eq!(id, 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let caught = loop {
        let found = status(&client).await.and_then(|st| {
            st.moves.into_iter().find(|m| {
                m.to == 3
                    && m.shard.topic == "Big"
                    && m.phase == MovePhase::Copying
                    && m.bytes_copied > 0
            })
        });
        if let Some(m) = found {
            break Some(m);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Big shard was seen copying to broker 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let caught = caught.unwrap();
    let killed = match victim {
        Victim::Destination => up.broker_pid(3).unwrap(),
        Victim::Router => up.router_pid(),
    };
    common::kill9(killed);
    // `shardq up` restarts it under a new pid.
    common::wait_until(
        Duration::from_secs(30),
        "the killed process restarted",
        || {
            let now = match victim {
                Victim::Destination => up.broker_pid(3),
                Victim::Router => Some(up.router_pid()),
            };
            async move { now.is_some_and(|p| p != killed) }
        },
    )
    .await;

    // The cluster settles: nothing in flight for a while, the interrupted move finished.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut quiet = 0;
    let last = loop {
        match status(&client).await {
            Some(st) if !in_flight(&st) => {
                quiet += 1;
                if quiet >= 10 {
                    break Some(st);
                }
            }
            _ => quiet = 0,
        }
        assert!(std::time::Instant::now() < deadline, "moves did not settle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let st = last.unwrap();
    let interrupted = st
        .moves
        .iter()
        .find(|m| m.move_id == caught.move_id)
        .expect("move kept in history");
    assert!(
        matches!(interrupted.phase, MovePhase::Done | MovePhase::RolledBack),
        "interrupted move ended {:?}",
        interrupted.phase
    );
    assert!(
        st.moves.iter().all(|m| m.phase != MovePhase::Failed),
        "{:#?}",
        st.moves
    );

    // Every shard is served by exactly one broker: ask each broker directly.
    let brokers = up.broker_addrs();
    for (route, _) in &st.shards {
        let mut owners = Vec::new();
        for (id, baddr) in &brokers {
            let conn = Connection::connect(baddr, at.connection()).await.unwrap();
            let r = conn
                .request(Request::ListOffsets {
                    shard: route.shard.clone(),
                    epoch: st.epoch,
                })
                .await;
            if r.is_ok() {
                owners.push(*id);
            }
        }
        assert_eq!(owners.len(), 1, "{} served by {owners:?}", route.shard);
        assert_eq!(
            Some(owners[0]),
            route.owner.as_ref().map(|o| o.id),
            "{}",
            route.shard
        );
    }

    // Live traffic: the verifier passes.
    for p in producers {
        let s = p.await.unwrap().expect("producer runs");
        assert!(s.ok(), "{s}");
    }
    for c in consumers {
        c.await.unwrap().expect("consumer runs");
    }
    let report = common::verify_passes(dir, &[(1, &["F:*"]), (2, &["F:P2", "F:P5"])]);
    assert_eq!(report.produced, 5000);

    // The preloaded data is all there, once, at dense offsets.
    let mut consumer =
        Consumer::connect(at.consumer_config("check", vec![ShardSpec::All("Big".into())]))
            .await
            .unwrap();
    let mut seen = vec![false; BIG_RECORDS as usize];
    let mut next: std::collections::BTreeMap<ShardId, u64> = Default::default();
    let mut n = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while n < BIG_RECORDS && std::time::Instant::now() < deadline {
        for r in consumer.poll().await.unwrap() {
            let i = u64::from_le_bytes(r.record.value[..8].try_into().unwrap()) as usize;
            assert!(!seen[i], "Big record {i} consumed twice");
            seen[i] = true;
            let expect = next.entry(r.shard.clone()).or_insert(0);
            assert_eq!(r.offset, *expect, "{}: offsets not dense", r.shard);
            *expect += 1;
            n += 1;
        }
    }
    assert_eq!(n, BIG_RECORDS, "Big records missing");
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_killed_mid_copy_resumes_and_loses_nothing() {
    scenario(Victim::Destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_mid_move_resumes_and_loses_nothing() {
    scenario(Victim::Router).await;
}
