//! Durability under a crash: a broker process is killed with SIGKILL while producers stream to it
//! (at `--fsync always` and at the default `interval=100`, where the write-ahead file carries what
//! was not flushed yet); `shardq up` restarts it; every acknowledged record is then consumed
//! exactly once, at the offset it was acknowledged with.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardq_consumer::{Consumer, ConsumerConfig};
use shardq_producer::{Producer, ProducerConfig};
use shardq_protocol::{ShardId, ShardSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_of_a_broker_fsync_always() {
    acknowledged_records_survive_sigkill(&["--fsync", "always"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill_of_a_broker_at_the_default_policy() {
    acknowledged_records_survive_sigkill(&[]).await;
}

async fn acknowledged_records_survive_sigkill(broker_args: &[&str]) {
    let up = common::UpCluster::start(2, broker_args).await;
    let router = up.router.clone();
    let broker1_pid = up.broker_pid(1).expect("broker 1 running");

    let admin = shardq::admin::client(&router).await.unwrap();
    admin
        .admin(shardq_protocol::Request::CreateTopic {
            name: "K".into(),
            partitions: 4,
        })
        .await
        .unwrap();

    let mut cfg = ProducerConfig::new(router.clone());
    cfg.delivery_timeout = Duration::from_secs(60);
    let producer = Arc::new(Producer::connect(cfg).await.unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    // A steady stream (about 2,000 records/s), not one burst: at the kill some acknowledged
    // records are always younger than the last flush, which is what the policy must survive.
    let total = 8_000u64;
    let send = {
        let (producer, acked) = (producer.clone(), acked.clone());
        tokio::spawn(async move {
            let mut deliveries = Vec::new();
            for i in 0..total {
                let d = producer
                    .send(
                        &ShardSpec::All("K".into()),
                        None,
                        Bytes::from(format!("r{i}")),
                    )
                    .await
                    .unwrap();
                let acked = acked.clone();
                deliveries.push(tokio::spawn(async move {
                    let r = d.await;
                    acked.fetch_add(1, Ordering::Relaxed);
                    (i, r)
                }));
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let mut out = Vec::new();
            for d in deliveries {
                out.push(d.await.unwrap());
            }
            out
        })
    };
    // Kill broker 1 once a good part is acknowledged: mid-stream, not before or after.
    common::wait_until(Duration::from_secs(60), "first acknowledgements", || {
        let n = acked.load(Ordering::Relaxed);
        async move { n >= 2_500 }
    })
    .await;
    common::kill9(broker1_pid);
    let results = send.await.unwrap();
    let mut expected: HashMap<String, (ShardId, u64)> = HashMap::new();
    let mut failed = 0;
    for (i, r) in results {
        match r {
            Ok(d) => {
                expected.insert(format!("r{i}"), (d.shard, d.offset));
            }
            Err(_) => failed += 1,
        }
    }
    assert_eq!(
        failed, 0,
        "records failed although the broker came back within the delivery timeout"
    );
    assert!(acked.load(Ordering::Relaxed) >= total);
    // The supervisor restarted broker 1 (new pid).
    assert_ne!(
        up.broker_pid(1),
        Some(broker1_pid),
        "broker 1 was not restarted"
    );

    let mut consumer = Consumer::connect(ConsumerConfig::new(
        router.clone(),
        "check",
        vec![ShardSpec::All("K".into())],
    ))
    .await
    .unwrap();
    let mut seen: HashMap<String, (ShardId, u64)> = HashMap::new();
    let mut per_shard: BTreeMap<ShardId, Vec<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < expected.len() && Instant::now() < deadline {
        for r in consumer.poll().await.unwrap() {
            let v = String::from_utf8_lossy(&r.record.value).into_owned();
            per_shard.entry(r.shard.clone()).or_default().push(r.offset);
            assert!(
                seen.insert(v.clone(), (r.shard, r.offset)).is_none(),
                "{v} consumed twice"
            );
        }
    }
    for (v, at) in &expected {
        assert_eq!(
            seen.get(v),
            Some(at),
            "acknowledged record {v} at {at:?} not consumed there"
        );
    }
    for (shard, offsets) in per_shard {
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "{shard}: offsets not dense"
        );
    }
    up.stop().await;
}
