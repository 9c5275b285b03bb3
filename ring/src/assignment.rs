//! Assignments (shard -> broker) and what can be said about them: which shards move between two
//! assignments, what fraction that is, and how evenly an assignment spreads load.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{BrokerId, Member};

/// Shard key (e.g. `"T1:P2"`) -> owning broker. A `BTreeMap` so iteration order is deterministic.
pub type Assignment = BTreeMap<String, BrokerId>;

/// One shard changing owner. `from: None` = newly placed; `to: None` = no longer placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// Shard key.
    pub shard: String,
    /// Previous owner, if the shard was in the old assignment.
    pub from: Option<BrokerId>,
    /// New owner, if the shard is in the new assignment.
    pub to: Option<BrokerId>,
}

/// Exactly the shards whose owner differs between `old` and `new` (including shards present on
/// only one side), sorted by shard key.
pub fn diff(old: &Assignment, new: &Assignment) -> Vec<Move> {
    // Both maps iterate in key order, so a merge walk is linear and yields sorted output.
    let mut out = Vec::new();
    let mut a = old.iter().peekable();
    let mut b = new.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, va)), Some((kb, vb))) if ka == kb => {
                if va != vb {
                    out.push(Move {
                        shard: (*ka).clone(),
                        from: Some(**va),
                        to: Some(**vb),
                    });
                }
                a.next();
                b.next();
            }
            (Some((ka, va)), Some((kb, _))) if ka < kb => {
                out.push(Move {
                    shard: (*ka).clone(),
                    from: Some(**va),
                    to: None,
                });
                a.next();
            }
            (Some((ka, va)), None) => {
                out.push(Move {
                    shard: (*ka).clone(),
                    from: Some(**va),
                    to: None,
                });
                a.next();
            }
            (_, Some((kb, vb))) => {
                out.push(Move {
                    shard: (*kb).clone(),
                    from: None,
                    to: Some(**vb),
                });
                b.next();
            }
        }
    }
    out
}

/// Shard key -> its replicas, leader first (see [`crate::Ring::place_replicas`]).
pub type ReplicaAssignment = BTreeMap<String, Vec<BrokerId>>;

/// One shard whose replica set or leader changes between two [`ReplicaAssignment`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    /// Shard key.
    pub shard: String,
    /// The old replicas, leader first (empty if the shard was not placed before).
    pub from: Vec<BrokerId>,
    /// The new replicas, leader first (empty if the shard is no longer placed).
    pub to: Vec<BrokerId>,
    /// Brokers in `to` but not in `from` (copies to create), in `to`'s order.
    pub added: Vec<BrokerId>,
    /// Brokers in `from` but not in `to` (copies to drop), in `from`'s order.
    pub removed: Vec<BrokerId>,
    /// Whether the leader (element 0) differs, including a shard appearing or disappearing.
    pub leader_changed: bool,
}

/// Exactly the shards whose replica *set* or leader differs between `old` and `new` (including
/// shards present on one side only), sorted by shard key. A change of follower order alone is not
/// a move.
pub fn diff_replicas(old: &ReplicaAssignment, new: &ReplicaAssignment) -> Vec<ReplicaMove> {
    let empty: Vec<BrokerId> = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let from = old.get(key).unwrap_or(&empty);
        let to = new.get(key).unwrap_or(&empty);
        let added: Vec<BrokerId> = to.iter().copied().filter(|b| !from.contains(b)).collect();
        let removed: Vec<BrokerId> = from.iter().copied().filter(|b| !to.contains(b)).collect();
        let leader_changed = from.first() != to.first();
        if added.is_empty() && removed.is_empty() && !leader_changed {
            continue;
        }
        out.push(ReplicaMove {
            shard: key.clone(),
            from: from.clone(),
            to: to.clone(),
            added,
            removed,
            leader_changed,
        });
    }
    out
}

/// `diff(old, new).len()` divided by the number of distinct shards on either side; 0.0 when both
/// are empty.
pub fn moved_fraction(old: &Assignment, new: &Assignment) -> f64 {
    let moved = diff(old, new).len();
    let only_new = new.keys().filter(|k| !old.contains_key(*k)).count();
    let union = old.len() + only_new;
    if union == 0 {
        0.0
    } else {
        moved as f64 / union as f64
    }
}

/// How evenly an assignment spreads shards.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BalanceStats {
    /// Shards per broker: every member with weight > 0 (even with 0 shards) and every owner that
    /// appears in the assignment.
    pub per_broker: BTreeMap<BrokerId, usize>,
    /// Shards / number of brokers in `per_broker`.
    pub mean: f64,
    /// Largest per-broker count.
    pub max: usize,
    /// Smallest per-broker count.
    pub min: usize,
    /// max over brokers of `count / fair share`, where fair share = total * weight / total
    /// weight. With equal weights this is exactly `max / mean`; with unequal weights it measures
    /// overload relative to what the broker's weight entitles it to.
    pub max_over_mean: f64,
    /// Root-mean-square deviation of `count / fair share` from 1, in percent. With equal weights
    /// this is the population stddev of the counts as a percentage of the mean.
    pub stddev_pct: f64,
}

