//! The autoscaler of `shardq up --autoscale 2..3`: four paced producers raise the load past the
//! upper threshold, the cluster grows to 3 brokers; the load stops, it shrinks back to 2. Every
//! record sent is verified (acknowledged exactly once in the consumer's file, in order), and the
//! decisions show in the router's metrics and web page data.

mod common;

use std::time::{Duration, Instant};

use common::http::call;
use common::{spawn_consumer, spawn_producer, verify_passes, wait_until, UpCluster};
use shardq_protocol::{BrokerStatus, Request, Response};

async fn serving(client: &shardq_protocol::cluster::ClusterClient) -> usize {
    match client.admin(Request::ListBrokers).await {
        Ok(Response::Brokers(b)) => b.iter().filter(|b| b.status == BrokerStatus::Up).count(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_grows_under_load_and_shrinks_back_when_it_stops() {
    let up = UpCluster::start(
        2,
        &[
            "--autoscale",
            "2..3",
            "--scale-up-above",
            "300",
            "--scale-down-below",
            "50",
            "--scale-window-secs",
            "3",
            "--scale-cooldown-secs",
            "3",
        ],
    )
    .await;
    let at = up.endpoint();
    let client = up.ready_with_topic(2, "A", 6, None).await;

    // 4 producers x 400 records/s for 20 s: 800 per broker, well above 300 at 2 or 3 brokers.
    let logs = tempfile::tempdir().unwrap();
    let per_producer = 8_000;
    for p in 1..=4u32 {
        let text: String = (0..per_producer)
            .map(|i| format!("00:00:00 p{p}-m{i} * A\n"))
            .collect();
        std::fs::write(logs.path().join(format!("producer_{p}.txt")), text).unwrap();
    }
    let consumer = spawn_consumer(&at, logs.path(), 1, &["A:*"], 20);
    let producers: Vec<_> = (1..=4u32)
        .map(|p| {
            spawn_producer(
                &at,
                logs.path(),
                p,
                &["A:*"],
                &["--rate", "400", "--timeout-secs", "60"],
            )
        })
        .collect();

    let started = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "a third broker added by the autoscaler",
        || {
            let client = client.clone();
            async move { serving(&client).await == 3 }
        },
    )
    .await;
    eprintln!("grew to 3 brokers {:?} into the load", started.elapsed());
    for p in producers {
        let s = p.await.unwrap().expect("runproduce runs");
        assert!(s.ok(), "{s}");
    }
    eprintln!("load stopped at {:?}", started.elapsed());
    wait_until(Duration::from_secs(90), "back to 2 brokers", || {
        let client = client.clone();
        async move {
            matches!(client.admin(Request::ListBrokers).await,
                Ok(Response::Brokers(b)) if b.len() == 2)
        }
    })
    .await;
    eprintln!("shrank back to 2 brokers at {:?}", started.elapsed());

    // The decisions, with their reasons, in the router's metrics and page data.
    let h = up.http();
    let m = call(&h, "GET", "/metrics", None, None).await.body;
    for line in [
        "shardq_autoscaler_decisions_total{action=\"add\"} 1",
        "shardq_autoscaler_decisions_total{action=\"remove\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    let view = call(&h, "GET", "/api/view", None, None).await.json();
    let decisions = view["autoscaler"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 2, "{view}");
    assert_eq!(decisions[0]["action"], "add");
    assert!(decisions[0]["reason"]
        .as_str()
        .unwrap()
        .contains("above 300"));
    assert_eq!(decisions[1]["action"], "remove");
    assert!(decisions[1]["reason"]
        .as_str()
        .unwrap()
        .contains("below 50"));
    // And in the status `shardq status` and `shardq watch` show.
    match client.admin(Request::Status).await {
        Ok(Response::Status(st)) => {
            let actions: Vec<&str> = st.scaling.iter().map(|d| d.action.as_str()).collect();
            assert_eq!(actions, ["add", "remove"], "{:?}", st.scaling);
        }
        other => panic!("status: {other:?}"),
    }

    consumer.await.unwrap().expect("runconsume runs");
    verify_passes(logs.path(), &[(1, &["A:*"])]);
    up.stop().await;
}
