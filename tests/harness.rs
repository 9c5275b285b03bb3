//! The test harness itself: a cluster dropped without `stop` (a test whose assertion failed)
//! leaves no router or broker process behind.

mod common;

use std::time::Duration;

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie awaiting its (dead) parent's reaping counts as gone.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true);
    exists && !zombie
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_cluster_leaves_no_process_behind() {
    let up = common::UpCluster::start(2, &[]).await;
    let mut pids = vec![up.router_pid()];
    common::wait_until(Duration::from_secs(30), "both brokers started", || {
        let n = (1..=2).filter(|id| up.broker_pid(*id).is_some()).count();
        async move { n == 2 }
    })
    .await;
    pids.extend((1..=2).filter_map(|id| up.broker_pid(id)));
    assert!(pids.iter().all(|p| alive(*p)));
    drop(up);
    common::wait_until(Duration::from_secs(10), "every process gone", || {
        let left = pids.iter().filter(|p| alive(**p)).count();
        async move { left == 0 }
    })
    .await;
}
