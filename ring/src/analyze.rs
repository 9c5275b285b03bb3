//! The engine of `shardq ring analyze`: sweep broker counts, vnode counts, hash functions,
//! placement modes and replication factors over a synthetic shard set, and report balance (of
//! leaders and of replicas) and movement on adding a broker.
//!
//! Everything is deterministic: shard names are `T{topic}:P{partition}` with
//! [`PARTITIONS_PER_TOPIC`] partitions per topic, brokers are ids `1..=N` and the added broker is
//! `N + 1`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    balance, diff, diff_replicas, BrokerId, HashFn, Member, PlacementMode, ReplicaAssignment, Ring,
    RingConfig,
};

/// Partitions per synthetic topic.
pub const PARTITIONS_PER_TOPIC: usize = 8;

/// Upper bound on the number of values a list like `1..=N` may expand to, so a typo such as
/// `1..=4000000000` is an error instead of an allocation failure.
pub const MAX_LIST_LEN: usize = 10_000;

/// What to sweep. Every combination of `brokers x vnodes x hashes x modes` becomes one row.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalyzeParams {
    /// Broker counts N (ids 1..=N).
    pub brokers: Vec<u32>,
    /// Number of synthetic shards.
    pub shards: usize,
    /// Vnode counts.
    pub vnodes: Vec<u32>,
    /// Hash functions.
    pub hashes: Vec<HashFn>,
    /// Placement modes.
    pub modes: Vec<PlacementMode>,
    /// Per-broker weight pattern, cycled over brokers 1..=N+1 (broker `k` gets
    /// `weights[(k-1) % len]`); `None` or empty = all 1.
    pub weights: Option<Vec<u32>>,
    /// Replication factors R (replicas per shard, leader included); each becomes its own row.
    /// Empty = just R = 1.
    pub replication: Vec<usize>,
}

/// One analyzed configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnalyzeRow {
    /// Broker count N before the add.
    pub brokers: u32,
    /// Shard count.
    pub shards: usize,
    /// Vnodes per unit weight.
    pub vnodes: u32,
    /// Hash function name.
    pub hash: String,
    /// `plain` or `bounded:<eps>`.
    pub mode: String,
    /// Balance with N brokers, see [`crate::BalanceStats::max_over_mean`].
    pub max_over_mean: f64,
    /// Balance with N brokers, see [`crate::BalanceStats::stddev_pct`].
    pub stddev_pct: f64,
    /// Fewest shards led by a broker (N brokers).
    pub min: usize,
    /// Most shards led by a broker (N brokers).
    pub max: usize,
    /// Fraction of shards whose owner changes when broker N+1 joins.
    pub moved_on_add: f64,
    /// The minimum possible: the new broker's fair share, `w_new / (W + w_new)` (1/(N+1) when
    /// unweighted).
    pub ideal_move: f64,
    /// `moved_on_add / ideal_move` (1.0 = optimal).
    pub move_ratio: f64,
    /// Whether every moved shard moved to the new broker.
    pub moved_to_new_only: bool,
    /// Replication factor R of the replica columns (capped at the broker count when placing).
    pub replication: usize,
    /// Fewest replicas (leaders + followers) on a broker (N brokers).
    pub replicas_min: usize,
    /// Most replicas on a broker (N brokers).
    pub replicas_max: usize,
    /// Fraction of the replicas after broker N+1 joins that are new copies (a broker added to a
    /// shard's replica set).
    pub replicas_moved_on_add: f64,
    /// Whether every new copy is on the new broker.
    pub replicas_moved_to_new_only: bool,
}

/// Replicas per broker: every member with weight > 0 (even with none) and every broker listed.
fn replica_counts(a: &ReplicaAssignment, members: &[Member]) -> BTreeMap<BrokerId, usize> {
    let mut per: BTreeMap<BrokerId, usize> = members
        .iter()
        .filter(|m| m.weight > 0)
        .map(|m| (m.id, 0))
        .collect();
    for b in a.values().flatten() {
        *per.entry(*b).or_insert(0) += 1;
    }
    per
}

/// Synthetic shard names: `T{i / 8}:P{i % 8}` for `i in 0..n`.
pub fn shard_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "T{}:P{}",
                i / PARTITIONS_PER_TOPIC,
                i % PARTITIONS_PER_TOPIC
            )
        })
        .collect()
}

fn weight_of(weights: &Option<Vec<u32>>, id: u32) -> u32 {
    match weights {
        Some(w) if !w.is_empty() => w[(id as usize).wrapping_sub(1) % w.len()],
        _ => 1,
    }
}

