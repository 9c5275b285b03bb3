//! `shardq ring analyze` through the binary (help text, table, JSON, bad input), and the
//! placement the router gets with its default ring options for the shard keys it really uses.

use std::collections::BTreeMap;
use std::process::Command;

use clap::Parser;
use shardq_protocol::ShardId;
use shardq_ring::{BrokerId, Member, Ring};

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shardq"))
        .args(["ring", "analyze"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn help_explains_the_replication_factor_and_the_columns() {
    let help = stdout(&analyze(&["--help"]));
    for needle in [
        "--replication-factor",
        "[default: 1..=3]",
        "min and max: leaders per broker",
        "rep-min and rep-max",
        "rep-moved",
        "rep-to-new",
        "to-new-only",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}

#[test]
fn table_and_json_have_a_row_per_replication_factor() {
    let common = [
        "--brokers",
        "3",
        "--shards",
        "6",
        "--vnodes",
        "16",
        "--mode",
        "bounded",
    ];
    let table = stdout(&analyze(
        &[&common[..], &["--replication-factor", "1,2,3"]].concat(),
    ));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("brokers") && lines[0].ends_with("rep-to-new"));
    for col in [
        "min",
        "max",
        "to-new-only",
        "R",
        "rep-min",
        "rep-max",
        "rep-moved",
    ] {
        assert!(lines[0].split_whitespace().any(|c| c == col), "{col}");
    }
    assert_eq!(lines.len(), 1 + 3, "{table}");

    let json = stdout(&analyze(
        &[&common[..], &["--replication-factor", "1..=3", "--json"]].concat(),
    ));
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        let r = i as u64 + 1;
        assert_eq!(row["replication"], r);
        // 6 shards on 3 equal brokers: 2 leaders and 2R replicas each.
        assert_eq!(
            (row["min"].as_u64(), row["max"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(row["replicas_min"].as_u64(), Some(2 * r));
        assert_eq!(row["replicas_max"].as_u64(), Some(2 * r));
        assert!(row["replicas_moved_on_add"].is_number());
        assert_eq!(row["moved_to_new_only"], true);
        assert_eq!(row["replicas_moved_to_new_only"], true);
    }

    // The default is 1..=3.
    let json = stdout(&analyze(&[&common[..], &["--json"]].concat()));
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
}

#[test]
fn bad_replication_factor_is_refused() {
    for bad in ["0", "1,0", "x", ""] {
        let out = analyze(&[
            "--brokers",
            "2",
            "--shards",
            "4",
            "--replication-factor",
            bad,
        ]);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--replication-factor"), "{err}");
    }
}

#[derive(Parser)]
struct RouterCli {
    #[command(flatten)]
    args: shardq_router::cli::RouterArgs,
}

/// Issue 9 with what the router really uses: its default ring options and `ShardId::key`.
/// 6 partitions on 3 brokers are led 2/2/2 and 4 partitions 2/1/1, whatever the topic.
#[test]
fn router_defaults_spread_few_partitions_evenly() {
    let config = RouterCli::parse_from(["router", "--insecure-no-auth"])
        .args
        .config()
        .unwrap()
        .ring;
    let members: Vec<Member> = (1..=3).map(Member::new).collect();
    let ring = Ring::new(config, &members);
    for topic in ["orders", "T1", "bench", "payments", "events", "clicks-2024"] {
        for (partitions, want) in [(6u32, [2, 2, 2]), (4, [1, 1, 2])] {
            let keys: Vec<String> = (1..=partitions)
                .map(|p| ShardId::new(topic, p).key())
                .collect();
            let placed = ring.place(&keys);
            let mut per: BTreeMap<BrokerId, usize> = BTreeMap::new();
            for b in placed.values() {
                *per.entry(*b).or_insert(0) += 1;
            }
            let mut counts: Vec<usize> =
                (1..=3).map(|b| per.get(&b).copied().unwrap_or(0)).collect();
            counts.sort_unstable();
            assert_eq!(counts, want, "{topic} x {partitions}: {per:?}");
            // Two replicas each, the leader first: 6 partitions make 4 replicas per broker.
            let reps = ring.place_replicas(&keys, 2);
            let mut held: BTreeMap<BrokerId, usize> = BTreeMap::new();
            for (k, v) in &reps {
                assert_eq!(v[0], placed[k]);
                for b in v {
                    *held.entry(*b).or_insert(0) += 1;
                }
            }
            if partitions == 6 {
                assert!(held.values().all(|&c| c == 4), "{topic}: {held:?}");
            }
        }
    }
}
