//! End-to-end client tests against a real in-process router and two brokers: produce over `T:*`
//! and explicit shards, consume with a group exactly once in shard order, resume from the
//! committed offset, and the `runproduce`/`runconsume` command logic.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use shardq_consumer::{ConsumedRecord, Consumer, ConsumerConfig, ConsumerError};
use shardq_producer::{Producer, ProducerConfig, ProducerError};
use shardq_protocol::{CancellationToken, Offset, ShardId, ShardSpec};
use support::Cluster;
use tokio::time::Instant;

const RECORDS: usize = 10_000;

fn spec(s: &str) -> ShardSpec {
    s.parse().expect("valid spec")
}

/// Polls until `want` records arrived (or the deadline passes).
async fn consume(c: &mut Consumer, want: usize, within: Duration) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} records arrived",
            got.len()
        );
        got.extend(c.poll().await.expect("poll"));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_exactly_once_in_order_then_resume() {
    let cluster = Cluster::start().await;
    cluster.create_topic("T", 4).await;

    // Half over T:* (round-robin), half to explicit shards.
    let producer = Producer::connect(ProducerConfig::new(cluster.addr()))
        .await
        .expect("producer");
    let mut pending = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let target = if i % 2 == 0 {
            spec("T:*")
        } else {
            ShardSpec::One(ShardId::new("T", (i / 2 % 4) as u32 + 1))
        };
        let value = Bytes::from(format!("r{i}"));
        pending.push((i, producer.send(&target, None, value).await.expect("send")));
    }
    producer.flush().await;
    // Where each record landed, and per shard the send order of its records.
    let mut acked: HashMap<(ShardId, Offset), String> = HashMap::new();
    let mut sent_order: BTreeMap<ShardId, Vec<(usize, Offset)>> = BTreeMap::new();
    for (i, fut) in pending {
        let d = fut.await.expect("delivered");
        sent_order
            .entry(d.shard.clone())
            .or_default()
            .push((i, d.offset));
        assert!(
            acked.insert((d.shard, d.offset), format!("r{i}")).is_none(),
            "offset given twice"
        );
    }
    let stats = producer.close().await;
    assert_eq!(
        (stats.sent, stats.acknowledged, stats.failed),
        (RECORDS as u64, RECORDS as u64, 0)
    );
    assert_eq!(sent_order.len(), 4, "every partition got records");
    for (shard, recs) in &sent_order {
        // Offsets are dense from 0 and follow the send order.
        let offsets: Vec<Offset> = recs.iter().map(|r| r.1).collect();
        assert_eq!(
            offsets,
            (0..recs.len() as u64).collect::<Vec<_>>(),
            "{shard}"
        );
    }
    let ends = cluster.end_offsets("T", 4).await;
    assert_eq!(
        ends.iter().sum::<u64>(),
        RECORDS as u64,
        "nothing appended twice"
    );

    // First consumer: take about half, commit, go away.
    let config = ConsumerConfig::new(cluster.addr(), "g1", vec![spec("T:*")]);
    let mut first = Consumer::connect(config.clone()).await.expect("consumer");
    assert_eq!(first.assignment().len(), 4);
    let part1 = consume(&mut first, RECORDS / 2, Duration::from_secs(30)).await;
    first.commit().await.expect("commit");
    let positions: HashMap<ShardId, Offset> = first.positions().into_iter().collect();
    first.close();

    // Second consumer in the same group: resumes exactly where the first one committed.
    let mut second = Consumer::connect(config).await.expect("consumer");
    let resumed: HashMap<ShardId, Offset> = second.positions().into_iter().collect();
    assert_eq!(resumed, positions);
    let part2 = consume(&mut second, RECORDS - part1.len(), Duration::from_secs(30)).await;
    second.commit().await.expect("commit");

    let mut seen = HashSet::new();
    let mut last: HashMap<ShardId, Offset> = HashMap::new();
    for r in part1.iter().chain(&part2) {
        assert!(
            seen.insert((r.shard.clone(), r.offset)),
            "{}@{} handed out twice",
            r.shard,
            r.offset
        );
        if let Some(prev) = last.insert(r.shard.clone(), r.offset) {
            assert_eq!(r.offset, prev + 1, "{} out of order", r.shard);
        }
        let want = acked
            .get(&(r.shard.clone(), r.offset))
            .expect("an acknowledged record");
        assert_eq!(&r.record.value[..], want.as_bytes());
    }
    assert_eq!(seen.len(), RECORDS);

    // Nothing more arrives, and nothing is repeated, on a further poll.
    let extra = second.poll().await.expect("poll");
    assert!(extra.is_empty(), "{} unexpected records", extra.len());
    second.close();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_partitions_are_refused_clearly() {
    let cluster = Cluster::start().await;
    cluster.create_topic("K", 2).await;
    let producer = Producer::connect(ProducerConfig::new(cluster.addr()))
        .await
        .expect("producer");
    let e = producer
        .send(&spec("K:P3"), None, Bytes::from_static(b"x"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        e,
        ProducerError::UnknownShard {
            shard: ShardId::new("K", 3),
            partitions: 2
        }
    );
    let e = producer
        .send(&spec("Nope:*"), None, Bytes::from_static(b"x"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, ProducerError::UnknownTopic { .. }), "{e}");
    // Keyed records to K:* stay on one partition.
    let mut shards = HashSet::new();
    for _ in 0..20 {
        let f = producer
            .send(
                &spec("K:*"),
                Some(Bytes::from_static(b"user-7")),
                Bytes::from_static(b"v"),
            )
            .await
            .expect("send");
        shards.insert(f.await.expect("delivered").shard);
    }
    assert_eq!(shards.len(), 1);
    producer.close().await;

    let e = Consumer::connect(ConsumerConfig::new(cluster.addr(), "g", vec![spec("K:P9")]))
        .await
        .err()
        .expect("refused");
    let e2 = Consumer::connect(ConsumerConfig::new(
        cluster.addr(),
        "g",
        vec![spec("Nope:P1")],
    ))
    .await
    .err()
    .expect("refused");
    assert!(matches!(e2, ConsumerError::UnknownTopic { .. }), "{e2}");
    assert_eq!(
        e,
        ConsumerError::UnknownShard {
            shard: ShardId::new("K", 9),
            partitions: 2
        }
    );
    cluster.stop().await;
}

fn produce_args(
    id: u32,
    topics: &[&str],
    broker: &str,
    dir: &std::path::Path,
) -> shardq_producer::cli::Args {
    use clap::Parser;
    let mut argv = vec![
        "runproduce".to_string(),
        "--id".into(),
        id.to_string(),
        "--topics".into(),
    ];
    argv.extend(topics.iter().map(|t| t.to_string()));
    argv.extend([
        "--broker".into(),
        broker.into(),
        "--log_loc".into(),
        dir.display().to_string(),
        "--ack-log".into(),
    ]);
    shardq_producer::cli::Args::try_parse_from(argv).expect("valid flags")
}

fn consume_args(
    id: u32,
    topics: &[&str],
    broker: &str,
    dir: &std::path::Path,
) -> shardq_consumer::cli::Args {
    use clap::Parser;
    let mut argv = vec![
        "runconsume".to_string(),
        "--id".into(),
        id.to_string(),
        "--topics".into(),
    ];
    argv.extend(topics.iter().map(|t| t.to_string()));
    argv.extend([
        "--broker".into(),
        broker.into(),
        "--log-loc".into(),
        dir.display().to_string(),
        "--idle-timeout".into(),
        "1".into(),
        "--max-wait-ms".into(),
        "100".into(),
    ]);
    shardq_consumer::cli::Args::try_parse_from(argv).expect("valid flags")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runproduce_and_runconsume_move_a_log_file() {
    let cluster = Cluster::start().await;
    cluster.create_topic("T1", 2).await;
    cluster.create_topic("T2", 2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = [
        "21:52:23\tMSG1\t\tP2\t\tT1",
        "21:52:23\tMSG2\t\t*\t\tT2",
        "",
        "21:52:24   MSG3   P1   T1",
        "21:52:24\tMSG4\t\t*\t\tT1",
        "21:52:25\tMSG5\t\tP2\t\tT1",
    ];
    std::fs::write(dir.path().join("producer_1.txt"), lines.join("\n")).expect("write");
    let summary = shardq_producer::cli::run(produce_args(
        1,
        &["T1:*", "T2:*"],
        &cluster.addr(),
        dir.path(),
    ))
    .await
    .expect("runproduce");
    assert!(summary.ok(), "{summary}");
    assert_eq!(summary.acknowledged, 5);
    let acked = std::fs::read_to_string(dir.path().join("producer_1.acked")).expect("ack log");
    // A header, then one line per record: shard, offset, position in the input, message.
    assert_eq!(acked.lines().count(), 6);
    assert!(
        acked.lines().any(|l| l.starts_with("T1:P2 0 1 MSG1")),
        "{acked}"
    );

    let out = dir.path().join("out");
    let s = shardq_consumer::cli::run(
        consume_args(1, &["T1:P2", "T1:P1"], &cluster.addr(), &out),
        CancellationToken::new(),
    )
    .await
    .expect("runconsume");
    // Every T1 record (MSG4 went to whichever partition `*` picked; both are subscribed).
    assert_eq!(s.records, 4);
    let written = std::fs::read_to_string(out.join("consumer_1.txt")).expect("consumer file");
    let t1p2: Vec<&str> = written
        .lines()
        .filter(|l| l.starts_with("T1:P2     "))
        .collect();
    assert_eq!(t1p2.first(), Some(&"T1:P2     MSG1"));
    assert!(
        t1p2.iter().position(|l| l.ends_with("MSG1"))
            < t1p2.iter().position(|l| l.ends_with("MSG5"))
    );
    assert!(written.lines().any(|l| l == "T1:P1     MSG3"));
    assert!(
        written.lines().all(|l| !l.contains("MSG2")),
        "T2 was not subscribed"
    );

    // Run again in the same group: everything was committed, nothing is repeated.
    let s = shardq_consumer::cli::run(
        consume_args(1, &["T1:*"], &cluster.addr(), &out),
        CancellationToken::new(),
    )
    .await
    .expect("runconsume again");
    assert_eq!(s.records, 0);
    assert_eq!(
        std::fs::read_to_string(out.join("consumer_1.txt")).expect("file"),
        written
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runproduce_refuses_a_bad_file_and_sends_nothing() {
    let cluster = Cluster::start().await;
    cluster.create_topic("T1", 2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "1 OK1 P1 T1\n1 BAD1 P3 T1\n1 BAD2 P1\n\n1 BAD3 P1 T9\n1 BAD4 Px T1\n1 OK2 * T1\n";
    std::fs::write(dir.path().join("producer_4.txt"), text).expect("write");
    let err = shardq_producer::cli::run(produce_args(4, &["T1:P1"], &cluster.addr(), dir.path()))
        .await
        .expect_err("refused");
    let invalid = err
        .downcast_ref::<shardq_producer::cli::InvalidInput>()
        .unwrap_or_else(|| panic!("not an InvalidInput: {err:#}"));
    let lines: Vec<&str> = invalid.lines.iter().map(String::as_str).collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(
        lines[0].starts_with("producer_4.txt:2: unknown partition P3 of T1"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("producer_4.txt:3: expected 4 fields"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("producer_4.txt:5: unknown topic \"T9\""),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("producer_4.txt:6: partition \"Px\""),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].starts_with("producer_4.txt:7: `*` may pick any partition of T1"),
        "{}",
        lines[4]
    );
    assert_eq!(
        cluster.end_offsets("T1", 2).await,
        vec![0, 0],
        "nothing was produced"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runconsume_with_the_same_id_do_not_both_write() {
    let cluster = Cluster::start().await;
    cluster.create_topic("D", 2).await;
    let producer = Producer::connect(ProducerConfig::new(cluster.addr()))
        .await
        .expect("producer");
    let mut pending = Vec::new();
    for i in 0..200 {
        let value = Bytes::from(format!("d{i}"));
        pending.push(
            producer
                .send(&spec("D:*"), None, value)
                .await
                .expect("send"),
        );
    }
    producer.flush().await;
    for f in pending {
        f.await.expect("delivered");
    }
    producer.close().await;

    // Both started at once, as a user would from two terminals.
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let addr = cluster.addr();
    let start = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_runconsume"))
            .args(["--id", "1", "--topics", "D:*", "--broker", &addr])
            .args([
                "--log_loc",
                &d,
                "--idle-timeout",
                "2",
                "--max-wait-ms",
                "100",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn runconsume")
    };
    let (a, b) = (start(), start());
    let limit = Duration::from_secs(60);
    let (a, b) = tokio::join!(
        tokio::time::timeout(limit, a.wait_with_output()),
        tokio::time::timeout(limit, b.wait_with_output())
    );
    let outs = [a, b].map(|o| {
        let o = o.expect("runconsume ended in time").expect("output");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    });
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.0).collect();
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(1)),
        "one must run and one be refused: {outs:#?}"
    );
    let refused = &outs.iter().find(|o| o.0 == Some(1)).expect("refused").1;
    let file = dir.path().join("consumer_1.txt");
    assert!(
        refused.contains(&format!(
            "{} is in use: another runconsume --id 1 is writing to it",
            file.display()
        )),
        "{refused}"
    );
    let written = std::fs::read_to_string(&file).expect("consumer file");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 200, "every record exactly once");
    let distinct: HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(distinct.len(), 200, "no duplicates");
    cluster.stop().await;
}
