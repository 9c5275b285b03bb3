//! Elastic cluster end to end: brokers join, join and leave while producers and consumers stream;
//! the verifier passes (no acknowledged record lost, none duplicated, per-shard order kept) and the
//! shards that moved are exactly the placement diff of each membership change.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use shardq_protocol::{ClusterStatus, MovePhase, Request, Response};
use shardq_ring::{Member, Ring, RingConfig};

async fn status(client: &shardq_protocol::cluster::ClusterClient) -> ClusterStatus {
    match client.admin(Request::Status).await.expect("status") {
        Response::Status(s) => s,
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits until no move is in flight and `owner` (if any) owns a shard, for a quiet period.
async fn settle(
    client: &shardq_protocol::cluster::ClusterClient,
    owner: Option<u32>,
    gone: Option<u32>,
) -> ClusterStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut quiet = 0;
    loop {
        let st = status(client).await;
        let busy = st.moves.iter().any(|m| {
            !matches!(
                m.phase,
                MovePhase::Done | MovePhase::Failed | MovePhase::RolledBack
            )
        });
        let owns = owner.is_none_or(|id| {
            st.shards
                .iter()
                .any(|(r, _)| r.owner.as_ref().is_some_and(|o| o.id == id))
        });
        let removed = gone.is_none_or(|id| !st.brokers.iter().any(|b| b.addr.id == id));
        quiet = if busy || !owns || !removed {
            0
        } else {
            quiet + 1
        };
        if quiet >= 10 {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cluster did not settle: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn placement(shards: &[String], members: &[u32]) -> shardq_ring::Assignment {
    let members: Vec<Member> = members.iter().map(|&id| Member::new(id)).collect();
    Ring::new(RingConfig::default(), &members).place(shards)
}

/// The (shard, from, to) of the moves with ids above `after`; all must be Done.
fn moves_since(st: &ClusterStatus, after: u64) -> BTreeSet<(String, Option<u32>, u32)> {
    st.moves
        .iter()
        .filter(|m| m.move_id > after)
        .map(|m| {
            assert_eq!(m.phase, MovePhase::Done, "move not done: {m:?}");
            (m.shard.to_string(), m.from, m.to)
        })
        .collect()
}

fn expected_moves(
    before: &[u32],
    after: &[u32],
    shards: &[String],
) -> BTreeSet<(String, Option<u32>, u32)> {
    shardq_ring::diff(&placement(shards, before), &placement(shards, after))
        .into_iter()
        .map(|m| (m.shard, m.from, m.to.expect("every shard has an owner")))
        .collect()
}

fn max_move(st: &ClusterStatus) -> u64 {
    st.moves.iter().map(|m| m.move_id).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_join_leave_under_load_loses_nothing_and_moves_exactly_the_diff() {
    let mut cluster = common::Cluster::start(2, "interval=100").await;
    // One replica per shard: every move is the import copy (replicated moves are in chaos.rs).
    cluster.create_topic_replicated("M1", 8, Some(1)).await;
    cluster.create_topic_replicated("M2", 8, Some(1)).await;
    let shards: Vec<String> = ["M1", "M2"]
        .iter()
        .flat_map(|t| (1..=8).map(move |p| format!("{t}:P{p}")))
        .collect();
    let client = cluster.client().await;
    let st = settle(&client, None, None).await;
    let mut mark = max_move(&st);

    // Load: 2 producers x 4,000 records at 500/s each (8 s), mostly T:*; 2 consumers.
    let logs = tempfile::tempdir().unwrap();
    for p in 1..=2u32 {
        let mut text = String::new();
        for i in 0..4000u32 {
            let topic = if (i + p) % 3 == 0 { "M2" } else { "M1" };
            let part = if i % 4 == 0 {
                format!("P{}", 1 + (i / 4) % 8)
            } else {
                "*".into()
            };
            text.push_str(&format!("12:00:00\tp{p}-m{i}\t{part}\t{topic}\n"));
        }
        std::fs::write(logs.path().join(format!("producer_{p}.txt")), text).unwrap();
    }
    let (at, dir) = (cluster.endpoint(), logs.path());
    let c1 = common::spawn_consumer(&at, dir, 1, &["M1:*", "M2:*"], 8);
    let c2 = common::spawn_consumer(&at, dir, 2, &["M2:*", "M1:P3"], 8);
    let extra = ["--rate", "500", "--timeout-secs", "60"];
    let producers: Vec<_> = (1..=2)
        .map(|p| common::spawn_producer(&at, dir, p, &["M1:*", "M2:*"], &extra))
        .collect();
    let consumed = logs.path().join("consumer_1.txt");
    common::wait_until(Duration::from_secs(30), "records flowing", || {
        let n = std::fs::metadata(&consumed).map(|m| m.len()).unwrap_or(0);
        async move { n > 2000 }
    })
    .await;

    // Join broker 3, then 4; then broker 1 leaves gracefully.
    for (id, before, after) in [
        (3u32, vec![1u32, 2], vec![1u32, 2, 3]),
        (4, vec![1, 2, 3], vec![1, 2, 3, 4]),
    ] {
        let mut bc =
            shardq_broker::BrokerConfig::new(id, cluster.dir.path().join(format!("broker-{id}")));
        bc.listen = "127.0.0.1:0".into();
        bc.router = Some(at.addr.clone());
        bc.listener.secret = Some(cluster.secret.clone());
        cluster
            .brokers
            .push(shardq_broker::start(bc).await.unwrap());
        let st = settle(&client, Some(id), None).await;
        let moved = moves_since(&st, mark);
        assert_eq!(
            moved,
            expected_moves(&before, &after, &shards),
            "join of broker {id}"
        );
        assert!(
            !moved.is_empty(),
            "broker {id} joined but nothing moved to it"
        );
        mark = max_move(&st);
    }
    let r = client
        .admin(Request::RemoveBroker {
            id: 1,
            force: false,
        })
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            Response::BrokerRemoved {
                id: 1,
                forced: false,
                ..
            }
        ),
        "{r:?}"
    );
    let st = settle(&client, None, Some(1)).await;
    let moved = moves_since(&st, mark);
    assert_eq!(
        moved,
        expected_moves(&[1, 2, 3, 4], &[2, 3, 4], &shards),
        "leave of broker 1"
    );
    assert!(
        moved.iter().filter(|(_, from, _)| *from == Some(1)).count() >= 1,
        "broker 1 left but none of its shards moved"
    );
    assert!(st
        .shards
        .iter()
        .all(|(r, _)| r.owner.as_ref().is_some_and(|o| o.id != 1)));

    for p in producers {
        let s = p.await.unwrap().expect("producer runs");
        assert!(s.ok(), "{s}");
        assert_eq!(s.acknowledged, 4000);
    }
    for c in [c1, c2] {
        c.await.unwrap().expect("consumer runs");
    }
    let report = common::verify_passes(dir, &[(1, &["M1:*", "M2:*"]), (2, &["M2:*", "M1:P3"])]);
    assert_eq!(report.produced, 8000);
    assert_eq!(report.unresolved, 0);
    cluster.stop().await;
}
