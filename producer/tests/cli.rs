//! `runproduce` against a real in-process cluster: a bad line (here an oversized message) stops
//! the whole file before anything is sent; a failed record makes the exit status non-zero; Ctrl-C
//! stops sending, waits for what was sent, leaves a whole-line ack log and prints the summary.

// The consumer's tests start the same one-router, two-broker cluster.
#[path = "../../consumer/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use support::Cluster;
use tokio::process::Command;
use tokio::time::Instant;

const RUNPRODUCE: &str = env!("CARGO_BIN_EXE_runproduce");

fn runproduce(args: &[&str]) -> Command {
    let mut c = Command::new(RUNPRODUCE);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Waits for the process to end (at most `limit`), returning its exit code and stderr.
async fn finish(child: tokio::process::Child, limit: Duration) -> (Option<i32>, String) {
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .expect("runproduce ended in time")
        .expect("runproduce output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_is_named_and_nothing_is_sent() {
    let cluster = Cluster::start().await;
    cluster.create_topic("bad", 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "1 small P1 bad\n1 {} P1 bad\n1 after P1 bad\n",
        "m".repeat(2_000_000)
    );
    std::fs::write(dir.path().join("producer_9.txt"), text).expect("write");
    let addr = cluster.addr();
    let d = dir.path().display().to_string();
    let args = shardq_producer::cli::Args::try_parse_from([
        "runproduce",
        "--id",
        "9",
        "--topics",
        "bad:P1",
        "--broker",
        &addr,
        "--log_loc",
        &d,
    ])
    .expect("flags");
    let err = shardq_producer::cli::run(args).await.expect_err("refused");
    let invalid = err
        .downcast_ref::<shardq_producer::cli::InvalidInput>()
        .unwrap_or_else(|| panic!("not an InvalidInput: {err:#}"));
    assert_eq!(
        invalid.lines,
        vec!["producer_9.txt:2: message of 2000000 bytes exceeds --max-record-bytes 1048576"]
    );
    assert_eq!(cluster.end_offsets("bad", 1).await, vec![0], "nothing sent");

    // Through the binary too: non-zero exit, the line named, nothing sent.
    let child = runproduce(&[
        "--id",
        "9",
        "--topics",
        "bad:P1",
        "--broker",
        &addr,
        "--log_loc",
        &d,
    ])
    .spawn()
    .expect("spawn runproduce");
    let (code, err) = finish(child, Duration::from_secs(60)).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("producer_9.txt:2: message of 2000000 bytes"),
        "{err}"
    );
    assert!(err.contains("nothing was sent"), "{err}");
    assert_eq!(cluster.end_offsets("bad", 1).await, vec![0], "nothing sent");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_failed_record_makes_the_exit_status_non_zero() {
    // Refused up front, no cluster needed.
    let child = runproduce(&[
        "--id",
        "4",
        "--topics",
        "T:*",
        "--broker",
        "127.0.0.1:1",
        "--count",
        "1",
        "--size",
        "20000000",
    ])
    .spawn()
    .expect("spawn runproduce");
    let (code, err) = finish(child, Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--size 20000000 exceeds --max-record-bytes 1048576"),
        "{err}"
    );

    // A producer limit above the brokers' (1 MiB): the brokers refuse, the run fails.
    let cluster = Cluster::start().await;
    cluster.create_topic("T", 1).await;
    let child = runproduce(&[
        "--id",
        "4",
        "--topics",
        "T:*",
        "--broker",
        &cluster.addr(),
        "--count",
        "2",
        "--size",
        "1500000",
        "--max-record-bytes",
        "2000000",
    ])
    .spawn()
    .expect("spawn runproduce");
    let (code, err) = finish(child, Duration::from_secs(60)).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("larger than the maximum"), "{err}");
    assert!(err.contains("acknowledged 0 failed 2"), "{err}");
    cluster.stop().await;
}

/// The number after `word ` in the summary line.
fn count_after(summary: &str, word: &str) -> u64 {
    let at = summary
        .find(&format!("{word} "))
        .unwrap_or_else(|| panic!("no {word:?} in {summary}"));
    summary[at + word.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {word:?} in {summary}"))
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |d| d.iter().filter(|b| **b == b'\n').count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_sending_waits_for_acks_and_reports() {
    let cluster = Cluster::start().await;
    cluster.create_topic("S", 2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display().to_string();
    let child = runproduce(&[
        "--id",
        "3",
        "--topics",
        "S:*",
        "--broker",
        &cluster.addr(),
        "--log_loc",
        &d,
        "--count",
        "1000000",
        "--rate",
        "1000",
        "--ack-log",
        "--timeout-secs",
        "10",
    ])
    .spawn()
    .expect("spawn runproduce");
    let ack_log = dir.path().join("producer_3.acked");
    // Interrupt mid-stream, once a good part is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while line_count(&ack_log) < 200 {
        assert!(Instant::now() < deadline, "no acknowledgements arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(killed.success());
    let (code, err) = finish(child, Duration::from_secs(30)).await;
    assert_eq!(code, Some(130), "{err}");
    let summary = err
        .lines()
        .find(|l| l.contains("acknowledged"))
        .unwrap_or_else(|| panic!("no summary in {err}"));
    assert!(summary.contains("(interrupted by Ctrl-C: "), "{summary}");
    let (sent, acked) = (
        count_after(summary, "sent"),
        count_after(summary, "acknowledged"),
    );
    assert_eq!(count_after(summary, "failed"), 0, "{summary}");
    assert_eq!(sent, acked, "everything sent was acknowledged: {summary}");
    assert!(sent < 1_000_000, "{summary}");

    // The ack log holds exactly the acknowledged records, in whole lines, offsets dense per shard.
    let log = std::fs::read_to_string(&ack_log).expect("ack log");
    assert!(
        log.ends_with('\n'),
        "truncated last line: {:?}",
        log.lines().last()
    );
    assert!(
        log.starts_with(shardq_producer::cli::ACK_LOG_HEADER),
        "{log:.200}"
    );
    let mut next = std::collections::HashMap::new();
    let mut records = std::collections::BTreeSet::new();
    for l in log.lines().skip(1) {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 4, "{l}");
        assert!(f[3].starts_with("p3-"), "{l}");
        let want = next.entry(f[0].to_string()).or_insert(0u64);
        assert_eq!(f[1].parse::<u64>().ok(), Some(*want), "{l}");
        *want += 1;
        assert!(records.insert(f[2].parse::<u64>().unwrap()), "{l}");
    }
    assert_eq!(log.lines().count() as u64 - 1, acked);
    let ends = cluster.end_offsets("S", 2).await;
    assert_eq!(
        ends.iter().sum::<u64>(),
        acked,
        "nothing sent unacknowledged"
    );
    cluster.stop().await;
}
