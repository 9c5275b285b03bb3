//! What the binaries print for people and scripts: `--version` on every binary, `--log-format
//! json` lines that parse, no ANSI colour codes in logs written to a file, and `--json` output
//! of the admin commands that parses (with one spelling of broker states and move phases).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn shardq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardq"))
}

#[test]
fn every_binary_says_its_version() {
    let version = env!("CARGO_PKG_VERSION");
    let cases: Vec<(Command, &str)> = vec![
        (shardq(), "shardq"),
        (
            {
                let mut c = shardq();
                c.arg("router");
                c
            },
            "shardq-router",
        ),
        (
            {
                let mut c = shardq();
                c.arg("broker");
                c
            },
            "shardq-broker",
        ),
        (
            {
                let mut c = shardq();
                c.arg("up");
                c
            },
            "shardq-up",
        ),
        (
            Command::new(common::workspace_bin("runproduce")),
            "runproduce",
        ),
        (
            Command::new(common::workspace_bin("runconsume")),
            "runconsume",
        ),
    ];
    for (mut cmd, name) in cases {
        let out = cmd.arg("--version").output().expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --version: {out:?}");
        assert!(
            text.trim().ends_with(version) && text.starts_with(name),
            "{name} --version printed {text:?}"
        );
    }
}

/// Starts `shardq router` on a free port with `args`, its stderr in `log`; waits (bounded) for
/// it to listen, then stops it (SIGTERM) and returns the log.
fn router_log(dir: &std::path::Path, args: &[&str]) -> String {
    let log = dir.join("router.log");
    let mut child = shardq()
        .args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-auth",
            "--data",
        ])
        .arg(dir.join("router"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SHARDQ_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("router starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().expect("a line").expect("readable stdout");
    assert!(listening.contains("listening on"), "{listening}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the router did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn logs_to_a_file_are_plain_text_or_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let text = router_log(dir.path(), &[]);
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in a log file: {text:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let json = router_log(dir.path(), &["--log-format", "json"]);
    let mut n = 0;
    for line in json.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line:?}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        n += 1;
    }
    assert!(n > 0, "no log lines: {json:?}");
    assert!(!json.contains('\u{1b}'), "{json:?}");
    // The environment variable serves as well (how `shardq up` passes it on).
    let dir = tempfile::tempdir().unwrap();
    let out = shardq()
        .args(["status", "--broker", "127.0.0.1:1", "--log-format", "xml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("possible values: text, json"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_print_json_that_parses() {
    let cluster = common::Cluster::start(2, "interval=100").await;
    let at = cluster.endpoint();
    let run = |args: &[&str]| {
        let out = shardq()
            .args(args)
            .args(["--broker", &at.addr, "--token-file"])
            .arg(&at.token)
            .output()
            .expect("shardq runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let parse = |args: &[&str]| -> serde_json::Value {
        let text = tokio::task::block_in_place(|| run(args));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    };
    let created = parse(&["topic", "create", "J", "--partitions", "3", "--json"]);
    assert_eq!(created["name"], "J");
    assert_eq!(created["partitions"], 3);
    let topics = parse(&["topic", "list", "--json"]);
    assert_eq!(topics[0]["name"], "J");
    let described = parse(&["topic", "describe", "J", "--json"]);
    assert_eq!(described["shards"].as_array().unwrap().len(), 3);
    let brokers = parse(&["broker", "list", "--json"]);
    assert_eq!(brokers.as_array().unwrap().len(), 2);
    assert_eq!(brokers[0]["status"], "up");
    let status = parse(&["status", "--json"]);
    assert_eq!(status["brokers"][1]["status"], "up");
    assert_eq!(status["shards"].as_array().unwrap().len(), 3);
    let moves = parse(&["moves", "--json"]);
    assert!(moves["moves"].is_array() && moves["summary"]["done"].is_u64());
    let sums = parse(&["shard", "checksum", "J:P1", "--json"]);
    assert!(sums.is_array());
    // JSON lines: the last says balanced.
    let lines =
        tokio::task::block_in_place(|| run(&["wait-balanced", "--quiet-ms", "200", "--json"]));
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "balanced", "{lines}");
    // The text spells states as the JSON does.
    let text = tokio::task::block_in_place(|| run(&["broker", "list"]));
    assert!(text.contains(" up weight"), "{text}");
    let once = tokio::task::block_in_place(|| run(&["watch", "--once"]));
    assert!(once.starts_with("shardq watch "), "{once}");
    assert!(once.contains("routing epoch"), "{once}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_runproduce_prints_progress_lines() {
    let cluster = common::Cluster::start(1, "interval=100").await;
    cluster.create_topic("P", 2).await;
    let at = cluster.endpoint();
    let out = tokio::task::block_in_place(|| {
        Command::new(common::workspace_bin("runproduce"))
            .args([
                "--id", "1", "--topics", "P:*", "--count", "1500", "--rate", "500",
            ])
            .args(["--progress-secs", "1", "--broker", &at.addr, "--token-file"])
            .arg(&at.token)
            .output()
            .expect("runproduce runs")
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let progress: Vec<_> = err
        .lines()
        .filter(|l| {
            l.starts_with("runproduce 1: sent ") && l.contains("msgs/s") && l.contains("ETA")
        })
        .collect();
    assert!(!progress.is_empty(), "no progress line in {err}");
    // The summary stays the last line (scripts take it with `tail -n 1`).
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("acknowledged 1500 failed 0"),
        "{err}"
    );
    cluster.stop().await;
}
