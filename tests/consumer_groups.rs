//! Consumer groups whose members share the work, with real processes: 3 `runconsume --group`
//! members on a 12-partition topic under continuous load; a 4th joins, one leaves gracefully
//! (Ctrl-C), one is SIGKILLed and restarted. The union of the members' files holds every
//! acknowledged record exactly once, except records after the killed member's last commit,
//! which may appear twice (named in the report); whenever the group has settled with 3 or more
//! members, none holds more than twice the shards of another.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shardq_protocol::{GroupDescription, Request, Response};

const GROUP: &str = "shared";

fn member(at: &common::Endpoint, dir: &Path, id: u32) -> Child {
    Command::new(common::workspace_bin("runconsume"))
        .args(["--id", &id.to_string(), "--group", GROUP, "--topics", "G:*"])
        .args(["--broker", &at.addr, "--token-file"])
        .arg(&at.token)
        .arg("--log_loc")
        .arg(dir)
        .args(["--idle-timeout", "6", "--session-timeout-ms", "3000"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("member-{id}.log"))).unwrap())
        .spawn()
        .expect("runconsume starts")
}

async fn describe(client: &shardq_protocol::cluster::ClusterClient) -> Option<GroupDescription> {
    match client
        .admin(Request::DescribeGroup {
            group: GROUP.into(),
        })
        .await
    {
        Ok(Response::Group(g)) => Some(g),
        _ => None,
    }
}

