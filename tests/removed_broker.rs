//! `shardq up` and removed brokers, with real processes: a broker that is removed and killed
//! before it noticed is refused by the router when `up` restarts it, exits "removed", and is not
//! restarted again; a broker removed while running exits "removed" and is not restarted either;
//! `shardq broker add` never gives a new broker a removed id.

mod common;

use std::path::Path;
use std::time::Duration;

use common::wait_until;
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{ConnectionConfig, Request, Response};

fn cluster(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).ok()?).ok()
}

fn broker_pid(dir: &Path, id: u64) -> Option<i32> {
    cluster(dir)?["broker_pids"]
        .as_array()?
        .iter()
        .find(|p| p[0].as_u64() == Some(id))
        .and_then(|p| p[1].as_u64())
        .map(|p| p as i32)
}

async fn members(client: &ClusterClient) -> Vec<u32> {
    match client.admin(Request::ListBrokers).await {
        Ok(Response::Brokers(bs)) => bs.iter().map(|b| b.addr.id).collect(),
        other => panic!("{other:?}"),
    }
}

async fn remove(client: &ClusterClient, id: u32) {
    let answer = client
        .admin(Request::RemoveBroker { id, force: false })
        .await;
    assert!(
        matches!(answer, Ok(Response::BrokerRemoved { id: i, .. }) if i == id),
        "{answer:?}"
    );
}

/// Waits until `up`'s output contains `needle`.
async fn output_says(out: &Path, needle: &str) {
    wait_until(Duration::from_secs(20), needle, || {
        let found = std::fs::read_to_string(out).is_ok_and(|t| t.contains(needle));
        async move { found }
    })
    .await;
}

#[tokio::test]
async fn up_does_not_restart_a_removed_broker_nor_reuse_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let out = logs.path().join("up.out");
    let mut up = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
        .args(["up", "--brokers", "3", "--port", "0", "--data"])
        .arg(dir.path())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("shardq up starts");
    wait_until(Duration::from_secs(60), "cluster.json", || {
        let ok = (1..=3).all(|id| broker_pid(dir.path(), id).is_some());
        async move { ok }
    })
    .await;
    let router = cluster(dir.path()).unwrap()["router"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = shardq_protocol::Secret::load(&dir.path().join("cluster.token")).unwrap();
    let config = ConnectionConfig {
        secret: Some(secret),
        ..ConnectionConfig::default()
    };
    let client = ClusterClient::connect(&router, config).await.unwrap();
    wait_until(Duration::from_secs(20), "3 members", || {
        let client = client.clone();
        async move { members(&client).await.len() == 3 }
    })
    .await;

    // Broker 3 is removed while frozen (it cannot notice), then killed: `up` restarts it, the
    // router refuses it, and `up` leaves it down for good.
    let pid3 = broker_pid(dir.path(), 3).unwrap();
    unsafe {
        libc::kill(pid3, libc::SIGSTOP);
    }
    remove(&client, 3).await;
    common::kill9(pid3);
    output_says(
        &out,
        "broker-3 was removed from the cluster: the router refuses its id",
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "broker 3 gone from cluster.json",
        || {
            let gone = cluster(dir.path()).is_some_and(|c| {
                c["broker_pids"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|p| p[0].as_u64() != Some(3)))
            });
            async move { gone }
        },
    )
    .await;
    assert_eq!(members(&client).await, vec![1, 2]);

    // A new broker gets a new id, never the removed one.
    let (id, _) = shardq::up::request_broker(dir.path()).await.unwrap();
    assert_eq!(id, 4);
    wait_until(Duration::from_secs(20), "broker 4 registered", || {
        let client = client.clone();
        async move { members(&client).await == vec![1, 2, 4] }
    })
    .await;

    // Broker 4 is removed while running: it notices, exits "removed", and stays down.
    remove(&client, 4).await;
    output_says(
        &out,
        "broker-4 was removed from the cluster and exited (code 10); not restarting it",
    )
    .await;
    assert_eq!(members(&client).await, vec![1, 2]);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("broker-3 restarted"), "{text}");
    assert!(!text.contains("broker-4 exited"), "{text}");

    unsafe {
        libc::kill(up.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), up.wait())
        .await
        .expect("shardq up stops")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
