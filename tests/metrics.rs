//! Prometheus metrics of a `shardq up` cluster: the router's and every broker's `/metrics`
//! answer with what the cluster did (records produced and fetched per shard, requests, fsyncs,
//! connections, shards by role), `promtool check metrics` accepts both, and a real Prometheus
//! server scrapes both (its targets API shows every target up).
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package, which `.ci/run` installs.
//! Without them the Prometheus half is skipped with a notice, unless SHARDQ_REQUIRE_TOOLS is set
//! (as `.ci/run` does), where their absence fails the test.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::http::call;
use common::{wait_until, UpCluster};
use shardq_protocol::{ShardId, ShardSpec};

/// `http://ADDR/...` -> `ADDR`.
fn host(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .expect("an address")
        .to_string()
}

/// Whether `tool` runs; panics if it must (SHARDQ_REQUIRE_TOOLS) and does not.
fn have(tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("SHARDQ_REQUIRE_TOOLS").is_none(),
            "{tool} is required here (apt-get install prometheus)"
        );
        eprintln!(
            "NOTICE: {tool} not installed (Debian package `prometheus`): that part is skipped"
        );
    }
    ok
}

/// `promtool check metrics` on `text`.
fn promtool_accepts(text: &str, what: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the {what}'s metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Value of the sample `name{labels}` (exact line prefix) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

async fn run_prometheus(dir: &Path, targets: &[String]) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: shardq\n    static_configs:\n      - targets: [{list}]\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let child = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    (child, format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_and_brokers_export_metrics_prometheus_scrapes() {
    let up = UpCluster::start(2, &[]).await;
    let info = up.info();
    let router_http = host(info["http"].as_str().expect("http in cluster.json"));
    let brokers: Vec<String> = info["broker_metrics"]
        .as_array()
        .expect("broker_metrics in cluster.json")
        .iter()
        .map(|b| host(b[1].as_str().unwrap()))
        .collect();
    assert_eq!(brokers.len(), 2);

    // Some traffic: a topic, records produced and read back.
    let at = up.endpoint();
    up.ready_with_topic(2, "M", 2, Some(2)).await;
    let producer = shardq_producer::Producer::connect(at.producer_config())
        .await
        .expect("producer");
    let target = ShardSpec::One(ShardId::new("M", 1));
    let mut pending = Vec::new();
    for i in 0..200u32 {
        let v = bytes::Bytes::from(format!("m{i}"));
        pending.push(producer.send(&target, None, v).await.expect("queued"));
    }
    for d in pending {
        d.await.expect("acknowledged");
    }
    producer.close().await;

    // The router learns offsets from the brokers' heartbeats.
    let end = "shardq_shard_end_offset{topic=\"M\",partition=\"1\"}";
    wait_until(
        Duration::from_secs(30),
        "the router's metrics show M:1's end",
        || {
            let router_http = router_http.clone();
            async move {
                let text = call(&router_http, "GET", "/metrics", None, None).await.body;
                sample(&text, end) == Some(200.0)
            }
        },
    )
    .await;
    let text = call(&router_http, "GET", "/metrics", None, None).await.body;
    for series in [
        "shardq_brokers{state=\"up\"}",
        "shardq_shards",
        "shardq_shards_under_replicated",
        "shardq_shard_end_offset{topic=\"M\",partition=\"1\"}",
    ] {
        assert!(sample(&text, series).is_some(), "{series} missing:\n{text}");
    }
    assert_eq!(sample(&text, "shardq_brokers{state=\"up\"}"), Some(2.0));

    // Which broker leads M:1 (it appended the records; the other fetched them as a follower).
    let mut produced = 0.0;
    for b in &brokers {
        let t = call(b, "GET", "/metrics", None, None).await;
        assert_eq!(t.status, 200);
        let t = t.body;
        for series in [
            "shardq_broker_connections",
            "shardq_broker_shards{role=\"leader\"}",
            "shardq_broker_fsync_duration_seconds_count",
        ] {
            assert!(
                sample(&t, series).is_some(),
                "{series} missing on {b}:\n{t}"
            );
        }
        assert!(sample(&t, "shardq_broker_connections").unwrap() >= 1.0);
        produced += sample(
            &t,
            "shardq_broker_produced_records_total{topic=\"M\",partition=\"1\"}",
        )
        .unwrap_or(0.0);
    }
    assert_eq!(produced, 200.0, "the leader counted every record once");

    if have("promtool") {
        promtool_accepts(&text, "router");
        for b in &brokers {
            promtool_accepts(&call(b, "GET", "/metrics", None, None).await.body, b);
        }
    }
    if have("prometheus") {
        let dir = tempfile::tempdir().unwrap();
        let mut targets = vec![router_http.clone()];
        targets.extend(brokers.iter().cloned());
        let (mut prom, prom_at) = run_prometheus(dir.path(), &targets).await;
        let want = targets.len();
        wait_until(
            Duration::from_secs(60),
            "prometheus scrapes every target",
            || {
                let prom_at = prom_at.clone();
                async move {
                    let Ok(a) = tokio::time::timeout(
                        Duration::from_secs(5),
                        call_quiet(&prom_at, "/api/v1/targets"),
                    )
                    .await
                    else {
                        return false;
                    };
                    let Some(a) = a else { return false };
                    let active = a["data"]["activeTargets"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    active.len() == want && active.iter().all(|t| t["health"] == "up")
                }
            },
        )
        .await;
        let _ = prom.kill().await;
    }
    up.stop().await;
}

/// GET `path` on `addr` as JSON, None while the server is not answering yet.
async fn call_quiet(addr: &str, path: &str) -> Option<serde_json::Value> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let a = call(addr, "GET", path, None, None).await;
    (a.status == 200).then(|| a.json())
}