/// Run the sweep. Rows come out grouped by (brokers, vnodes, hash), then by mode, with the
/// replication factors innermost, so plain and bounded results for the same layout are adjacent.
pub fn run(params: &AnalyzeParams) -> Vec<AnalyzeRow> {
    let shards = shard_names(params.shards);
    let mut rows = Vec::new();
    for &n in &params.brokers {
        let before: Vec<Member> = (1..=n)
            .map(|id| Member {
                id,
                weight: weight_of(&params.weights, id),
            })
            .collect();
        let new_id = n.saturating_add(1);
        let new_member = Member {
            id: new_id,
            weight: weight_of(&params.weights, new_id),
        };
        let mut after = before.clone();
        after.push(new_member);

        let w_before: f64 = before.iter().map(|m| f64::from(m.weight)).sum();
        let w_new = f64::from(new_member.weight);
        let ideal = if w_before + w_new > 0.0 {
            w_new / (w_before + w_new)
        } else {
            0.0
        };

        for &vnodes in &params.vnodes {
            for &hash in &params.hashes {
                for &mode in &params.modes {
                    let config = RingConfig { vnodes, hash, mode };
                    let ring_old = Ring::new(config.clone(), &before);
                    let ring_new = Ring::new(config, &after);
                    let old = ring_old.place(&shards);
                    let new = ring_new.place(&shards);
                    let stats = balance(&old, &before);
                    let moves = diff(&old, &new);
                    let moved = if shards.is_empty() {
                        0.0
                    } else {
                        moves.len() as f64 / shards.len() as f64
                    };
                    let move_ratio = if ideal > 0.0 {
                        moved / ideal
                    } else if moved == 0.0 {
                        1.0
                    } else {
                        f64::INFINITY
                    };
                    let factors: &[usize] = if params.replication.is_empty() {
                        &[1]
                    } else {
                        &params.replication
                    };
                    for &r in factors {
                        let rep_old = ring_old.place_replicas(&shards, r);
                        let rep_new = ring_new.place_replicas(&shards, r);
                        let counts = replica_counts(&rep_old, &before);
                        let rep_moves = diff_replicas(&rep_old, &rep_new);
                        let added: usize = rep_moves.iter().map(|m| m.added.len()).sum();
                        let total: usize = rep_new.values().map(Vec::len).sum();
                        rows.push(AnalyzeRow {
                            brokers: n,
                            shards: params.shards,
                            vnodes,
                            hash: hash.name().to_string(),
                            mode: mode.to_string(),
                            max_over_mean: stats.max_over_mean,
                            stddev_pct: stats.stddev_pct,
                            min: stats.min,
                            max: stats.max,
                            moved_on_add: moved,
                            ideal_move: ideal,
                            move_ratio,
                            moved_to_new_only: moves.iter().all(|m| m.to == Some(new_id)),
                            replication: r,
                            replicas_min: counts.values().copied().min().unwrap_or(0),
                            replicas_max: counts.values().copied().max().unwrap_or(0),
                            replicas_moved_on_add: if total == 0 {
                                0.0
                            } else {
                                added as f64 / total as f64
                            },
                            replicas_moved_to_new_only: rep_moves
                                .iter()
                                .all(|m| m.added.iter().all(|&b| b == new_id)),
                        });
                    }
                }
            }
        }
    }
    rows
}

