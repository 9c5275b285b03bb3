//! Broker identity, end to end: a second process started with a live (or down) broker's id and a
//! fresh data dir is refused by the router (it exits non-zero naming the conflict) and the real
//! broker keeps serving every acknowledged record; `shardq broker replace` lets a new data dir
//! take a dead broker's id; `shardq broker remove --force` refuses a broker that is up.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardq_consumer::Consumer;
use shardq_producer::Producer;
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{BrokerStatus, Request, Response, ShardId, ShardSpec};

/// Produces `n` records `r0..` to every partition of `topic`; returns where each was acked.
async fn produce(at: &common::Endpoint, topic: &str, n: usize) -> HashMap<String, (ShardId, u64)> {
    let producer = Producer::connect(at.producer_config()).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        let v = format!("r{i}");
        let d = producer
            .send(&ShardSpec::All(topic.into()), None, Bytes::from(v.clone()))
            .await
            .unwrap();
        pending.push((v, d));
    }
    let mut acked = HashMap::new();
    for (v, d) in pending {
        let d = d.await.expect("acknowledged");
        acked.insert(v, (d.shard, d.offset));
    }
    producer.close().await;
    acked
}

/// Reads every record of `topic` as a new group until all of `expected` are seen (60 s at most);
/// asserts each is where its acknowledgement said.
async fn consume_all(
    at: &common::Endpoint,
    topic: &str,
    group: &str,
    expected: &HashMap<String, (ShardId, u64)>,
) {
    let mut consumer =
        Consumer::connect(at.consumer_config(group, vec![ShardSpec::All(topic.into())]))
            .await
            .unwrap();
    let mut seen: HashMap<String, (ShardId, u64)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < expected.len() && Instant::now() < deadline {
        for r in consumer.poll().await.unwrap() {
            let v = String::from_utf8_lossy(&r.record.value).into_owned();
            seen.insert(v, (r.shard, r.offset));
        }
    }
    let missing: Vec<&String> = expected.keys().filter(|v| !seen.contains_key(*v)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records not consumed, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    for (v, at) in expected {
        assert_eq!(
            seen.get(v),
            Some(at),
            "{v} read elsewhere than acknowledged"
        );
    }
    consumer.close();
}

async fn brokers(client: &ClusterClient) -> BTreeMap<u32, (String, BrokerStatus)> {
    match client.admin(Request::ListBrokers).await {
        Ok(Response::Brokers(bs)) => bs
            .into_iter()
            .map(|b| (b.addr.id, (b.addr.addr, b.status)))
            .collect(),
        other => panic!("{other:?}"),
    }
}

async fn wait_status(client: &ClusterClient, id: u32, status: BrokerStatus) {
    common::wait_until(
        Duration::from_secs(20),
        &format!("broker {id} {status:?}"),
        || {
            let client = client.clone();
            async move { brokers(&client).await.get(&id).map(|b| b.1) == Some(status) }
        },
    )
    .await;
}

/// Runs `shardq ARGS` to completion (60 s at most).
async fn shardq(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .unwrap_or_else(|_| panic!("shardq {args:?} did not finish"))
        .unwrap()
}

/// Starts `shardq broker --id ID` on `data` against `router` as a separate process, which must
/// be refused: it exits with EXIT_REFUSED, naming the conflict. Returns its stderr.
async fn rogue_is_refused(at: &common::Endpoint, id: u32, data: &Path) -> String {
    let out = shardq(&[
        "broker",
        "--token-file",
        &at.token.display().to_string(),
        "--id",
        &id.to_string(),
        "--listen",
        "127.0.0.1:0",
        "--data",
        &data.display().to_string(),
        "--router",
        &at.addr,
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(shardq_broker::EXIT_REFUSED),
        "the rogue broker {id} was not refused: {:?}\n{err}",
        out.status
    );
    assert!(
        err.contains(&format!("broker {id} is bound to UUID"))
            && err.contains(&format!("shardq broker replace {id}"))
            && err.contains(&data.display().to_string()),
        "{err}"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_brokers_id_is_refused_live_or_down_and_no_record_is_lost() {
    let mut cluster = common::Cluster::start(2, "interval=100").await;
    cluster.create_topic("I", 4).await;
    let addr = cluster.addr();
    let at = cluster.endpoint();
    let token = at.token.display().to_string();
    let client = cluster.client().await;
    let acked = produce(&at, "I", 1000).await;
    let real_addr = brokers(&client).await[&1].0.clone();

    // Broker 1 is up: a process with its id and a fresh data dir is refused, and the router
    // keeps routing to the real broker 1.
    let fresh = tempfile::tempdir().unwrap();
    rogue_is_refused(&at, 1, fresh.path()).await;
    assert_eq!(
        brokers(&client).await[&1],
        (real_addr.clone(), BrokerStatus::Up)
    );

    // A forced removal of the live broker is refused too, and changes nothing.
    let out = shardq(&[
        "broker",
        "remove",
        "1",
        "--force",
        "-b",
        &addr,
        "--token-file",
        &token,
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "forced removal of a live broker accepted"
    );
    assert!(
        err.contains("broker 1 is UP") && err.contains("without --force"),
        "{err}"
    );
    assert_eq!(
        brokers(&client).await[&1],
        (real_addr.clone(), BrokerStatus::Up)
    );
    consume_all(&at, "I", "while-up", &acked).await;

    // Broker 1 is down: the rogue is still refused (the id stays bound while down), and once
    // the real broker is back, every acknowledged record is there.
    let b1 = cluster.brokers.remove(0);
    let b1_dir = cluster.dir.path().join("broker-1");
    b1.shutdown().await;
    wait_status(&client, 1, BrokerStatus::Down).await;
    rogue_is_refused(&at, 1, fresh.path()).await;
    let mut cfg = shardq_broker::BrokerConfig::new(1, &b1_dir);
    cfg.router = Some(addr.clone());
    cfg.listener.secret = Some(cluster.secret.clone());
    cluster
        .brokers
        .insert(0, shardq_broker::start(cfg).await.unwrap());
    wait_status(&client, 1, BrokerStatus::Up).await;
    consume_all(&at, "I", "after-down", &acked).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_replace_lets_a_new_data_dir_take_a_dead_brokers_id() {
    let mut cluster = common::Cluster::start(2, "interval=100").await;
    // One replica per shard: the replacement's shards start empty (replicated ones would catch up).
    cluster.create_topic_replicated("R", 4, Some(1)).await;
    let addr = cluster.addr();
    let at = cluster.endpoint();
    let token = at.token.display().to_string();
    let client = cluster.client().await;

    // Refused while broker 1 is up: it says so, and changes nothing.
    let out = shardq(&[
        "broker",
        "replace",
        "1",
        "-b",
        &addr,
        "--token-file",
        &token,
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "replace of a live broker accepted");
    assert!(err.contains("broker 1 is UP"), "{err}");

    // Broker 1's disk is lost.
    let b1 = cluster.brokers.remove(0);
    b1.shutdown().await;
    wait_status(&client, 1, BrokerStatus::Down).await;
    let old_dir = cluster.dir.path().join("broker-1");
    let fresh = tempfile::tempdir().unwrap();
    rogue_is_refused(&at, 1, fresh.path()).await;

    let out = shardq(&[
        "broker",
        "replace",
        "1",
        "--json",
        "-b",
        &addr,
        "--token-file",
        &token,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["id"], 1);
    let empty = answer["shards_start_empty"].as_array().unwrap();
    assert!(!empty.is_empty(), "{answer}");

    // The new data dir takes the id, owns broker 1's shards (empty), and serves them.
    let mut cfg = shardq_broker::BrokerConfig::new(1, fresh.path());
    cfg.router = Some(addr.clone());
    cfg.listener.secret = Some(cluster.secret.clone());
    let new1 = shardq_broker::start(cfg)
        .await
        .expect("the replacement registers");
    wait_status(&client, 1, BrokerStatus::Up).await;
    assert_eq!(brokers(&client).await[&1].0, new1.addr().to_string());
    let acked = produce(&at, "R", 200).await;
    assert!(acked
        .values()
        .any(|(s, _)| empty.iter().any(|e| e == &s.to_string())));
    consume_all(&at, "R", "after-replace", &acked).await;

    // The old data dir is now the stranger: refused as broker 1.
    let mut cfg = shardq_broker::BrokerConfig::new(1, &old_dir);
    cfg.router = Some(addr.clone());
    cfg.listener.secret = Some(cluster.secret.clone());
    let refused = match shardq_broker::start(cfg).await {
        Ok(_) => panic!("the replaced broker's old data dir was accepted"),
        Err(e) => e,
    };
    assert!(
        refused
            .downcast_ref::<shardq_broker::RefusedByRouter>()
            .is_some(),
        "{refused:#}"
    );
    cluster.brokers.insert(0, new1);
    cluster.stop().await;
}
