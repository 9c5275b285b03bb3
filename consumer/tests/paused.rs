//! `runconsume` stopped (SIGSTOP) for longer than its `--idle-timeout` while records arrive, then
//! continued: idleness is "the brokers answered nothing new", not "time passed", so it reads
//! every record and only then stops.

#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use shardq_producer::{Producer, ProducerConfig};
use shardq_protocol::ShardSpec;
use support::Cluster;
use tokio::time::Instant;

/// Kills the process on drop (a failed assertion must not leave it stopped behind).
struct Guard(tokio::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            unsafe {
                libc::kill(pid as i32, libc::SIGCONT);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

async fn produce(addr: &str, from: usize, to: usize) {
    let producer = Producer::connect(ProducerConfig::new(addr)).await.unwrap();
    let mut pending = Vec::new();
    for i in from..to {
        pending.push(
            producer
                .send(
                    &ShardSpec::All("S".into()),
                    None,
                    Bytes::from(format!("m{i}")),
                )
                .await
                .unwrap(),
        );
    }
    for d in pending {
        d.await.expect("acknowledged");
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stopped_past_its_idle_timeout_resumes_and_reads_everything() {
    let cluster = Cluster::start().await;
    cluster.create_topic("S", 3).await;
    let addr = cluster.addr();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("consumer_1.txt");
    produce(&addr, 0, 10).await;

    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runconsume"))
        .args([
            "--id",
            "1",
            "--topics",
            "S:*",
            "--idle-timeout",
            "2",
            "--broker",
            &addr,
        ])
        .arg("--log_loc")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    let mut guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&out) < 10 {
        assert!(
            Instant::now() < deadline,
            "the first records were not consumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stopped mid long-poll for longer than its idle timeout (that time passing is the point of
    // the test, so it is slept, not awaited): its pending long polls are answered "nothing new"
    // while it is stopped (after their 500 ms wait), then 500 more records are acknowledged.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce(&addr, 10, 510).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }

    let status = tokio::time::timeout(Duration::from_secs(60), guard.0.wait())
        .await
        .expect("runconsume stops once idle")
        .unwrap();
    let mut stdout = String::new();
    if let Some(mut s) = guard.0.stdout.take() {
        use tokio::io::AsyncReadExt;
        s.read_to_string(&mut stdout).await.unwrap();
    }
    assert!(status.success(), "{status:?} {stdout}");
    assert_eq!(lines(&out), 510, "runconsume gave up early: {stdout}");
    cluster.stop().await;
}