/// Aligned text table. Rows sharing (brokers, shards, vnodes, hash) are printed together (in
/// order of first appearance) so the modes and replication factors can be compared line by line;
/// groups are separated by a blank line when there is more than one row per group.
pub fn render_table(rows: &[AnalyzeRow]) -> String {
    type Key<'a> = (u32, usize, u32, &'a str);
    let mut groups: Vec<(Key, Vec<&AnalyzeRow>)> = Vec::new();
    for r in rows {
        let key = (r.brokers, r.shards, r.vnodes, r.hash.as_str());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => groups.push((key, vec![r])),
        }
    }

    let header = [
        "brokers",
        "shards",
        "vnodes",
        "hash",
        "mode",
        "max/mean",
        "stddev%",
        "min",
        "max",
        "moved",
        "ideal",
        "moved/ideal",
        "to-new-only",
        "R",
        "rep-min",
        "rep-max",
        "rep-moved",
        "rep-to-new",
    ];
    let mut lines: Vec<Option<Vec<String>>> = Vec::new();
    let multi = groups.iter().any(|(_, v)| v.len() > 1);
    for (i, (_, group)) in groups.iter().enumerate() {
        if multi && i > 0 {
            lines.push(None);
        }
        for r in group {
            lines.push(Some(vec![
                r.brokers.to_string(),
                r.shards.to_string(),
                r.vnodes.to_string(),
                r.hash.clone(),
                r.mode.clone(),
                format!("{:.3}", r.max_over_mean),
                format!("{:.2}", r.stddev_pct),
                r.min.to_string(),
                r.max.to_string(),
                format!("{:.4}", r.moved_on_add),
                format!("{:.4}", r.ideal_move),
                format!("{:.2}", r.move_ratio),
                if r.moved_to_new_only { "yes" } else { "no" }.to_string(),
                r.replication.to_string(),
                r.replicas_min.to_string(),
                r.replicas_max.to_string(),
                format!("{:.4}", r.replicas_moved_on_add),
                if r.replicas_moved_to_new_only {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
            ]));
        }
    }

    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for cells in lines.iter().flatten() {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.len());
        }
    }
    // Text columns (hash, mode) left-aligned, numbers right-aligned.
    let left = |i: usize| i == 3 || i == 4 || i == 12 || i == 17;
    let fmt_line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if left(i) {
                    format!("{:<w$}", c, w = widths[i])
                } else {
                    format!("{:>w$}", c, w = widths[i])
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };

    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    out.push_str(&fmt_line(&header));
    out.push('\n');
    for line in &lines {
        if let Some(cells) = line {
            out.push_str(&fmt_line(cells));
        }
        out.push('\n');
    }
    out
}

