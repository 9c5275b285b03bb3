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
use shardq_consumer::Consumer;
use shardq_producer::{Delivery, Producer, ProducerError};
use shardq_protocol::{ShardId, ShardSpec};

/// Sends `total` records `{prefix}{i}` to `topic:*` as a steady stream (about 2,000 records/s, not
/// one burst: at a kill some acknowledged records are always younger than the last flush), counting
/// acknowledgements in `acked`; the task ends with every record's outcome, in send order.
fn paced_send(
    producer: Arc<Producer>,
    topic: &'static str,
    prefix: &'static str,
    total: u64,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<(u64, Result<Delivery, ProducerError>)>> {
    tokio::spawn(async move {
        let mut deliveries = Vec::new();
        for i in 0..total {
            let d = producer
                .send(
                    &ShardSpec::All(topic.into()),
                    None,
                    Bytes::from(format!("{prefix}{i}")),
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
}

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
    let at = up.endpoint();
    let broker1_pid = up.broker_pid(1).expect("broker 1 running");

    let admin = at.client().await;
    admin
        .admin(shardq_protocol::Request::CreateTopic {
            name: "K".into(),
            partitions: 4,
            replication_factor: None,
            min_insync: None,
            retention: Default::default(),
        })
        .await
        .unwrap();

    let mut cfg = at.producer_config();
    cfg.delivery_timeout = Duration::from_secs(60);
    let producer = Arc::new(Producer::connect(cfg).await.unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    let total = 8_000u64;
    let send = paced_send(producer.clone(), "K", "r", total, acked.clone());
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

    let mut consumer =
        Consumer::connect(at.consumer_config("check", vec![ShardSpec::All("K".into())]))
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

/// Under `--fsync never` a crash may lose acknowledged records, and the restarted broker hands
/// their offsets to new records. A consumer that read the lost ones must not skip the new ones:
/// whatever the crash took, every record the shard finally holds reaches the live consumer, at
/// its offset. (Whether sled loses anything here depends on what it wrote out before the kill;
/// on this machine it usually loses nothing. The rewind itself is tested without chance in the
/// consumer's `a_restarted_broker_that_lost_what_we_read_is_read_again_from_its_stable_end`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_consumer_skips_nothing_when_a_crash_loses_records_under_fsync_never() {
    let up = common::UpCluster::start(2, &["--fsync", "never"]).await;
    let at = up.endpoint();
    let broker1_pid = up.broker_pid(1).expect("broker 1 running");
    let admin = at.client().await;
    admin
        .admin(shardq_protocol::Request::CreateTopic {
            name: "N".into(),
            partitions: 4,
            replication_factor: None,
            min_insync: None,
            retention: Default::default(),
        })
        .await
        .unwrap();

    // The live consumer runs through the crash, recording (shard, offset, value). It pauses from
    // just before the kill until the restarted broker's shards have grown past where it stood:
    // then only the broker's incarnation tells it that the offsets it stands at now hold other
    // records (with no pause it would also learn it from a log shorter than its position).
    let stop = shardq_protocol::CancellationToken::new();
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = {
        let (stop, paused) = (stop.clone(), paused.clone());
        let mut consumer =
            Consumer::connect(at.consumer_config("live", vec![ShardSpec::All("N".into())]))
                .await
                .unwrap();
        tokio::spawn(async move {
            let mut got: Vec<(ShardId, u64, String)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.is_cancelled() && Instant::now() < deadline {
                if paused.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                // Errors while the broker is down are retried by the next poll.
                if let Ok(records) = consumer.poll().await {
                    for r in records {
                        let v = String::from_utf8_lossy(&r.record.value).into_owned();
                        got.push((r.shard, r.offset, v));
                    }
                    let _ = consumer.commit().await;
                }
            }
            got
        })
    };

    let mut cfg = at.producer_config();
    cfg.delivery_timeout = Duration::from_secs(60);
    let producer = Arc::new(Producer::connect(cfg).await.unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    let total = 8_000u64;
    let send = paced_send(producer.clone(), "N", "n", total, acked.clone());
    common::wait_until(Duration::from_secs(60), "first acknowledgements", || {
        let n = acked.load(Ordering::Relaxed);
        async move { n >= 2_500 }
    })
    .await;
    paused.store(true, Ordering::Release);
    common::kill9(broker1_pid);
    let delivered = send
        .await
        .unwrap()
        .iter()
        .filter(|(_, r)| r.is_ok())
        .count() as u64;
    assert_eq!(
        delivered, total,
        "records failed after the broker came back"
    );

    paused.store(false, Ordering::Release);

    // What the shards finally hold, read from the start by a fresh group.
    let mut check =
        Consumer::connect(at.consumer_config("check", vec![ShardSpec::All("N".into())]))
            .await
            .unwrap();
    let mut ends: BTreeMap<ShardId, u64> = BTreeMap::new();
    for p in 1..=4 {
        let shard = ShardId::new("N", p);
        let r = admin
            .shard_request(
                &shard,
                |epoch| shardq_protocol::Request::ListOffsets {
                    shard: shard.clone(),
                    epoch,
                },
                Duration::from_secs(5),
                tokio::time::Instant::now() + Duration::from_secs(30),
            )
            .await
            .unwrap();
        let shardq_protocol::Response::Offsets { end, .. } = r else {
            panic!("{r:?}")
        };
        ends.insert(shard, end);
    }
    let held: u64 = ends.values().sum();
    let mut finally: HashMap<(ShardId, u64), String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (finally.len() as u64) < held && Instant::now() < deadline {
        for r in check.poll().await.unwrap() {
            let v = String::from_utf8_lossy(&r.record.value).into_owned();
            finally.insert((r.shard, r.offset), v);
        }
    }
    assert_eq!(
        finally.len() as u64,
        held,
        "the check consumer read every record"
    );

    // The live consumer catches up with the ends (its committed offsets reach them), then stops.
    let client = at.client().await;
    common::wait_until(Duration::from_secs(60), "the live consumer caught up", || {
        let (client, ends) = (client.clone(), ends.clone());
        async move {
            for (shard, end) in &ends {
                let r = client
                    .shard_request(
                        shard,
                        |epoch| shardq_protocol::Request::FetchOffset {
                            shard: shard.clone(),
                            group: "live".into(),
                            epoch,
                        },
                        Duration::from_secs(5),
                        tokio::time::Instant::now() + Duration::from_secs(10),
                    )
                    .await;
                let at_end = matches!(r, Ok(shardq_protocol::Response::GroupOffset { offset: Some(o) }) if o >= *end);
                if !at_end {
                    return false;
                }
            }
            true
        }
    })
    .await;
    stop.cancel();
    let got = live.await.unwrap();
    let received: std::collections::HashSet<(ShardId, u64, String)> = got.into_iter().collect();
    let skipped: Vec<_> = finally
        .iter()
        .filter(|((s, o), v)| !received.contains(&(s.clone(), *o, (*v).clone())))
        .take(5)
        .collect();
    assert!(
        skipped.is_empty(),
        "the live consumer never received these records the shards hold: {skipped:?}"
    );
    up.stop().await;
}
