//! The router's web page in headless Chromium (driven over WebDriver by chromedriver): a
//! 2-broker `shardq up` cluster under load, a third broker added through the HTTP API, and the
//! page's DOM must show the moves appear, progress and finish, and the new broker's arc get
//! shards. A screenshot is kept at `target/tmp/web-page.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`, which `.ci/run` installs. Without them the
//! test is skipped with a notice, unless SHARDQ_REQUIRE_TOOLS is set (as `.ci/run` does).

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::call;
use common::{wait_until, UpCluster};
use serde_json::{json, Value};
use shardq_protocol::ShardSpec;

/// A chromedriver process and one headless Chromium session on it.
struct Browser {
    driver: tokio::process::Child,
    addr: String,
    session: String,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let addr = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(30), "chromedriver answers", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
        })
        .await;
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"]
            }
        } } });
        let answer = wd(&addr, "POST", "/session", Some(caps)).await;
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_string();
        Browser {
            driver,
            addr,
            session,
        }
    }

    async fn go(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        wd(&self.addr, "POST", &path, Some(json!({ "url": url }))).await;
    }

    /// Runs `script` in the page; its return value.
    async fn run(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        let a = wd(
            &self.addr,
            "POST",
            &path,
            Some(json!({ "script": script, "args": [] })),
        )
        .await;
        a["value"].clone()
    }

    async fn screenshot(&self) -> Vec<u8> {
        let path = format!("/session/{}/screenshot", self.session);
        let a = wd(&self.addr, "GET", &path, None).await;
        decode_base64(a["value"].as_str().expect("a screenshot"))
    }

    async fn stop(mut self) {
        let path = format!("/session/{}", self.session);
        wd(&self.addr, "DELETE", &path, None).await;
        let _ = self.driver.kill().await;
    }
}

/// One WebDriver call.
async fn wd(addr: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string());
    let a = call(addr, method, path, None, body.as_deref()).await;
    assert_eq!(a.status, 200, "WebDriver {method} {path}: {}", a.body);
    a.json()
}

fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let digits: Vec<u32> = chunk
            .iter()
            .filter(|c| **c != b'=')
            .map(|c| value(*c))
            .collect();
        let n = digits.iter().fold(0u32, |n, d| (n << 6) | d) << (6 * (4 - digits.len()));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..digits.len()]);
    }
    out
}

fn have_browser() -> bool {
    let ok = ["chromium", "chromedriver"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        assert!(
            std::env::var_os("SHARDQ_REQUIRE_TOOLS").is_none(),
            "chromium and chromedriver are required here (apt-get install chromium chromium-driver)"
        );
        eprintln!("NOTICE: chromium or chromedriver not installed: the browser test is skipped");
    }
    ok
}

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"
const moves = [...document.querySelectorAll('#moves tbody tr')].map(t => ({
    id: +t.dataset.move, phase: t.dataset.phase, progress: +t.dataset.progress, to: +t.dataset.to }));
return {
    epoch: document.body.dataset.epoch,
    brokers: document.querySelectorAll('#brokers tbody tr').length,
    shards: document.querySelectorAll('circle.shard').length,
    moves,
    led3: document.querySelectorAll('circle.shard[data-leader="3"]').length,
    tokens3: document.querySelectorAll('line.token[data-broker="3"]').length,
};"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_new_brokers_moves_progress_and_finish() {
    if !have_browser() {
        return;
    }
    // Moves throttled to 1 MB/s over ~2 MB shards, so each lasts long enough to be seen.
    let up = UpCluster::start(2, &["--broker-arg=--move-max-mbps=1"]).await;
    let (h, token) = (up.http(), up.token());
    let at = up.endpoint();
    up.ready_with_topic(2, "W", 8, Some(1)).await;
    // Preload ~16 MB, then keep a producer running throughout.
    let producer = Arc::new(
        shardq_producer::Producer::connect(at.producer_config())
            .await
            .expect("producer"),
    );
    let all = ShardSpec::All("W".into());
    let mut pending = Vec::new();
    for _ in 0..2_000 {
        let v = bytes::Bytes::from(vec![b'w'; 8_000]);
        pending.push(producer.send(&all, None, v).await.expect("queued"));
    }
    for d in pending {
        d.await.expect("preloaded");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn({
        let (producer, stop, acked, all) =
            (producer.clone(), stop.clone(), acked.clone(), all.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for i in 0..5u32 {
                    let d = producer
                        .send(&all, None, bytes::Bytes::from(format!("live-{i}")))
                        .await
                        .expect("queued");
                    let acked = acked.clone();
                    tokio::spawn(async move {
                        if d.await.is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
        }
    });

    let browser = Browser::start().await;
    browser.go(&format!("http://{h}/")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = browser.run(READ_PAGE).await;
        if v["brokers"] == 2 && v["shards"] == 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the cluster: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let a = call(&h, "POST", "/api/brokers", Some(&token), None).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["id"], 3);

    // Watch the page until every move to broker 3 is done.
    let (mut seen_moving, mut seen_partial) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(40);
    let last = loop {
        let v = browser.run(READ_PAGE).await;
        let to3: Vec<&Value> = v["moves"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["to"] == 3)
            .collect();
        for m in &to3 {
            if m["phase"] != "done" {
                seen_moving = true;
                let p = m["progress"].as_u64().unwrap_or(0);
                if p > 0 && p < 100 {
                    seen_partial = true;
                }
            }
        }
        let finished = !to3.is_empty() && to3.iter().all(|m| m["phase"] == "done");
        if finished && v["led3"].as_u64().unwrap_or(0) > 0 {
            break v;
        }
        if Instant::now() >= deadline {
            let moves = call(&h, "GET", "/api/moves", None, None).await.body;
            panic!(
                "moves to broker 3 did not finish on the page: {v}\nthe router's moves: {moves}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(seen_moving, "the page never showed a move in flight");
    assert!(
        seen_partial,
        "the page never showed a move part-way: {last}"
    );
    assert!(
        last["tokens3"].as_u64().unwrap_or(0) > 0,
        "broker 3's arc: {last}"
    );
    assert!(last["moves"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["progress"] == 100 || m["to"] != 3));

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    browser.stop().await;

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        acked.load(Ordering::Relaxed) > 0,
        "the load was acknowledged"
    );
    up.stop().await;
}
