//! The 2-producer/2-consumer scenario end to end, in process: a 3-broker cluster, the repo's
//! producer log files, `runproduce`/`runconsume` logic, and the verifier's verdict.

mod common;

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
    let (at, dir) = (cluster.endpoint(), logs.path());
    let c1 = common::spawn_consumer(&at, dir, 1, &["T1:P1", "T2:P1", "T1:P2", "T2:P2"], 3);
    let c2 = common::spawn_consumer(&at, dir, 2, &["T1:*", "T2:*"], 3);
    let p1 = common::spawn_producer(&at, dir, 1, &["T1:P1", "T2:P1", "T1:P2", "T2:P2"], &[]);
    let p2 = common::spawn_producer(&at, dir, 2, &["T1:*", "T2:*"], &[]);
    for p in [p1, p2] {
        let summary = p.await.unwrap().expect("producer runs");
        assert!(summary.ok(), "{summary}");
        assert_eq!(summary.acknowledged, 200);
    }
    for c in [c1, c2] {
        c.await.unwrap().expect("consumer runs");
    }
    let report = common::verify_passes(
        dir,
        &[
            (1, &["T1:P1", "T2:P1", "T1:P2", "T2:P2"]),
            (2, &["T1:*", "T2:*"]),
        ],
    );
    assert_eq!(report.produced, 400);
    assert_eq!(report.consumers[0].received, 400);
    assert_eq!(report.consumers[1].received, 400);
    cluster.stop().await;
}