/// Pretty JSON array of rows (non-finite numbers become `null`).
pub fn render_json(rows: &[AnalyzeRow]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn parse_u32(part: &str, whole: &str) -> Result<u32, String> {
    part.trim().parse::<u32>().map_err(|_| {
        format!(
            "'{}' is not a non-negative integer (in '{whole}')",
            part.trim()
        )
    })
}

/// Parse `"4"`, `"1,16,128"`, `"2..=8"` (inclusive), `"2..8"` (exclusive) and mixes such as
/// `"1,2..=4"`. Order is kept as written; empty parts, reversed/empty ranges and lists longer
/// than [`MAX_LIST_LEN`] are errors naming the offending part.
pub fn parse_u32_list(s: &str) -> Result<Vec<u32>, String> {
    if s.trim().is_empty() {
        return Err("empty list (expected e.g. 4, 1,16,128 or 2..=8)".to_string());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let p = part.trim();
        if p.is_empty() {
            return Err(format!("empty element in '{s}'"));
        }
        let (lo, hi) = if let Some((a, b)) = p.split_once("..=") {
            (parse_u32(a, s)?, parse_u32(b, s)?)
        } else if let Some((a, b)) = p.split_once("..") {
            let (a, b) = (parse_u32(a, s)?, parse_u32(b, s)?);
            if b <= a {
                return Err(format!(
                    "range '{p}' is empty (exclusive end must exceed start)"
                ));
            }
            (a, b - 1)
        } else {
            let v = parse_u32(p, s)?;
            (v, v)
        };
        if hi < lo {
            return Err(format!("range '{p}' is reversed (start > end)"));
        }
        let count = (u64::from(hi) - u64::from(lo) + 1) as usize;
        if out.len().saturating_add(count) > MAX_LIST_LEN {
            return Err(format!(
                "'{p}' makes the list longer than {MAX_LIST_LEN} values"
            ));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// Parse replication factors like [`parse_u32_list`] (`"3"`, `"1,2,3"`, `"1..=3"`); 0 is an
/// error (a shard always has its leader).
pub fn parse_replication_list(s: &str) -> Result<Vec<usize>, String> {
    let list = parse_u32_list(s)?;
    if list.contains(&0) {
        return Err(format!(
            "a replication factor must be at least 1 (in '{s}'; 1 = the leader only)"
        ));
    }
    Ok(list.into_iter().map(|r| r as usize).collect())
}

/// Parse `"xxh3,fnv1a"` or `"all"`.
pub fn parse_hash_list(s: &str) -> Result<Vec<HashFn>, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(HashFn::all().to_vec());
    }
    if s.trim().is_empty() {
        return Err("empty hash list (valid: xxh3, fnv1a, sip13, murmur3, all)".to_string());
    }
    s.split(',')
        .map(|p| p.parse::<HashFn>().map_err(|e| e.to_string()))
        .collect()
}

/// Parse `"plain,bounded"`, `"bounded:0.1"`, `"both"` (= plain + bounded with the default eps).
pub fn parse_mode_list(s: &str) -> Result<Vec<PlacementMode>, String> {
    if s.trim().eq_ignore_ascii_case("both") {
        return Ok(vec![PlacementMode::Plain, PlacementMode::default()]);
    }
    if s.trim().is_empty() {
        return Err("empty mode list (valid: plain, bounded, bounded:<eps>, both)".to_string());
    }
    s.split(',')
        .map(|p| p.parse::<PlacementMode>().map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u32_lists() {
        assert_eq!(parse_u32_list("4").unwrap(), vec![4]);
        assert_eq!(parse_u32_list("2..=5").unwrap(), vec![2, 3, 4, 5]);
        assert_eq!(parse_u32_list("2..5").unwrap(), vec![2, 3, 4]);
        assert_eq!(
            parse_u32_list("1,16,128,512").unwrap(),
            vec![1, 16, 128, 512]
        );
        assert_eq!(parse_u32_list(" 1, 2..=4 ,9").unwrap(), vec![1, 2, 3, 4, 9]);
        for (bad, needle) in [
            ("", "empty"),
            ("1,,2", "empty element"),
            ("x", "'x'"),
            ("1,2..y", "'y'"),
            ("5..=2", "5..=2"),
            ("3..3", "3..3"),
            ("-1", "'-1'"),
            ("0..=4000000000", "longer"),
        ] {
            let e = parse_u32_list(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn replication_lists() {
        assert_eq!(parse_replication_list("1..=3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_replication_list("2").unwrap(), vec![2]);
        assert!(parse_replication_list("0,1")
            .unwrap_err()
            .contains("at least 1"));
        assert!(parse_replication_list("x").unwrap_err().contains("'x'"));
    }

    #[test]
    fn hash_and_mode_lists() {
        assert_eq!(parse_hash_list("all").unwrap(), HashFn::all());
        assert_eq!(
            parse_hash_list("xxh3,fnv1a").unwrap(),
            vec![HashFn::Xxh3, HashFn::Fnv1a]
        );
        assert!(parse_hash_list("xxh3,md5").unwrap_err().contains("md5"));
        assert_eq!(
            parse_mode_list("both").unwrap(),
            vec![PlacementMode::Plain, PlacementMode::default()]
        );
        assert_eq!(
            parse_mode_list("plain,bounded:0.1").unwrap(),
            vec![PlacementMode::Plain, PlacementMode::Bounded { eps: 0.1 }]
        );
        assert!(parse_mode_list("plain,weird")
            .unwrap_err()
            .contains("weird"));
        assert!(parse_mode_list("").is_err());
    }

    #[test]
    fn run_and_render() {
        let params = AnalyzeParams {
            brokers: vec![0, 3],
            shards: 50,
            vnodes: vec![0, 8],
            hashes: vec![HashFn::Xxh3],
            modes: vec![PlacementMode::Plain, PlacementMode::default()],
            weights: Some(vec![1, 2]),
            replication: vec![1, 3],
        };
        let rows = run(&params);
        assert_eq!(rows.len(), 16);
        // Plain mode never moves a shard or replica anywhere but the new broker, and neither does
        // bounded mode when the newcomer's id is the largest (no corner case at this size).
        assert!(rows
            .iter()
            .all(|r| r.moved_to_new_only && r.replicas_moved_to_new_only));
        // R = 1: the replicas are the leaders.
        for r in rows.iter().filter(|r| r.replication == 1) {
            assert_eq!((r.replicas_min, r.replicas_max), (r.min, r.max));
        }
        // 3 brokers with weights 1,2,1, R = 3: everyone holds everything.
        let full = rows
            .iter()
            .find(|r| r.brokers == 3 && r.vnodes == 8 && r.replication == 3)
            .unwrap();
        assert_eq!((full.replicas_min, full.replicas_max), (50, 50));
        // Bounded leaders: at least floor(50 * 1/4) = 12 on the weight-1 brokers.
        for r in rows
            .iter()
            .filter(|r| r.brokers == 3 && r.vnodes == 8 && r.mode != "plain")
        {
            assert!(r.min >= 12, "{r:?}");
        }
        let table = render_table(&rows);
        assert_eq!(table.lines().count(), 1 + 16 + 3);
        assert!(table.starts_with("brokers"));
        assert!(table.lines().next().unwrap().ends_with("rep-to-new"));
        let json: serde_json::Value = serde_json::from_str(&render_json(&rows)).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 16);
        assert_eq!(json[1]["replication"], 3);
        assert!(json[1]["replicas_moved_to_new_only"].is_boolean());
        assert!(render_table(&[]).starts_with("brokers"));
    }
}
