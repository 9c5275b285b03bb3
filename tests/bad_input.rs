//! Bad input is answered with a clear, typed error that names what is wrong, and nothing is
//! produced: invalid topic names, unknown topics, malformed log files, oversized records.

mod common;

use bytes::Bytes;
use clap::Parser;
use shardq_producer::Producer;
use shardq_protocol::{ErrorKind, Request, Response, ShardId, ShardSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_produces_nothing() {
    let cluster = common::Cluster::start(2, "interval=100").await;
    cluster.create_topic("T1", 2).await;
    let client = cluster.client().await;

    // Invalid topic names, through the CLI binary: non-zero exit and a message naming the fault.
    // `.` and `..` would name the current or parent directory wherever a topic becomes a path,
    // and `-x` reads as an option on every command line that takes a topic.
    for bad in [
        "bad/name",
        "",
        &"x".repeat(129),
        ".",
        "..",
        "-x",
        "--partitions",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
            .args([
                "topic",
                "create",
                "--partitions",
                "2",
                "--broker",
                &cluster.addr(),
                "--token-file",
            ])
            .arg(cluster.endpoint().token)
            .args(["--", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "topic {bad:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid name"), "{err}");
    }
    let zero = client
        .admin(Request::CreateTopic {
            name: "Z".into(),
            partitions: 0,
            replication_factor: None,
            min_insync: None,
            retention: Default::default(),
        })
        .await;
    assert!(matches!(
        zero.unwrap_err().kind(),
        Some(ErrorKind::BadRequest { .. })
    ));

    // Unknown topic: metadata and produce both say so.
    let err = client
        .admin(Request::Metadata {
            topics: vec!["Nope".into()],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), Some(ErrorKind::UnknownTopic { topic }) if topic == "Nope"),
        "{err}"
    );
    let producer = Producer::connect(cluster.endpoint().producer_config())
        .await
        .unwrap();
    let e = producer
        .send(
            &ShardSpec::All("Nope".into()),
            None,
            Bytes::from_static(b"x"),
        )
        .await
        .err()
        .expect("unknown topic refused");
    assert!(e.to_string().contains("Nope"), "{e}");
    let e = producer
        .send(
            &ShardSpec::One(ShardId::new("T1", 3)),
            None,
            Bytes::from_static(b"x"),
        )
        .await
        .err()
        .expect("unknown partition refused");
    assert!(e.to_string().contains("T1:P3"), "{e}");

    // A record over the broker's maximum (1 MiB by default) fails with RecordTooLarge.
    let big = producer
        .send(
            &ShardSpec::One(ShardId::new("T1", 1)),
            None,
            Bytes::from(vec![7u8; (1 << 20) + 1]),
        )
        .await
        .unwrap()
        .await;
    let e = big.expect_err("oversized record accepted");
    assert!(e.to_string().contains("larger than the maximum"), "{e}");

    // Malformed log file: every bad line named with file and line, nothing produced.
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(
        logs.path().join("producer_7.txt"),
        "21:52:23\tMSG1\t\tP1\t\tT1\n21:52:24\tMSG2\tP1\n21:52:25\tMSG3\t\tP9\t\tT1\n21:52:26\tMSG4\t\tP1\t\tNope\n",
    )
    .unwrap();
    let dir = logs.path().display().to_string();
    let addr = cluster.addr();
    let token = cluster.endpoint().token.display().to_string();
    let args = shardq_producer::cli::Args::try_parse_from([
        "runproduce",
        "--token-file",
        &token,
        "--id",
        "7",
        "--broker",
        &addr,
        "--log_loc",
        &dir,
        "--topics",
        "T1:*",
    ])
    .unwrap();
    let err = format!(
        "{:#}",
        shardq_producer::cli::run(args)
            .await
            .expect_err("bad file accepted")
    );
    for line in [2, 3, 4] {
        assert!(
            err.contains(&format!("producer_7.txt:{line}:")),
            "line {line} not named in: {err}"
        );
    }
    assert!(!err.contains("producer_7.txt:1:"), "{err}");
    // Nothing reached T1:P1 (MSG1 was valid but must not be sent).
    for p in 1..=2 {
        let r = client
            .shard_request(
                &ShardId::new("T1", p),
                |epoch| Request::ListOffsets {
                    shard: ShardId::new("T1", p),
                    epoch,
                },
                std::time::Duration::from_secs(5),
                tokio::time::Instant::now() + std::time::Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert!(
            matches!(r, Response::Offsets { end: 0, .. }),
            "T1:P{p}: {r:?}"
        );
    }
    cluster.stop().await;
}
