//! Replication and failover with real processes under `shardq up`: a topic with three replicas
//! per shard takes live traffic (two runproduce with ack logs, two runconsume) while the broker
//! leading the most shards is frozen with SIGSTOP for longer than the router's detection: its
//! shards elect new leaders from their in-sync replicas and keep taking writes; when it is
//! continued it learns it was replaced, truncates what it wrote alone, and follows. Then the
//! verifier passes (nothing acknowledged lost, nothing twice, producer order kept) and every
//! shard's replicas hold the same records (checksums).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::UpCluster;
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{ClusterStatus, Request, Response, ShardId};

async fn status(client: &ClusterClient) -> Option<ClusterStatus> {
    match client.admin(Request::Status).await {
        Ok(Response::Status(s)) => Some(s),
        _ => None,
    }
}

/// Broker id -> shards it leads.
fn leaders(st: &ClusterStatus) -> BTreeMap<u32, Vec<ShardId>> {
    let mut m: BTreeMap<u32, Vec<ShardId>> = BTreeMap::new();
    for (r, _) in &st.shards {
        if let Some(o) = &r.owner {
            m.entry(o.id).or_default().push(r.shard.clone());
        }
    }
    m
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: sends a signal to a process this test's cluster started.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Waits until every replica of every shard of `topic` holds the same records (same end, same
/// checksum), and returns the checksums per shard.
async fn replicas_agree(client: &ClusterClient, topic: &str, partitions: u32) {
    for p in 1..=partitions {
        let shard = ShardId::new(topic, p);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = client
                .admin(Request::ShardChecksum {
                    shard: shard.clone(),
                    upto: None,
                })
                .await;
            let sums = match answer {
                Ok(Response::Checksums(v)) => v,
                other => panic!("checksum of {shard}: {other:?}"),
            };
            let all_ok = sums.len() == 3 && sums.iter().all(|c| c.error.is_none());
            let same = all_ok
                && sums
                    .iter()
                    .all(|c| (c.end, c.checksum) == (sums[0].end, sums[0].checksum));
            if same {
                assert!(sums[0].records > 0, "{shard}: no records");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{shard}: replicas still disagree after 60 s: {sums:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

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
    replicas_agree(&client, "R", 6).await;
    eprintln!(
        "failover of broker {victim} ({} shards) seen after {failover:?}",
        led.len()
    );
    up.stop().await;
}
