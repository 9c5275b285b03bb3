//! A broker removed from a `shardq up` cluster: its data directory (DATA/broker-N) is deleted
//! when it exits removed, and `--keep-removed-data` keeps it; the commands say where it is.

mod common;

use std::time::Duration;

async fn remove_broker_3(up: &common::UpCluster) -> String {
    let o = common::cli(&up.endpoint(), &["broker", "remove", "3"], "").await;
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("drained and removed"), "{}", o.stdout);
    assert!(o.stdout.contains("DATA/broker-3"), "{}", o.stdout);
    o.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_brokers_data_dir_is_deleted_unless_kept() {
    for keep in [false, true] {
        let extra: &[&str] = if keep { &["--keep-removed-data"] } else { &[] };
        let up = common::UpCluster::start(3, extra).await;
        up.ready_with_topic(3, "R", 6, Some(2)).await;
        let dir = up.dir.path().join("broker-3");
        assert!(dir.is_dir());
        remove_broker_3(&up).await;
        // `shardq up` decides about the directory before it drops the broker from
        // cluster.json, so once broker 3 is gone from there the decision is made.
        common::wait_until(Duration::from_secs(30), "up forgets broker 3", || {
            let gone = up.broker_pid(3).is_none();
            async move { gone }
        })
        .await;
        assert_eq!(dir.is_dir(), keep, "{} (keep: {keep})", dir.display());
        up.stop().await;
    }
}