/// Balance of `assignment` over `members`. Owners not listed in `members` are counted with
/// weight 1 so that they are not silently dropped.
pub fn balance(assignment: &Assignment, members: &[Member]) -> BalanceStats {
    let mut weight: BTreeMap<BrokerId, u64> = BTreeMap::new();
    for m in members.iter().filter(|m| m.weight > 0) {
        *weight.entry(m.id).or_insert(0) += u64::from(m.weight);
    }
    let mut per_broker: BTreeMap<BrokerId, usize> = weight.keys().map(|&id| (id, 0)).collect();
    for &b in assignment.values() {
        *per_broker.entry(b).or_insert(0) += 1;
        weight.entry(b).or_insert(1);
    }

    let total = assignment.len();
    let n = per_broker.len();
    if n == 0 {
        return BalanceStats {
            per_broker,
            mean: 0.0,
            max: 0,
            min: 0,
            max_over_mean: 0.0,
            stddev_pct: 0.0,
        };
    }
    let mean = total as f64 / n as f64;
    let max = per_broker.values().copied().max().unwrap_or(0);
    let min = per_broker.values().copied().min().unwrap_or(0);
    let total_w: f64 = weight.values().map(|&w| w as f64).sum();

    let (mut worst, mut sq) = (0.0f64, 0.0f64);
    if total > 0 {
        for (id, &count) in &per_broker {
            let w = weight.get(id).copied().unwrap_or(1) as f64;
            let fair = total as f64 * w / total_w;
            let ratio = count as f64 / fair;
            worst = worst.max(ratio);
            sq += (ratio - 1.0) * (ratio - 1.0);
        }
    }
    BalanceStats {
        per_broker,
        mean,
        max,
        min,
        max_over_mean: worst,
        stddev_pct: (sq / n as f64).sqrt() * 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(pairs: &[(&str, u32)]) -> Assignment {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn diff_covers_all_cases() {
        let old = a(&[("a", 1), ("b", 1), ("c", 2)]);
        let new = a(&[("b", 2), ("c", 2), ("d", 3)]);
        let d = diff(&old, &new);
        assert_eq!(
            d,
            vec![
                Move {
                    shard: "a".into(),
                    from: Some(1),
                    to: None
                },
                Move {
                    shard: "b".into(),
                    from: Some(1),
                    to: Some(2)
                },
                Move {
                    shard: "d".into(),
                    from: None,
                    to: Some(3)
                },
            ]
        );
        assert_eq!(moved_fraction(&old, &new), 3.0 / 4.0);
        assert_eq!(moved_fraction(&Assignment::new(), &Assignment::new()), 0.0);
    }

    #[test]
    fn diff_replicas_lists_set_and_leader_changes() {
        let r = |pairs: &[(&str, &[u32])]| -> ReplicaAssignment {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect()
        };
        let old = r(&[
            ("a", &[1, 2]),
            ("b", &[1, 2]),
            ("c", &[1, 2, 3]),
            ("d", &[2, 3]),
            ("e", &[3]),
        ]);
        let new = r(&[
            ("a", &[1, 2]),    // unchanged
            ("b", &[2, 1]),    // leader change only
            ("c", &[1, 3, 2]), // follower order only: not a move
            ("d", &[2, 4]),    // 3 -> 4
            ("f", &[4]),       // new
        ]);
        let d = diff_replicas(&old, &new);
        let keys: Vec<&str> = d.iter().map(|m| m.shard.as_str()).collect();
        assert_eq!(keys, ["b", "d", "e", "f"]);
        assert!(d[0].leader_changed && d[0].added.is_empty() && d[0].removed.is_empty());
        assert_eq!(
            d[1],
            ReplicaMove {
                shard: "d".into(),
                from: vec![2, 3],
                to: vec![2, 4],
                added: vec![4],
                removed: vec![3],
                leader_changed: false,
            }
        );
        assert_eq!((d[2].removed.clone(), d[2].to.clone()), (vec![3], vec![]));
        assert!(d[2].leader_changed);
        assert_eq!(d[3].added, vec![4]);
        assert!(d[3].leader_changed);
        assert!(diff_replicas(&old, &old).is_empty());
    }

    #[test]
    fn balance_counts_idle_brokers() {
        let members = [
            Member::new(1),
            Member::new(2),
            Member::new(3),
            Member { id: 4, weight: 0 },
        ];
        let s = balance(&a(&[("a", 1), ("b", 1), ("c", 2), ("d", 1)]), &members);
        assert_eq!(s.per_broker, [(1, 3), (2, 1), (3, 0)].into_iter().collect());
        assert_eq!((s.min, s.max), (0, 3));
        assert!((s.mean - 4.0 / 3.0).abs() < 1e-12);
        assert!((s.max_over_mean - 3.0 / (4.0 / 3.0)).abs() < 1e-12);
        // counts 3,1,0 around mean 4/3: population stddev / mean.
        let m = 4.0 / 3.0;
        let sd = (((3.0 - m) * (3.0 - m) + (1.0 - m) * (1.0 - m) + m * m) / 3.0f64).sqrt();
        assert!((s.stddev_pct - sd / m * 100.0).abs() < 1e-9);
        let empty = balance(&Assignment::new(), &[]);
        assert_eq!(empty.max_over_mean, 0.0);
    }

    #[test]
    fn weighted_balance_is_normalized() {
        let members = [Member { id: 1, weight: 1 }, Member { id: 2, weight: 3 }];
        let s = balance(&a(&[("a", 1), ("b", 2), ("c", 2), ("d", 2)]), &members);
        assert!((s.max_over_mean - 1.0).abs() < 1e-12);
        assert!(s.stddev_pct.abs() < 1e-9);
    }
}
