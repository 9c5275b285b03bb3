//! Deleting and growing topics on a real cluster (`shardq up`, R=2): a delete while producers
//! and consumers run (they stop with "unknown topic", nothing panics), every replica's copy
//! deleted (asked of each broker directly), a broker down during the delete drops its copy
//! when it is back and resurrects nothing, the name is refused until then and reusable after;
//! `topic alter` grows a topic and refuses to shrink it.

mod common;

use std::time::Duration;

use shardq_protocol::{ClientError, Connection, ErrorKind, Request, Response, ShardId};

/// Runs `shardq ARGS` against the cluster: (success, stdout + stderr).
async fn shardq(up: &common::UpCluster, args: &[&str]) -> (bool, String) {
    let o = common::cli(&up.endpoint(), args, "").await;
    (o.ok, format!("{}{}", o.stdout, o.stderr))
}

/// Whether the broker at `addr` holds a copy of `shard` (asked directly; a dropped copy is
/// "unknown shard").
async fn holds(up: &common::UpCluster, addr: &str, shard: &ShardId) -> bool {
    let conn = Connection::connect(addr, up.endpoint().connection())
        .await
        .expect("connect to the broker");
    let answer = conn
        .request(Request::ShardChecksum {
            shard: shard.clone(),
            upto: None,
        })
        .await;
    match answer {
        Ok(_) => true,
        Err(ClientError::Server(ErrorKind::UnknownShard { .. })) => false,
        Err(e) => panic!("checksum of {shard} at {addr}: {e}"),
    }
}

