//! The 2-producer/2-consumer scenario end to end, in process: a 3-broker cluster, the repo's
//! producer log files, `runproduce`/`runconsume` logic, and the verifier's verdict.

mod common;

use clap::Parser;
use shardq::verify::{verify, VerifySpec};
use shardq_protocol::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_two_consumers_pass_the_verifier() {
    let cluster = common::Cluster::start(3, "interval=100").await;
    cluster.create_topic("T1", 2).await;
    cluster.create_topic("T2", 2).await;
    let logs = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    for p in ["producer_1.txt", "producer_2.txt"] {
        std::fs::copy(format!("{root}/scripts/logs/{p}"), logs.path().join(p)).unwrap();
    }
    let addr = cluster.addr();
    let dir = logs.path().display().to_string();
    let consumer = |id: &str, topics: &[&str]| {
        let mut argv = vec![
            "runconsume",
            "--id",
            id,
            "--broker",
            &addr,
            "--log_loc",
            &dir,
            "--idle-timeout",
            "3",
            "--topics",
        ];
        argv.extend_from_slice(topics);
        let args = shardq_consumer::cli::Args::try_parse_from(argv).unwrap();
        tokio::spawn(shardq_consumer::cli::run(args, CancellationToken::new()))
    };
    let c1 = consumer("1", &["T1:P1", "T2:P1", "T1:P2", "T2:P2"]);
    let c2 = consumer("2", &["T1:*", "T2:*"]);
    let producer = |id: &str, topics: &[&str]| {
        let mut argv = vec![
            "runproduce",
            "--id",
            id,
            "--broker",
            &addr,
            "--log_loc",
            &dir,
            "--ack-log",
            "--topics",
        ];
        argv.extend_from_slice(topics);
        let args = shardq_producer::cli::Args::try_parse_from(argv).unwrap();
        tokio::spawn(shardq_producer::cli::run(args))
    };
    let p1 = producer("1", &["T1:P1", "T2:P1", "T1:P2", "T2:P2"]);
    let p2 = producer("2", &["T1:*", "T2:*"]);
    for p in [p1, p2] {
        let summary = p.await.unwrap().expect("producer runs");
        assert!(summary.ok(), "{summary}");
        assert_eq!(summary.acknowledged, 200);
    }
    for c in [c1, c2] {
        c.await.unwrap().expect("consumer runs");
    }
    let spec = VerifySpec {
        dir: logs.path().to_path_buf(),
        producers: vec![],
        consumers: vec![
            (
                1,
                ["T1:P1", "T2:P1", "T1:P2", "T2:P2"]
                    .iter()
                    .map(|s| s.parse().unwrap())
                    .collect(),
            ),
            (
                2,
                ["T1:*", "T2:*"]
                    .iter()
                    .map(|s| s.parse().unwrap())
                    .collect(),
            ),
        ],
    };
    let report = verify(&spec).unwrap();
    assert!(report.passed(), "{}", report.render());
    assert_eq!(report.produced, 400);
    assert_eq!(report.consumers[0].received, 400);
    assert_eq!(report.consumers[1].received, 400);
    cluster.stop().await;
}
