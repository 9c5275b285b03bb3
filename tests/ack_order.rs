//! `runproduce --ack-log` writes acknowledgements in the order they arrive: while one broker is
//! paused (SIGSTOP) and a record waits on it, the records another broker acknowledges keep
//! reaching `producer_N.acked`; afterwards the verifier still pins every record from that log.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use shardq_protocol::{Request, Response};

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// SIGCONTs the paused broker on drop, so a failed assertion never leaves it stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_log_grows_in_ack_order_while_a_broker_is_paused() {
    let up = common::UpCluster::start(2, &[]).await;
    let at = up.endpoint();
    let client = at.client().await;
    common::wait_until(Duration::from_secs(30), "both brokers up", || {
        let client = client.clone();
        async move {
            matches!(client.admin(Request::ListBrokers).await,
                Ok(Response::Brokers(b)) if b.len() == 2)
        }
    })
    .await;
    let created = client
        .admin(Request::CreateTopic {
            name: "A".into(),
            partitions: 8,
            // One replica per shard, so the records for paused broker 2 wait for it (with
            // more, its shards would fail over).
            replication_factor: Some(1),
            min_insync: None,
            retention: Default::default(),
        })
        .await
        .unwrap();
    assert!(matches!(created, Response::TopicCreated(_)), "{created:?}");

    let logs = tempfile::tempdir().unwrap();
    let total: u64 = 12_000;
    let text: String = (0..total).map(|i| format!("00:00:00 m{i} * A\n")).collect();
    std::fs::write(logs.path().join("producer_1.txt"), text).unwrap();
    let acked = logs.path().join("producer_1.acked");
    let producer = common::spawn_producer(
        &at,
        logs.path(),
        1,
        &["A:*"],
        &["--rate", "3000", "--timeout-secs", "60"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&acked) < 500 {
        assert!(Instant::now() < deadline, "no acknowledgements arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Broker 2 is paused: what was sent to it waits. Broker 1 keeps acknowledging, and those
    // acknowledgements must reach the log now, not after broker 2's.
    let pid = up.broker_pid(2).expect("broker 2 runs");
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let resume = Resume(pid);
    let paused_at = lines(&acked);
    let deadline = Instant::now() + Duration::from_secs(15);
    while lines(&acked) < paused_at + 2_000 {
        assert!(
            Instant::now() < deadline,
            "the ack log grew from {paused_at} to only {} lines in 15 s while broker 2 was paused",
            lines(&acked)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(resume);

    let summary = producer.await.unwrap().expect("runproduce runs");
    assert!(summary.ok(), "{summary}");
    assert_eq!(summary.acknowledged, total);
    let consumer = common::spawn_consumer(&at, logs.path(), 1, &["A:*"], 3);
    consumer.await.unwrap().expect("runconsume runs");
    let report = common::verify_passes(logs.path(), &[(1, &["A:*"])]);
    assert_eq!(report.produced as u64, total);
    assert_eq!((report.failed, report.unresolved), (0, 0));
    client.close();
    up.stop().await;
}