/// Copies of `topic`'s shards the brokers (but those in `skip`, which are down) still hold.
async fn copies_left(
    up: &common::UpCluster,
    topic: &str,
    partitions: u32,
    skip: &[u32],
) -> Vec<(u32, ShardId)> {
    let mut left = Vec::new();
    for (id, addr) in up
        .broker_addrs()
        .into_iter()
        .filter(|(id, _)| !skip.contains(id))
    {
        for p in 1..=partitions {
            let shard = ShardId::new(topic, p);
            if holds(up, &addr, &shard).await {
                left.push((id, shard));
            }
        }
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_deleted_under_load_is_gone_everywhere_and_stays_gone() {
    let up = common::UpCluster::start(3, &[]).await;
    let client = up.ready_with_topic(3, "D", 4, Some(2)).await;
    let at = up.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let producer = common::spawn_producer(
        &at,
        dir.path(),
        1,
        &["D:*"],
        &["--count", "40000", "--rate", "4000", "--timeout-secs", "10"],
    );
    let consumer = common::spawn_consumer(&at, dir.path(), 1, &["D:*"], 30);
    common::wait_until(Duration::from_secs(30), "records flowing", || {
        let client = client.clone();
        async move {
            common::status(&client).await.is_some_and(|st| {
                st.shards
                    .iter()
                    .filter_map(|(_, r)| r.as_ref())
                    .map(|r| r.end_offset)
                    .sum::<u64>()
                    > 2000
            })
        }
    })
    .await;
    assert_eq!(
        copies_left(&up, "D", 4, &[]).await.len(),
        8,
        "R=2 x 4 shards"
    );

    // Broker 3 is down (and held down) when the topic is deleted.
    std::fs::create_dir_all(up.dir.path().join("control")).unwrap();
    std::fs::write(up.dir.path().join("control/hold-broker-3"), b"").unwrap();
    let pid3 = up.broker_pid(3).expect("broker 3 runs");
    common::kill9(pid3);
    common::wait_until(Duration::from_secs(20), "broker 3 down", || {
        let client = client.clone();
        async move {
            matches!(client.admin(Request::ListBrokers).await,
                Ok(Response::Brokers(b)) if b.iter().any(|b| b.addr.id == 3
                    && b.status == shardq_protocol::BrokerStatus::Down))
        }
    })
    .await;
    let (ok, out) = shardq(&up, &["topic", "delete", "D", "--timeout-secs", "3"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("topic D deleted: 4 partition(s)"), "{out}");
    assert!(out.contains("not deleted yet"), "broker 3 is down: {out}");

    // Clients are told, and stop: nothing panics, nothing hangs.
    let p = tokio::time::timeout(Duration::from_secs(60), producer)
        .await
        .expect("runproduce ends")
        .unwrap()
        .expect("runproduce returns a summary");
    assert!(p.failed > 0, "{p:?}");
    assert!(
        p.errors.iter().any(|e| e.contains("unknown topic")),
        "{:?}",
        p.errors
    );
    let c = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .expect("runconsume ends")
        .unwrap()
        .expect("runconsume returns a summary");
    assert_eq!(c.topic_gone.as_deref(), Some("D"), "{c}");
    let (ok, out) = shardq(&up, &["consume", "D", "-n", "1"]).await;
    assert!(!ok && out.contains("unknown topic \"D\""), "{out}");

    // The brokers that are up dropped their copies; the name waits for broker 3's.
    let left: Vec<(u32, ShardId)> = copies_left(&up, "D", 4, &[3]).await;
    assert!(
        left.is_empty(),
        "copies on the brokers that are up: {left:?}"
    );
    let st = common::status(&client).await.unwrap();
    assert!(
        st.pending_drops
            .iter()
            .any(|(b, s)| *b == 3 && s.topic == "D"),
        "broker 3 held copies of D: {:?}",
        st.pending_drops
    );
    let (ok, out) = shardq(&up, &["topic", "create", "D", "-p", "2"]).await;
    assert!(!ok && out.contains("still being deleted"), "{out}");

    // Broker 3 comes back with its old copies on disk: it drops them, serves none of them.
    std::fs::remove_file(up.dir.path().join("control/hold-broker-3")).unwrap();
    common::wait_until(
        Duration::from_secs(60),
        "broker 3 back and its copies dropped",
        || {
            let client = client.clone();
            async move {
                common::status(&client).await.is_some_and(|st| {
                    st.pending_drops.is_empty()
                        && st
                            .brokers
                            .iter()
                            .all(|b| b.status == shardq_protocol::BrokerStatus::Up)
                })
            }
        },
    )
    .await;
    assert!(copies_left(&up, "D", 4, &[]).await.is_empty());

    // The name is free: a new D starts empty.
    let (ok, out) = shardq(&up, &["topic", "create", "D", "-p", "2", "-r", "3"]).await;
    assert!(ok, "{out}");
    for p in 1..=2 {
        let shard = ShardId::new("D", p);
        let offsets = client
            .shard_request(
                &shard,
                |epoch| Request::ListOffsets {
                    shard: shard.clone(),
                    epoch,
                },
                Duration::from_secs(5),
                tokio::time::Instant::now() + Duration::from_secs(20),
            )
            .await;
        assert!(
            matches!(offsets, Ok(Response::Offsets { start: 0, end: 0 })),
            "{shard} of the new D: {offsets:?}"
        );
    }
    // And a restart of every broker brings nothing back.
    for (id, _) in up.broker_addrs() {
        let pid = up.broker_pid(id).expect("broker runs");
        common::kill9(pid);
    }
    common::wait_until(Duration::from_secs(60), "brokers restarted", || {
        let client = client.clone();
        async move {
            common::status(&client).await.is_some_and(|st| {
                st.brokers
                    .iter()
                    .all(|b| b.status == shardq_protocol::BrokerStatus::Up)
                    && st
                        .shards
                        .iter()
                        .all(|(r, rep)| r.owner.is_some() && rep.is_some())
            })
        }
    })
    .await;
    let st = common::status(&client).await.unwrap();
    for (route, report) in &st.shards {
        let report = report.as_ref().unwrap();
        assert_eq!(
            report.end_offset, 0,
            "{} came back with records",
            route.shard
        );
    }
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alter_grows_a_topic_and_refuses_to_shrink_it() {
    let up = common::UpCluster::start(2, &[]).await;
    up.ready_with_topic(2, "G", 2, None).await;
    let (ok, out) = shardq(&up, &["topic", "alter", "G", "-p", "5", "--json"]).await;
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(v["partitions"], 5);
    let (ok, out) = shardq(&up, &["topic", "alter", "G", "-p", "3"]).await;
    assert!(!ok && out.contains("can grow but not shrink"), "{out}");
    let (ok, out) = shardq(&up, &["topic", "alter", "nope", "-p", "3"]).await;
    assert!(!ok && out.contains("unknown topic"), "{out}");
    // A new producer spreads over all 5; a consumer of G:* reads them all.
    let lines: String = (0..50).map(|i| format!("m{i}\n")).collect();
    let o = common::cli(&up.endpoint(), &["produce", "G", "-v"], &lines).await;
    assert!(o.ok, "{}", o.stderr);
    let text = o.stdout;
    let used: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(used.len(), 5, "partitions used: {used:?}");
    let (ok, out) = shardq(&up, &["consume", "G", "-n", "50"]).await;
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 50);
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_against_a_running_cluster_leaves_no_topic_behind() {
    let up = common::UpCluster::start(2, &[]).await;
    let client = up.ready_with_topic(2, "keep", 1, None).await;
    let at = up.endpoint();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
            .args(["bench", "--cluster", &at.addr, "--token-file"])
            .arg(&at.token)
            .args(["--count", "3000", "--rate", "2000", "--latency-secs", "1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("bench ends within 120 s")
    .expect("bench runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("bench: deleted its topic bench-").count(),
        2,
        "{text}"
    );
    match client.admin(Request::ListTopics).await {
        Ok(Response::Topics(ts)) => {
            let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["keep"]);
        }
        other => panic!("list topics: {other:?}"),
    }
    up.stop().await;
}
