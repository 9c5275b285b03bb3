//! `shardq produce` and `shardq consume`, as a user types them: stdin lines become records
//! (keys, headers), and consume prints them as text or JSON from earliest, an offset, a
//! timestamp or latest, committing only for a group. And runproduce's key-hash partitioner
//! sends the message as the key.

mod common;

use std::time::Duration;

use serde_json::Value;

/// Runs `shardq ARGS` against the cluster with `stdin`; its stdout. Fails the test if it fails.
async fn shardq(up: &common::UpCluster, args: &[&str], stdin: &str) -> String {
    let o = common::cli(&up.endpoint(), args, stdin).await;
    assert!(o.ok, "shardq {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
    o.stdout
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lines_go_in_and_come_out_as_text_and_json() {
    let up = common::UpCluster::start(2, &[]).await;
    up.ready_with_topic(2, "T", 3, None).await;

    // The example, word for word.
    shardq(&up, &["produce", "T"], "a\nb\n").await;
    let out = shardq(
        &up,
        &["consume", "T", "--from", "earliest", "--count", "2"],
        "",
    )
    .await;
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["a", "b"], "{out}");
    let json = json_lines(
        &shardq(
            &up,
            &[
                "consume", "T", "--from", "earliest", "--count", "2", "--format", "json",
            ],
            "",
        )
        .await,
    );
    let mut values: Vec<&str> = json.iter().map(|v| v["value"].as_str().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, ["a", "b"]);
    for v in &json {
        assert_eq!(v["topic"], "T");
        assert!(
            v["offset"].is_u64() && v["timestamp_ms"].as_u64().unwrap() > 0,
            "{v}"
        );
        assert_eq!(v["shard"], format!("T:P{}", v["partition"]));
    }

    // Keys and headers end to end; spaces are part of the message; keyed records go where
    // their key hashes; --verbose prints each record's shard and offset.
    let sent = shardq(
        &up,
        &[
            "produce",
            "T",
            "--key-separator",
            "::",
            "--header",
            "trace=42",
            "--header",
            "from=test=1",
            "--verbose",
        ],
        "user-7::hello world\nno key here\n",
    )
    .await;
    assert_eq!(sent.lines().count(), 2, "{sent}");
    let json = json_lines(
        &shardq(
            &up,
            &[
                "consume", "T", "--from", "earliest", "--count", "4", "--format", "json",
            ],
            "",
        )
        .await,
    );
    let keyed = json
        .iter()
        .find(|v| v["value"] == "hello world")
        .expect("the keyed record");
    assert_eq!(keyed["key"], "user-7");
    assert_eq!(
        keyed["partition"],
        shardq_producer::key_partition(b"user-7", 3)
    );
    assert_eq!(
        keyed["headers"],
        serde_json::json!([["trace", "42"], ["from", "test=1"]])
    );
    assert!(sent
        .lines()
        .any(|l| l == format!("T:P{} {}", keyed["partition"], keyed["offset"])));
    let unkeyed = json.iter().find(|v| v["value"] == "no key here").unwrap();
    assert_eq!(unkeyed["key"], Value::Null);
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_offset_timestamp_latest_and_group_commits() {
    let up = common::UpCluster::start(1, &[]).await;
    up.ready_with_topic(1, "S", 1, None).await;
    // Separate runs: each record gets its own (later) timestamp.
    for v in ["x", "y", "z"] {
        shardq(&up, &["produce", "S:1"], &format!("{v}\n")).await;
    }
    let all = json_lines(
        &shardq(
            &up,
            &["consume", "S:P1", "--count", "3", "--format", "json"],
            "",
        )
        .await,
    );
    let values: Vec<&str> = all.iter().map(|v| v["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["x", "y", "z"]);
    let ts_y = all[1]["timestamp_ms"].as_u64().unwrap();
    assert!(all[0]["timestamp_ms"].as_u64().unwrap() < ts_y);

    let one = |from: String| {
        let up = &up;
        async move { shardq(up, &["consume", "S", "--from", &from, "-n", "1"], "").await }
    };
    assert_eq!(one("2".into()).await, "z\n");
    assert_eq!(one(format!("@{ts_y}")).await, "y\n");
    // Past the end: waits at the end for the next record.
    let late = tokio::spawn({
        let at = up.endpoint();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
                .args([
                    "consume", "S", "--from", "latest", "-n", "1", "-b", &at.addr,
                ])
                .arg("--token-file")
                .arg(&at.token)
                .kill_on_drop(true)
                .output()
                .await
                .expect("consume --from latest")
        }
    });
    // Nothing is printed until a record comes after it started; keep producing until one
    // reaches it (the consumer may start after the first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !late.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "--from latest printed nothing"
        );
        shardq(&up, &["produce", "S"], "new\n").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = late.await.unwrap();
    assert_eq!(String::from_utf8_lossy(&late.stdout), "new\n");

    // A group commits what it printed, and only that: --count 1 twice reads x then y.
    let group = |n: &'static str| {
        let up = &up;
        async move { shardq(up, &["consume", "S", "--group", "g", "-n", n], "").await }
    };
    assert_eq!(group("1").await, "x\n");
    assert_eq!(group("1").await, "y\n");
    assert_eq!(group("1").await, "z\n");
    // Without --group nothing was committed for anyone: earliest is still x.
    assert_eq!(one("earliest".into()).await, "x\n");
    up.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runproduce_key_hash_sends_the_message_as_the_key() {
    let up = common::UpCluster::start(1, &[]).await;
    up.ready_with_topic(1, "K", 4, None).await;
    let dir = tempfile::tempdir().unwrap();
    let messages = ["m1", "m2", "m3", "m4", "m5", "m1"];
    let text: String = messages.iter().map(|m| format!("1 {m} * K\n")).collect();
    std::fs::write(dir.path().join("producer_1.txt"), text).unwrap();
    let summary = common::spawn_producer(
        &up.endpoint(),
        dir.path(),
        1,
        &["K:*"],
        &["--partitioner", "key-hash"],
    )
    .await
    .unwrap()
    .expect("runproduce runs");
    assert_eq!(summary.acknowledged, 6, "{summary:?}");
    let json = json_lines(
        &shardq(
            &up,
            &["consume", "K", "--count", "6", "--format", "json"],
            "",
        )
        .await,
    );
    for v in &json {
        let m = v["value"].as_str().unwrap();
        assert_eq!(v["key"], m, "{v}");
        assert_eq!(
            v["partition"],
            shardq_producer::key_partition(m.as_bytes(), 4),
            "{v}"
        );
    }
    up.stop().await;
}
