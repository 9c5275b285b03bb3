//! The router's HTTP side: every route of its OpenAPI document is called and answers as
//! documented, mutating calls are refused without the cluster secret (401) or with another one
//! (403), the seed's aliases answer like the routes they stand for, and a `shardq up` cluster
//! starts a broker when asked through the API.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::http::call;
use common::{wait_until, Cluster, UpCluster};

/// (method, path) pairs.
type Routes = BTreeSet<(String, String)>;

/// The (method, path) pairs of an OpenAPI document, and those that need the bearer token.
fn documented(doc: &serde_json::Value) -> (Routes, Routes) {
    let mut all = BTreeSet::new();
    let mut secured = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let key = (method.to_uppercase(), path.clone());
            if op.get("security").is_some() {
                secured.insert(key.clone());
            }
            all.insert(key);
        }
    }
    (all, secured)
}

/// A concrete path for a documented template.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "3")
        .replace("{name}", "H")
        .replace("/rm", "/rm?id=99")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers_and_mutations_need_the_secret() {
    let c = Cluster::start(3, "interval=100").await;
    let (h, token) = (c.http(), c.token());
    let h = h.as_str();
    let tok = Some(token.as_str());
    let doc = call(h, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let (routes, secured) = documented(&doc);
    let mut covered = Routes::new();
    let mut hit = |m: &str, p: &str| {
        covered.insert((m.to_string(), p.to_string()));
    };
    hit("GET", "/api/openapi.json");

    // Every mutating route: no token 401, someone else's 403, before anything else happens.
    assert!(secured.contains(&("POST".into(), "/api/topics".into())));
    assert!(!secured.iter().any(|(m, _)| m == "GET"), "{secured:?}");
    let stranger = "ab".repeat(32);
    for (m, p) in &secured {
        let path = concrete(p);
        let body = match (m.as_str(), p.as_str()) {
            ("POST", "/api/topics") => Some(r#"{"name":"Z","partitions":1}"#),
            ("PATCH", _) => Some(r#"{"partitions":99}"#),
            _ => None,
        };
        let none = call(h, m, &path, None, body).await;
        assert_eq!(
            none.status, 401,
            "{m} {path} without a token: {}",
            none.body
        );
        assert!(none.json()["error"].as_str().unwrap().contains("Bearer"));
        let wrong = call(h, m, &path, Some(&stranger), body).await;
        assert_eq!(
            wrong.status, 403,
            "{m} {path} with another secret: {}",
            wrong.body
        );
    }

    let a = call(h, "GET", "/healthz", None, None).await;
    assert_eq!((a.status, a.json()["status"].as_str()), (200, Some("ok")));
    hit("GET", "/healthz");
    let a = call(h, "GET", "/readyz", None, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["brokers_up"], 3);
    hit("GET", "/readyz");

    // Topics.
    let a = call(
        h,
        "POST",
        "/api/topics",
        tok,
        Some(r#"{"name":"H","partitions":6}"#),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["name"], "H");
    assert_eq!(
        a.json()["replication_factor"],
        3,
        "the default, 3 brokers up"
    );
    // Creating it again is idempotent; with another layout it is a conflict.
    let same = r#"{"name":"H","partitions":6}"#;
    let again = call(h, "POST", "/api/topics", tok, Some(same)).await;
    assert_eq!((again.status, again.json()), (201, a.json()));
    let other = r#"{"name":"H","partitions":7}"#;
    let again = call(h, "POST", "/api/topics", tok, Some(other)).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        again.json()["kind"]["TopicExists"].is_object(),
        "{}",
        again.body
    );
    for bad in [
        r#"{"name":"X"}"#,
        r#"{"name":"X","partitions":1,"color":"red"}"#,
        r#"{"name":"bad name","partitions":1}"#,
        r#"{"name":"X","partitions":1,"replication_factor":9}"#,
        "not json",
    ] {
        let a = call(h, "POST", "/api/topics", tok, Some(bad)).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
        assert!(a.json()["error"].is_string());
    }
    hit("POST", "/api/topics");
    let a = call(h, "GET", "/api/topics", None, None).await;
    assert_eq!(a.status, 200);
    assert!(a
        .json()
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "H"));
    hit("GET", "/api/topics");
    let a = call(h, "GET", "/api/topics/H", None, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["shards"].as_array().map(Vec::len),
        Some(6),
        "{}",
        a.body
    );
    let a = call(h, "GET", "/api/topics/nope", None, None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    hit("GET", "/api/topics/{name}");
    // Grow, never shrink; delete, and the name stays refused until every copy is gone.
    let a = call(
        h,
        "PATCH",
        "/api/topics/H",
        tok,
        Some(r#"{"partitions":8}"#),
    )
    .await;
    assert_eq!(
        (a.status, a.json()["partitions"].as_u64()),
        (200, Some(8)),
        "{}",
        a.body
    );
    for (bad, status) in [
        (r#"{"partitions":2}"#, 400),
        (r#"{"partitions":9,"x":1}"#, 400),
        ("nope", 400),
    ] {
        let a = call(h, "PATCH", "/api/topics/H", tok, Some(bad)).await;
        assert_eq!(a.status, status, "{bad}: {}", a.body);
    }
    let a = call(
        h,
        "PATCH",
        "/api/topics/nope",
        tok,
        Some(r#"{"partitions":2}"#),
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.body);
    // Retention: absent fields stay, null lifts a limit, 0 is refused.
    let a = call(
        h,
        "PATCH",
        "/api/topics/H",
        tok,
        Some(r#"{"retention_ms":60000,"retention_bytes":null}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["retention"]["ms"], 60_000, "{}", a.body);
    assert!(a.json()["retention"]["bytes"].is_null(), "{}", a.body);
    assert_eq!(a.json()["partitions"], 8, "{}", a.body);
    let a = call(
        h,
        "PATCH",
        "/api/topics/H",
        tok,
        Some(r#"{"retention_bytes":0}"#),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    hit("PATCH", "/api/topics/{name}");
    let a = call(h, "POST", "/api/topics/H/purge", tok, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["shards"].as_array().map(Vec::len),
        Some(8),
        "{}",
        a.body
    );
    let a = call(h, "POST", "/api/topics/nope/purge", tok, None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    hit("POST", "/api/topics/{name}/purge");
    let a = call(
        h,
        "POST",
        "/api/topics",
        tok,
        Some(r#"{"name":"Gone","partitions":2}"#),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = call(h, "DELETE", "/api/topics/Gone", tok, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["partitions"], 2, "{}", a.body);
    let a = call(h, "GET", "/api/topics/Gone", None, None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = call(h, "DELETE", "/api/topics/Gone", tok, None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    hit("DELETE", "/api/topics/{name}");

    // The cluster, its brokers and moves, and the seed's names for them.
    let cluster = call(h, "GET", "/api/cluster", None, None).await;
    assert_eq!(cluster.status, 200);
    let cluster = cluster.json();
    assert_eq!(cluster["brokers"].as_array().map(Vec::len), Some(3));
    assert_eq!(cluster["shards"].as_array().map(Vec::len), Some(8));
    hit("GET", "/api/cluster");
    let ids = |v: &serde_json::Value| -> BTreeSet<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["addr"]["id"].as_u64().unwrap())
            .collect()
    };
    let home = call(h, "GET", "/home", None, None).await.json();
    assert_eq!(ids(&home["brokers"]), ids(&cluster["brokers"]));
    assert_eq!(
        (&home["epoch"], &home["topics"]),
        (&cluster["epoch"], &cluster["topics"])
    );
    hit("GET", "/home");
    let brokers = call(h, "GET", "/api/brokers", None, None).await.json();
    assert_eq!(ids(&brokers), BTreeSet::from([1, 2, 3]));
    hit("GET", "/api/brokers");
    assert_eq!(
        ids(&call(h, "GET", "/rep", None, None).await.json()),
        ids(&brokers)
    );
    hit("GET", "/rep");
    let a = call(h, "GET", "/api/moves", None, None).await;
    assert!(a.json().is_array(), "{}", a.body);
    hit("GET", "/api/moves");
    let a = call(h, "GET", "/heartbeat", None, None).await;
    assert_eq!(a.json()["status"], "ok");
    assert!(a.json()["epoch"].as_u64().is_some());
    hit("GET", "/heartbeat");

    // Metrics: the Prometheus text format, or OpenMetrics for a scraper that asks for it.
    let m = call(h, "GET", "/metrics", None, None).await;
    assert_eq!(m.status, 200);
    assert!(
        m.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        m.content_type
    );
    for line in [
        "shardq_brokers{state=\"up\"} 3",
        "shardq_shards 8",
        "shardq_topics 1",
        "shardq_shards_under_replicated ",
        "# TYPE shardq_router_http_requests_total counter",
        "shardq_router_http_requests_total{",
    ] {
        assert!(m.body.contains(line), "{line:?} missing from\n{}", m.body);
    }
    // 8 shards on 3 brokers: each leads 2 or 3.
    let led: Vec<u64> = (1..=3)
        .map(|b| {
            let prefix = format!("shardq_broker_shards_led{{broker=\"{b}\"}} ");
            m.body
                .lines()
                .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix} in\n{}", m.body))
        })
        .collect();
    assert_eq!(led.iter().sum::<u64>(), 8, "{led:?}");
    assert!(led.iter().all(|n| (2..=3).contains(n)), "{led:?}");
    assert!(!m.body.contains("# EOF"));
    let om = call_accepting(h, "/metrics", "application/openmetrics-text; version=1.0.0").await;
    assert!(
        om.starts_with("HTTP/1.1 200") || om.starts_with("HTTP/1.0 200"),
        "{om}"
    );
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    hit("GET", "/metrics");

    // Brokers: this cluster was not started by `shardq up`, so it cannot start one.
    for path in ["/api/brokers", "/add"] {
        let a = call(h, "POST", path, tok, None).await;
        assert_eq!(a.status, 409, "{path}: {}", a.body);
        assert!(a.json()["error"].as_str().unwrap().contains("shardq up"));
        hit("POST", path);
    }
    let a = call(h, "POST", "/rm?id=99", tok, None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = call(h, "POST", "/rm", tok, None).await;
    assert_eq!(a.status, 400, "{}", a.body);
    hit("POST", "/rm");
    let a = call(h, "DELETE", "/api/brokers/3?force=true", tok, None).await;
    assert_eq!(
        a.status, 409,
        "forcing out a live broker is refused: {}",
        a.body
    );
    let a = call(h, "DELETE", "/api/brokers/3", tok, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    hit("DELETE", "/api/brokers/{id}");
    wait_until(
        Duration::from_secs(60),
        "broker 3 drained and removed",
        || async { !ids(&call(h, "GET", "/api/brokers", None, None).await.json()).contains(&3) },
    )
    .await;

    // The web page (embedded, nothing fetched from elsewhere) and the data it draws.
    let page = call(h, "GET", "/", None, None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(page.body.contains("<svg id=\"ring\""));
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(
            !page.body.contains(external),
            "the page loads {external}..."
        );
    }
    hit("GET", "/");
    let v = call(h, "GET", "/api/view", None, None).await.json();
    // Broker 3 left above: the ring holds the tokens of 1 and 2, as many each (equal weights).
    let mut per_broker: std::collections::BTreeMap<u64, usize> = Default::default();
    for t in v["tokens"].as_array().expect("tokens") {
        *per_broker.entry(t[1].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(per_broker.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(per_broker[&1], per_broker[&2], "{per_broker:?}");
    let shards = v["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 8);
    for s in shards {
        let at = s["at"].as_f64().expect("a position");
        assert!((0.0..1.0).contains(&at), "{s}");
    }
    hit("GET", "/api/view");
    let first = first_event(h, "/api/events").await;
    assert!(first.contains("text/event-stream"), "{first}");
    let data = first
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let pushed: serde_json::Value = serde_json::from_str(data).expect("the event is a view");
    assert_eq!(pushed["shards"].as_array().map(Vec::len), Some(8));
    hit("GET", "/api/events");

    let a = call(h, "GET", "/no/such/route", None, None).await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("openapi"));

    assert_eq!(
        covered, routes,
        "every documented route is exercised, and nothing else"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shardq_up_cluster_starts_a_broker_when_asked_through_the_api() {
    let up = UpCluster::start(1, &[]).await;
    let info = up.info();
    let url = info["http"]
        .as_str()
        .expect("cluster.json names the HTTP address");
    let h = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix('/'))
        .expect("http://ADDR/")
        .to_string();
    let token = std::fs::read_to_string(up.dir.path().join("cluster.token")).unwrap();
    let token = token.trim();
    wait_until(Duration::from_secs(30), "the router's HTTP side", || {
        let h = h.clone();
        async move { call(&h, "GET", "/readyz", None, None).await.status == 200 }
    })
    .await;
    let a = call(&h, "POST", "/api/brokers", Some(token), None).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["id"], 2);
    let a = call(&h, "POST", "/add", Some(token), None).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["id"], 3);
    wait_until(Duration::from_secs(30), "brokers 2 and 3 up", || {
        let h = h.clone();
        async move {
            let b = call(&h, "GET", "/api/brokers", None, None).await.json();
            b.as_array()
                .is_some_and(|b| b.len() == 3 && b.iter().all(|x| x["status"] == "up"))
        }
    })
    .await;
    up.stop().await;
}

/// GET `path` with an `Accept` header; the raw answer.
async fn call_accepting(addr: &str, path: &str, accept: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut raw))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    raw
}

/// The headers and first event of a server-sent event stream (which never ends by itself).
async fn first_event(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let read = async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended before its first event");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                if body.contains("data: ") && body.contains("\n\n") {
                    return text;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a first event within 30 s")
}
