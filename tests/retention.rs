//! Retention and purges on a replicated cluster: a topic with `--retention-bytes 10MB` written
//! with 100 MB keeps at most its share plus one stored batch per shard on every replica,
//! measured in each stopped broker's files on disk; a consumer group that was behind is told
//! "offset out of range", moves to the log start and says how many records it skipped (the
//! library counts them, `shardq consume` prints the warning); `retention-ms` deletes by age;
//! `topic purge` empties a topic without reusing offsets; `group delete` forgets a group.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{cli, wait_until, Cluster};
use shardq_consumer::Consumer;
use shardq_producer::Producer;
use shardq_protocol::{
    ClusterClient, Offset, Request, Response, Retention, ShardId, ShardReport, ShardSpec,
};

/// The most bytes one stored entry takes (64 KiB of records plus the entry header).
const MAX_ENTRY: u64 = 64 * 1024 + 64;

async fn create(c: &Cluster, topic: &str, partitions: u32, retention: Retention) {
    let r = c
        .client()
        .await
        .admin(Request::CreateTopic {
            name: topic.into(),
            partitions,
            replication_factor: Some(3),
            min_insync: None,
            retention,
        })
        .await
        .expect("topic created");
    assert!(matches!(r, Response::TopicCreated(_)), "{r:?}");
}

/// Produces `count` records of `size` bytes to `topic:*`; returns the bytes acknowledged.
async fn produce(c: &Cluster, topic: &str, count: usize, size: usize) -> u64 {
    let producer = Producer::connect(c.endpoint().producer_config())
        .await
        .expect("producer");
    let target = ShardSpec::All(topic.into());
    let mut acked = 0u64;
    let mut pending = Vec::new();
    for i in 0..count {
        let mut v = format!("{i:>12}").into_bytes();
        v.resize(size, b'x');
        pending.push(
            producer
                .send(&target, None, Bytes::from(v))
                .await
                .expect("queued"),
        );
        if pending.len() == 2_000 || i + 1 == count {
            for d in pending.drain(..) {
                d.await.expect("acknowledged");
                acked += size as u64;
            }
        }
    }
    producer.close().await;
    acked
}

/// Each shard's leader report (start, end, bytes).
async fn reports(client: &ClusterClient, topic: &str) -> BTreeMap<ShardId, ShardReport> {
    let d = match client
        .admin(Request::DescribeTopic { name: topic.into() })
        .await
        .expect("describe")
    {
        Response::Topic(d) => d,
        other => panic!("unexpected {other:?}"),
    };
    d.shards
        .into_iter()
        .filter_map(|(route, rep)| Some((route.shard, rep?)))
        .collect()
}

/// Every replica's log start of `shard` (from their checksums), leader first.
async fn replica_starts(client: &ClusterClient, shard: &ShardId) -> Vec<Offset> {
    match client
        .admin(Request::ShardChecksum {
            shard: shard.clone(),
            upto: None,
        })
        .await
    {
        Ok(Response::Checksums(cs)) if cs.iter().all(|c| c.error.is_none()) => {
            cs.iter().map(|c| c.start).collect()
        }
        _ => Vec::new(),
    }
}

/// `shard`'s log range (start, high watermark) at its leader, from its checksum.
async fn leader_range(client: &ClusterClient, shard: &ShardId) -> (Offset, Offset) {
    match client
        .admin(Request::ShardChecksum {
            shard: shard.clone(),
            upto: None,
        })
        .await
    {
        Ok(Response::Checksums(cs)) if cs.first().is_some_and(|c| c.error.is_none()) => {
            (cs[0].start, cs[0].end)
        }
        other => panic!("checksum of {shard}: {other:?}"),
    }
}

/// A consumer of `group` that reads at least `n` records, commits and stops; returns its
/// committed positions.
async fn read_and_commit(
    c: &Cluster,
    topic: &str,
    group: &str,
    n: usize,
) -> Vec<(ShardId, Offset)> {
    let config = c
        .endpoint()
        .consumer_config(group, vec![ShardSpec::All(topic.into())]);
    let mut consumer = Consumer::connect(config).await.expect("consumer");
    let mut got = 0;
    for _ in 0..200 {
        got += consumer.poll().await.expect("poll").len();
        if got >= n {
            break;
        }
    }
    assert!(got >= n, "read {got} of {n} records");
    consumer.commit().await.expect("commit");
    let positions = consumer.positions();
    consumer.close();
    positions
}

/// Whether `group list` has `group` (its offsets come with the brokers' heartbeats).
async fn group_listed(client: &ClusterClient, group: &str) -> bool {
    matches!(client.admin(Request::ListGroups).await,
        Ok(Response::Groups(g)) if g.iter().any(|n| n == group))
}