/// Waits until the group has `n` members, each owning exactly its target, together all 12
/// shards; then checks the balance and returns the shards per member.
async fn settled(client: &shardq_protocol::cluster::ClusterClient, n: usize) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let last = loop {
        let g = describe(client).await;
        let ok = g.as_ref().is_some_and(|g| {
            g.members.len() == n
                && g.members.iter().all(|m| m.owned == m.target)
                && g.members.iter().map(|m| m.owned.len()).sum::<usize>() == 12
        });
        if ok {
            break g;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group did not settle with {n} members within 60 s: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let counts: Vec<usize> = last
        .expect("described")
        .members
        .iter()
        .map(|m| m.owned.len())
        .collect();
    let (lo, hi) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    if n >= 3 {
        assert!(hi <= 2 * lo, "unbalanced: {counts:?}");
    }
    assert!(hi - lo <= 1, "sticky keeps counts within one: {counts:?}");
    counts
}

/// `shardq ARGS` against the cluster: (success, stdout, stderr).
async fn shardq(at: &common::Endpoint, args: &[&str]) -> (bool, String, String) {
    let o = common::cli(at, args, "").await;
    (o.ok, o.stdout, o.stderr)
}

/// Waits (at most `limit`) for a member to exit; kills it and fails if it does not.
async fn exits(mut child: Child, id: u32, limit: Duration) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("member {id} did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `T:Pn MESSAGE` lines of a member's file.
fn lines(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (shard, msg) = l.split_once(char::is_whitespace)?;
            Some((shard.to_string(), msg.trim().to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_share_the_shards_and_every_record_is_read_once() {
    let up = common::UpCluster::start(3, &[]).await;
    let client = up.ready_with_topic(3, "G", 12, Some(2)).await;
    let at = up.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let producer = common::spawn_producer(
        &at,
        dir.path(),
        1,
        &["G:*"],
        &["--count", "30000", "--rate", "1500"],
    );
    let mut members: BTreeMap<u32, Child> =
        (1..=3).map(|i| (i, member(&at, dir.path(), i))).collect();
    assert_eq!(settled(&client, 3).await, vec![4, 4, 4]);
    let (ok, out, err) = shardq(&at, &["group", "describe", GROUP]).await;
    assert!(ok, "{err}");
    assert!(out.contains("3 member(s), strategy sticky"), "{out}");
    let (ok, _, err) = shardq(&at, &["group", "reset-offsets", GROUP, "--to", "earliest"]).await;
    assert!(
        !ok && err.contains("live member(s)"),
        "refused while members run: {err}"
    );

    // A 4th joins: 3 each, and only its 3 shards moved.
    members.insert(4, member(&at, dir.path(), 4));
    assert_eq!(settled(&client, 4).await, vec![3, 3, 3, 3]);

    // Member 2 leaves gracefully (Ctrl-C: it commits, gives its shards back and leaves).
    let two = members.remove(&2).unwrap();
    common::signal(two.id() as i32, libc::SIGINT);
    let status = exits(two, 2, Duration::from_secs(30)).await;
    assert!(status.success(), "member 2 exits cleanly: {status}");
    assert_eq!(settled(&client, 3).await, vec![4, 4, 4]);

    // Member 3 is killed: after its session (3 s) its shards go to the others; restarted, it
    // joins again as a new member and gets its share back.
    let mut three = members.remove(&3).unwrap();
    three.kill().unwrap();
    three.wait().unwrap();
    let killed_lines = lines(&dir.path().join("consumer_3.txt")).len();
    assert_eq!(settled(&client, 2).await, vec![6, 6]);
    members.insert(3, member(&at, dir.path(), 3));
    assert_eq!(settled(&client, 3).await, vec![4, 4, 4]);

    let summary = producer.await.unwrap().expect("runproduce runs");
    assert_eq!(summary.failed, 0, "{summary:?}");
    // They stop once nothing new came for their idle timeout (6 s).
    for (id, m) in members {
        let status = exits(m, id, Duration::from_secs(60)).await;
        assert!(status.success(), "member {id}: {status}");
    }

    // Every acknowledged record, exactly once across the members' files; a second copy only
    // of records member 3 wrote before it was killed (after its last commit).
    let acked: Vec<(String, String)> = std::fs::read_to_string(dir.path().join("producer_1.acked"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(3)?.to_string()))
        })
        .collect();
    assert_eq!(acked.len(), 30_000);
    let mut seen: BTreeMap<(String, String), Vec<(u32, usize)>> = BTreeMap::new();
    for id in 1..=4u32 {
        for (i, rec) in lines(&dir.path().join(format!("consumer_{id}.txt")))
            .into_iter()
            .enumerate()
        {
            seen.entry(rec).or_default().push((id, i));
        }
    }
    let mut missing = Vec::new();
    let mut allowed_twice = Vec::new();
    let mut wrong = Vec::new();
    for rec in &acked {
        match seen.get(rec).map(Vec::as_slice) {
            None => missing.push(rec),
            Some([_]) => {}
            Some([a, b]) if [a, b].iter().any(|(id, i)| *id == 3 && *i < killed_lines) => {
                allowed_twice.push(rec)
            }
            Some(other) => wrong.push((rec, other.to_vec())),
        }
    }
    eprintln!(
        "group verify: {} acknowledged, {} missing, {} read twice after member 3's last commit \
         (allowed){}, {} duplicated otherwise",
        acked.len(),
        missing.len(),
        allowed_twice.len(),
        if allowed_twice.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                allowed_twice
                    .iter()
                    .take(20)
                    .map(|(s, m)| format!("{s} {m}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        wrong.len()
    );
    assert!(
        missing.is_empty(),
        "missing: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert!(
        wrong.is_empty(),
        "duplicated: {:?}",
        &wrong[..wrong.len().min(20)]
    );
    assert_eq!(seen.len(), 30_000, "nothing but the acknowledged records");

    // The group's offsets, listed, described and reset.
    let (ok, out, _) = shardq(&at, &["group", "list"]).await;
    assert!(ok && out.lines().any(|l| l == GROUP), "{out}");
    let (ok, out, err) = shardq(&at, &["group", "describe", GROUP, "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    let offsets = v["offsets"].as_array().expect("offsets");
    assert_eq!(offsets.len(), 12, "{v}");
    assert!(offsets.iter().all(|o| o["lag"] == 0), "all read: {v}");
    let (ok, out, err) = shardq(
        &at,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--to",
            "earliest",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(v["reset"].as_array().map(Vec::len), Some(12), "{v}");
    assert!(
        v["reset"].as_array().unwrap().iter().all(|r| r["to"] == 0),
        "{v}"
    );
    up.stop().await;
}
