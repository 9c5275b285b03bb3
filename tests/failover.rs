//! Replication and failover with real processes under `shardq up`: a topic with three replicas
//! per shard takes live traffic (two runproduce with ack logs, two runconsume) while the broker
//! leading the most shards is frozen with SIGSTOP for longer than the router's detection: its
//! shards elect new leaders from their in-sync replicas and keep taking writes; when it is
//! continued it learns it was replaced, truncates what it wrote alone, and follows. Then the
//! verifier passes (nothing acknowledged lost, nothing twice, producer order kept) and every
//! shard's replicas hold the same records (checksums).

mod common;

use std::time::{Duration, Instant};

use common::{leaders, replicas_agree, signal, status, UpCluster};
use shardq_protocol::{Request, Response};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let up = UpCluster::start(3, &[]).await;
    let at = up.endpoint();
    let client = at.client().await;
    let created = client
        .admin(Request::CreateTopic {
            name: "R".into(),
            partitions: 6,
            replication_factor: Some(3),
            min_insync: Some(2),
            retention: Default::default(),
        })
        .await
        .unwrap();
    assert!(
        matches!(&created, Response::TopicCreated(t) if t.replication_factor == 3 && t.min_insync == 2),
        "{created:?}"
    );

    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path();
    for p in 1..=2u32 {
        let text: String = (0..3000u32)
            .map(|i| format!("12:00:00\tp{p}-m{i}\t*\tR\n"))
            .collect();
        std::fs::write(dir.join(format!("producer_{p}.txt")), text).unwrap();
    }
    let consumers = [
        common::spawn_consumer(&at, dir, 1, &["R:*"], 15),
        common::spawn_consumer(&at, dir, 2, &["R:P1", "R:P4"], 15),
    ];
    let extra = ["--rate", "400", "--timeout-secs", "120"];
    let producers = [1, 2].map(|p| common::spawn_producer(&at, dir, p, &["R:*"], &extra));

    // Mid-stream, freeze the broker leading the most shards for 4 s (the router declares it
    // down after 1 s; its lease runs out before that).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = status(&client).await.expect("status");
    let (victim, led) = leaders(&st)
        .into_iter()
        .max_by_key(|(_, s)| s.len())
        .expect("some leader");
    let pid = up.broker_pid(victim).expect("victim pid");
    signal(pid, libc::SIGSTOP);
    let frozen = Instant::now();
    // Its shards get other leaders while it is frozen.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let moved = status(&client).await.is_some_and(|st| {
            st.shards.iter().all(|(r, _)| {
                !led.contains(&r.shard) || r.owner.as_ref().is_some_and(|o| o.id != victim)
            })
        });
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the frozen broker {victim}'s shards {led:?} got no other leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover = frozen.elapsed();
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(failover)).await;
    signal(pid, libc::SIGCONT);

    for p in producers {
        let s = p.await.unwrap().expect("producer finishes");
        assert_eq!(s.failed, 0, "records failed: {s:?}");
    }
    for c in consumers {
        c.await.unwrap().expect("consumer finishes");
    }
    common::verify_passes(dir, &[(1, &["R:*"]), (2, &["R:P1", "R:P4"])]);
    replicas_agree(&client, "R", 6, 3).await;
    eprintln!(
        "failover of broker {victim} ({} shards) seen after {failover:?}",
        led.len()
    );
    up.stop().await;
}

/// A group's committed offset is on every in-sync replica before the commit is acknowledged:
/// the leader is frozen right after the commit, and the new leader answers with that offset
/// (a consumer restarted there re-reads nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_group_offset_survives_the_failover_of_its_leader() {
    use shardq_protocol::{ShardId, ShardSpec};
    let up = UpCluster::start(3, &[]).await;
    let at = up.endpoint();
    let client = at.client().await;
    client
        .admin(Request::CreateTopic {
            name: "G".into(),
            partitions: 1,
            replication_factor: Some(3),
            min_insync: None,
            retention: Default::default(),
        })
        .await
        .unwrap();
    let producer = shardq_producer::Producer::connect(at.producer_config())
        .await
        .unwrap();
    let shard = ShardId::new("G", 1);
    let mut acks = Vec::new();
    for i in 0..100 {
        acks.push(
            producer
                .send(&ShardSpec::All("G".into()), None, format!("g{i}").into())
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.expect("acknowledged");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let commit = client
        .shard_request(
            &shard,
            |epoch| Request::CommitOffset {
                shard: shard.clone(),
                epoch,
                group: "g".into(),
                offset: 100,
            },
            Duration::from_secs(5),
            deadline,
        )
        .await
        .unwrap();
    assert_eq!(commit, Response::Committed);
    let st = status(&client).await.expect("status");
    let leader = leaders(&st).into_keys().next().expect("a leader");
    let pid = up.broker_pid(leader).expect("pid");
    signal(pid, libc::SIGSTOP);
    // Another replica leads once the router has declared it down.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now_led = status(&client)
            .await
            .and_then(|st| leaders(&st).into_keys().next());
        if now_led.is_some_and(|l| l != leader) {
            break;
        }
        if Instant::now() > deadline {
            signal(pid, libc::SIGCONT);
            panic!("no other leader 15 s after freezing broker {leader} (now {now_led:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let offset = client
        .shard_request(
            &shard,
            |epoch| Request::FetchOffset {
                shard: shard.clone(),
                epoch,
                group: "g".into(),
            },
            Duration::from_secs(2),
            tokio::time::Instant::now() + Duration::from_secs(30),
        )
        .await;
    signal(pid, libc::SIGCONT);
    assert_eq!(
        offset.unwrap(),
        Response::GroupOffset { offset: Some(100) },
        "the new leader has the committed offset"
    );
    up.stop().await;
}