/// The bytes `shard`'s segment files take on the disk of a stopped broker (its data dir):
/// allocated blocks, which is what retention gives back.
fn bytes_on_disk(data_dir: &std::path::Path, shard: &ShardId) -> u64 {
    let dir = data_dir
        .join("segments")
        .join(&shard.topic)
        .join(format!("P{}", shard.partition));
    assert!(
        dir.is_dir(),
        "no segment files for {shard} in {}",
        dir.display()
    );
    allocated(&dir)
}

/// Blocks allocated under `p` (what `du` counts), in bytes.
fn allocated(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => allocated(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Holes are punched, and files allocated, in 4 KiB blocks: the space before the first entry
/// kept and after the last may each take part of one.
const BLOCKS: u64 = 2 * 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_bytes_bound_every_replica_on_disk_and_a_reader_behind_skips_and_says_so() {
    let c = Cluster::start_tuned(3, "interval=50", false, |rc| {
        rc.retention_check = Duration::from_millis(200);
    })
    .await;
    let topic = "ret";
    let partitions = 2u32;
    let limit = 10_000_000u64;
    create(
        &c,
        topic,
        partitions,
        Retention {
            ms: None,
            bytes: Some(limit),
        },
    )
    .await;
    let share = limit.div_ceil(u64::from(partitions));
    // Two groups read a little and stop: they are far behind once 100 MB went in.
    produce(&c, topic, 500, 4_000).await;
    let lib_committed = read_and_commit(&c, topic, "behind", 100).await;
    read_and_commit(&c, topic, "behind-cli", 100).await;
    let written = 2_000_000 + produce(&c, topic, 25_000, 4_000).await;
    assert!(written >= 100_000_000, "{written} bytes written");

    // Converged: each leader holds at most its share plus one batch, and every replica's log
    // starts where the leader's does.
    let client = c.client().await;
    wait_until(
        Duration::from_secs(60),
        "retention applied on every replica",
        || {
            let client = client.clone();
            async move {
                let reps = reports(&client, topic).await;
                if reps.len() != partitions as usize {
                    return false;
                }
                for (shard, r) in &reps {
                    if r.bytes > share + MAX_ENTRY || r.start_offset == 0 {
                        return false;
                    }
                    let starts = replica_starts(&client, shard).await;
                    if starts.len() != 3 || starts.iter().any(|s| *s != r.start_offset) {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    let reps = reports(&client, topic).await;

    // The library consumer was behind: it skips to each log start and counts what it skipped.
    let config = c
        .endpoint()
        .consumer_config("behind", vec![ShardSpec::All(topic.into())]);
    let mut consumer = Consumer::connect(config).await.expect("consumer");
    let mut first: BTreeMap<ShardId, Offset> = BTreeMap::new();
    for _ in 0..100 {
        for r in consumer.poll().await.expect("poll") {
            first.entry(r.shard).or_insert(r.offset);
        }
        if first.len() == partitions as usize {
            break;
        }
    }
    let expected_skip: u64 = lib_committed
        .iter()
        .map(|(s, o)| reps[s].start_offset - o)
        .sum();
    assert_eq!(consumer.skipped_records(), expected_skip);
    for (shard, off) in &first {
        assert_eq!(
            *off, reps[shard].start_offset,
            "{shard} resumed at the log start"
        );
    }
    consumer.close();

    // `shardq consume` says so.
    let out = cli(
        &c.endpoint(),
        &["consume", topic, "--group", "behind-cli", "--count", "3"],
        "",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("skipped") && out.stderr.contains("retention or a purge"),
        "no warning: {}",
        out.stderr
    );
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);

    // On disk, on every replica.
    let Cluster {
        dir,
        router,
        brokers,
        ..
    } = c;
    for b in brokers {
        b.shutdown().await;
    }
    router.shutdown().await;
    let mut du = 0u64;
    for id in 1..=3 {
        let data = dir.path().join(format!("broker-{id}"));
        for p in 1..=partitions {
            let shard = ShardId::new(topic, p);
            let held = bytes_on_disk(&data, &shard);
            assert!(
                held <= share + MAX_ENTRY + BLOCKS,
                "broker {id} holds {held} bytes of {shard} on disk; the limit is {share} + one \
                 batch (+ a block at either end)"
            );
            assert!(held > 0, "broker {id} holds nothing of {shard}");
        }
        // The whole data dir: the segments, sled (the logs' index, offsets, metadata) and the
        // write-ahead file. Before the segment files it held ~32 MB here (sled's leaked blobs).
        let total = allocated(&data);
        println!("retention: broker {id}'s data dir takes {total} bytes on disk");
        let bound = limit + u64::from(partitions) * (MAX_ENTRY + BLOCKS) + 4_000_000;
        assert!(
            total <= bound,
            "broker {id}'s data dir takes {total} bytes on disk (bound {bound})"
        );
        du += total;
    }
    println!(
        "retention: {written} bytes written, limit {limit}; data dirs of the 3 brokers: {du} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_age_purge_and_group_delete() {
    let c = Cluster::start_tuned(3, "interval=50", false, |rc| {
        rc.retention_check = Duration::from_millis(100);
    })
    .await;
    let at = c.endpoint();
    let out = cli(
        &at,
        &[
            "topic",
            "create",
            "aged",
            "-p",
            "2",
            "-r",
            "3",
            "--retention-ms",
            "2s",
        ],
        "",
    )
    .await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("retention 2s"), "{}", out.stdout);
    let client = c.client().await;
    produce(&c, "aged", 400, 100).await;
    let ends = || async {
        reports(&client, "aged")
            .await
            .into_iter()
            .map(|(s, r)| (s, r.end_offset))
            .collect::<BTreeMap<ShardId, Offset>>()
    };
    // The reports come with the brokers' heartbeats.
    wait_until(
        Duration::from_secs(10),
        "the 400 records reported",
        || async { ends().await.values().sum::<u64>() == 400 },
    )
    .await;
    let ends = ends().await;
    // Everything is older than 2 s soon: each log then starts at its end, on every replica.
    wait_until(
        Duration::from_secs(30),
        "old records deleted by age",
        || {
            let client = client.clone();
            let ends = ends.clone();
            async move {
                for (shard, end) in &ends {
                    let starts = replica_starts(&client, shard).await;
                    if starts.len() != 3 || starts.iter().any(|s| s != end) {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    // Lift the limit; new records stay, at offsets after the deleted ones.
    let out = cli(
        &at,
        &["topic", "alter", "aged", "--retention-ms", "none"],
        "",
    )
    .await;
    assert!(
        out.ok && out.stdout.contains("forever"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    produce(&c, "aged", 10, 100).await;
    let out = cli(
        &at,
        &[
            "consume", "aged", "--from", "earliest", "--count", "10", "--format", "json",
        ],
        "",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    for line in out.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let shard: ShardId = v["shard"]
            .as_str()
            .expect("shard")
            .parse()
            .expect("shard id");
        assert!(
            v["offset"].as_u64().expect("offset") >= ends[&shard],
            "{line}"
        );
    }

    // A group commits, then the topic is purged: the log starts at its end, offsets go on.
    read_and_commit(&c, "aged", "g", 10).await;
    let out = cli(&at, &["topic", "purge", "aged"], "").await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    // The leaders' reports come with their heartbeats.
    wait_until(
        Duration::from_secs(10),
        "every shard reported purged",
        || async {
            let reps = reports(&client, "aged").await;
            reps.len() == 2 && reps.values().all(|r| r.start_offset == r.end_offset)
        },
    )
    .await;
    let reps = reports(&client, "aged").await;
    for (shard, r) in &reps {
        assert_eq!(r.start_offset, r.end_offset, "{shard} purged");
        assert!(r.end_offset >= ends[shard]);
    }
    let out = cli(&at, &["topic", "describe", "aged"], "").await;
    assert!(out.stdout.contains("log start"), "{}", out.stdout);

    // The group is listed while it has offsets; with no live member it can be deleted.
    wait_until(Duration::from_secs(10), "group g reported", || {
        group_listed(&client, "g")
    })
    .await;
    let out = cli(&at, &["group", "list"], "").await;
    assert!(out.stdout.lines().any(|l| l == "g"), "{}", out.stdout);
    let out = cli(&at, &["group", "delete", "g"], "").await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    wait_until(
        Duration::from_secs(10),
        "group gone from every report",
        || async { !group_listed(&client, "g").await },
    )
    .await;
    // Its offset is gone from every shard (the leaders answered once their in-sync followers
    // had deleted it too): a member joining it again starts by its --from policy.
    for shard in reps.keys() {
        let r = client
            .shard_request(
                shard,
                |epoch| Request::FetchOffset {
                    shard: shard.clone(),
                    epoch,
                    group: "g".into(),
                },
                Duration::from_secs(5),
                tokio::time::Instant::now() + Duration::from_secs(10),
            )
            .await
            .expect("fetch offset");
        assert!(matches!(r, Response::GroupOffset { offset: None }), "{r:?}");
    }
    // Bad input is refused with the field at fault.
    let out = cli(
        &at,
        &["topic", "alter", "aged", "--retention-bytes", "10XB"],
        "",
    )
    .await;
    assert!(
        !out.ok && out.stderr.contains("unknown size unit"),
        "{}",
        out.stderr
    );
    let out = cli(&at, &["topic", "alter", "aged"], "").await;
    assert!(
        !out.ok && out.stderr.contains("nothing to change"),
        "{}",
        out.stderr
    );
    c.stop().await;
}

/// A broker that joins after retention deleted the front of the logs: replicas moved to it
/// start at the leaders' log starts (a replicated shard's new follower continues empty there;
/// an unreplicated shard's import continues past the source's deleted front), hold exactly the
/// records left, and offsets go on from where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_joining_after_retention_copies_what_is_left_and_offsets_go_on() {
    let mut c = Cluster::start_tuned(2, "interval=50", false, |rc| {
        rc.retention_check = Duration::from_millis(100);
        rc.default_replication_factor = 1;
    })
    .await;
    let retention = Retention {
        ms: None,
        bytes: Some(400_000),
    };
    let client = c.client().await;
    for (topic, rf) in [("solo", 1u32), ("pair", 2)] {
        let r = client
            .admin(Request::CreateTopic {
                name: topic.into(),
                partitions: 4,
                replication_factor: Some(rf),
                min_insync: None,
                retention,
            })
            .await
            .expect("topic created");
        assert!(matches!(r, Response::TopicCreated(_)), "{r:?}");
        produce(&c, topic, 3_000, 1_000).await;
    }
    // Every shard lost its front before the join.
    wait_until(Duration::from_secs(30), "retention applied", || {
        let client = client.clone();
        async move {
            for topic in ["solo", "pair"] {
                let reps = reports(&client, topic).await;
                if reps.len() != 4 || reps.values().any(|r| r.start_offset == 0) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    c.add_broker(3).await;
    wait_until(Duration::from_secs(60), "shards moved to broker 3", || {
        let client = client.clone();
        async move {
            let Some(st) = common::status(&client).await else {
                return false;
            };
            let idle = st.moves.iter().all(|m| m.phase.is_finished());
            let on_3 = |topic: &str| {
                st.shards
                    .iter()
                    .any(|(r, _)| r.shard.topic == topic && r.replicas.contains(&3))
            };
            idle && on_3("solo") && on_3("pair")
        }
    })
    .await;
    // Both replicas of each replicated shard hold the same range and records.
    common::replicas_agree(&client, "pair", 4, 2).await;
    for p in 1..=4 {
        let shard = ShardId::new("pair", p);
        let starts = replica_starts(&client, &shard).await;
        assert!(
            starts.len() == 2 && starts[0] == starts[1],
            "{shard}: {starts:?}"
        );
    }
    // Every record left is readable, in order, from each shard's log start; then new records
    // continue the offsets.
    for topic in ["solo", "pair"] {
        // Each shard's range as its leader holds it now (reports lag by a heartbeat, and a
        // moved shard's new leader may not have reported yet).
        let mut before: BTreeMap<ShardId, (Offset, Offset)> = BTreeMap::new();
        for p in 1..=4 {
            let shard = ShardId::new(topic, p);
            before.insert(shard.clone(), leader_range(&client, &shard).await);
        }
        let left: u64 = before.values().map(|(start, end)| end - start).sum();
        let config = c.endpoint().consumer_config(
            &format!("check-{topic}"),
            vec![ShardSpec::All(topic.into())],
        );
        let mut consumer = Consumer::connect(config).await.expect("consumer");
        let mut next: BTreeMap<ShardId, Offset> = before
            .iter()
            .map(|(s, (start, _))| (s.clone(), *start))
            .collect();
        let mut read = 0u64;
        for _ in 0..400 {
            for r in consumer.poll().await.expect("poll") {
                assert_eq!(r.offset, next[&r.shard], "{}: a gap or a repeat", r.shard);
                *next.get_mut(&r.shard).expect("subscribed") += 1;
                read += 1;
            }
            if read >= left {
                break;
            }
        }
        assert_eq!(
            read, left,
            "{topic}: records left after retention and the move"
        );
        assert_eq!(consumer.skipped_records(), 0);
        consumer.close();
        produce(&c, topic, 40, 100).await;
        wait_until(Duration::from_secs(10), "new records reported", || {
            let client = client.clone();
            let before = before.clone();
            async move {
                let now = reports(&client, topic).await;
                now.values().map(|r| r.end_offset).sum::<u64>()
                    == before.values().map(|(_, end)| end).sum::<u64>() + 40
            }
        })
        .await;
    }
    c.stop().await;
}
