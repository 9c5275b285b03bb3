//! Who reads which shard in a consumer group: the assignors. Each takes the group's members
//! (with the shards each may read: its subscriptions resolved against the topics) and returns
//! a target owner per shard. Deterministic: members and shards are taken in sorted order.

use std::collections::{BTreeMap, BTreeSet};

use shardq_protocol::ShardId;

/// How a group's shards are spread over its members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Strategy {
    /// Balanced (member counts differ by at most one where subscriptions allow), keeping each
    /// shard with its current owner where balance allows: a join or leave moves only the
    /// shards that must move.
    #[default]
    Sticky,
    /// Per topic, contiguous ranges of partitions per member (Kafka's range assignor).
    Range,
    /// All shards in order, dealt to the members in turn.
    RoundRobin,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sticky" => Ok(Strategy::Sticky),
            "range" => Ok(Strategy::Range),
            "round-robin" | "roundrobin" => Ok(Strategy::RoundRobin),
            _ => Err(format!(
                "unknown assignment strategy {s:?}; expected sticky, range or round-robin"
            )),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Sticky => "sticky",
            Strategy::Range => "range",
            Strategy::RoundRobin => "round-robin",
        })
    }
}

/// Member id -> the shards it may read.
pub type Eligible = BTreeMap<String, BTreeSet<ShardId>>;

/// The target owner of every shard some member may read. `current` (shard -> owner) is the
/// previous target, which the sticky strategy keeps where it can.
pub fn assign(
    strategy: Strategy,
    eligible: &Eligible,
    current: &BTreeMap<ShardId, String>,
) -> BTreeMap<ShardId, String> {
    match strategy {
        Strategy::Sticky => sticky(eligible, current),
        Strategy::Range => range(eligible),
        Strategy::RoundRobin => round_robin(eligible),
    }
}

/// Every shard some member may read, with those members.
fn readers(eligible: &Eligible) -> BTreeMap<ShardId, Vec<&String>> {
    let mut out: BTreeMap<ShardId, Vec<&String>> = BTreeMap::new();
    for (m, shards) in eligible {
        for s in shards {
            out.entry(s.clone()).or_default().push(m);
        }
    }
    out
}

fn sticky(eligible: &Eligible, current: &BTreeMap<ShardId, String>) -> BTreeMap<ShardId, String> {
    let readers = readers(eligible);
    let members = eligible.len().max(1);
    // No member takes more than its fair share, rounded up.
    let cap = readers.len().div_ceil(members);
    let mut count: BTreeMap<&String, usize> = eligible.keys().map(|m| (m, 0)).collect();
    let mut out = BTreeMap::new();
    let mut rest = Vec::new();
    for (shard, rs) in &readers {
        match current
            .get(shard)
            .and_then(|o| rs.iter().find(|m| **m == o))
        {
            Some(&owner) if count[owner] < cap => {
                *count.get_mut(owner).expect("a member") += 1;
                out.insert(shard.clone(), owner.clone());
            }
            _ => rest.push((shard, rs)),
        }
    }
    for (shard, rs) in rest {
        let owner = *rs
            .iter()
            .min_by_key(|m| (count[**m], **m))
            .expect("a shard in `readers` has a reader");
        *count.get_mut(owner).expect("a member") += 1;
        out.insert(shard.clone(), owner.clone());
    }
    out
}

fn range(eligible: &Eligible) -> BTreeMap<ShardId, String> {
    let mut by_topic: BTreeMap<String, Vec<(ShardId, Vec<&String>)>> = BTreeMap::new();
    for (shard, rs) in readers(eligible) {
        by_topic
            .entry(shard.topic.clone())
            .or_default()
            .push((shard, rs));
    }
    let mut out = BTreeMap::new();
    for shards in by_topic.into_values() {
        // The members reading this topic, in order, take contiguous runs of its partitions (the
        // first ones one more when they do not divide evenly).
        let members: BTreeSet<&String> = shards
            .iter()
            .flat_map(|(_, rs)| rs.iter().copied())
            .collect();
        let members: Vec<&String> = members.into_iter().collect();
        let (per, extra) = (shards.len() / members.len(), shards.len() % members.len());
        let mut run = shards.into_iter();
        for (k, m) in members.iter().enumerate() {
            for (shard, rs) in run.by_ref().take(per + usize::from(k < extra)) {
                // A member that does not read this very shard passes it to one that does.
                let owner = if rs.contains(m) { *m } else { rs[0] };
                out.insert(shard, owner.clone());
            }
        }
    }
    out
}

fn round_robin(eligible: &Eligible) -> BTreeMap<ShardId, String> {
    let members: Vec<&String> = eligible.keys().collect();
    let mut out = BTreeMap::new();
    let mut next = 0usize;
    for (shard, rs) in readers(eligible) {
        // The next member in turn that may read it.
        let owner = (0..members.len())
            .map(|k| members[(next + k) % members.len()])
            .find(|m| rs.contains(m))
            .expect("a reader");
        next = members.iter().position(|m| *m == owner).unwrap_or(0) + 1;
        out.insert(shard, owner.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(topic: &str, n: u32) -> BTreeSet<ShardId> {
        (1..=n).map(|p| ShardId::new(topic, p)).collect()
    }

    fn counts(a: &BTreeMap<ShardId, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for m in a.values() {
            *c.entry(m.clone()).or_default() += 1;
        }
        c
    }

    fn all(members: &[&str], s: &BTreeSet<ShardId>) -> Eligible {
        members.iter().map(|m| (m.to_string(), s.clone())).collect()
    }

    #[test]
    fn sticky_balances_and_moves_only_what_must_move() {
        let s = shards("T", 12);
        let three = all(&["a", "b", "c"], &s);
        let first = assign(Strategy::Sticky, &three, &BTreeMap::new());
        assert_eq!(first.len(), 12);
        assert!(counts(&first).values().all(|n| *n == 4), "{first:?}");
        // A fourth joins: it gets 3, taken one from each; nothing else moves.
        let four = all(&["a", "b", "c", "d"], &s);
        let second = assign(Strategy::Sticky, &four, &first);
        assert!(counts(&second).values().all(|n| *n == 3), "{second:?}");
        let moved: Vec<_> = s.iter().filter(|x| first[*x] != second[*x]).collect();
        assert_eq!(moved.len(), 3);
        assert!(moved.iter().all(|x| second[*x] == "d"));
        // b leaves: only its 3 shards move, to the others.
        let without_b = all(&["a", "c", "d"], &s);
        let third = assign(Strategy::Sticky, &without_b, &second);
        assert!(counts(&third).values().all(|n| *n == 4), "{third:?}");
        for x in &s {
            if second[x] != "b" {
                assert_eq!(third[x], second[x], "{x} moved");
            }
        }
    }

    #[test]
    fn members_get_only_what_they_subscribe_to() {
        let mut e = all(&["a", "b"], &shards("T", 4));
        e.get_mut("b").unwrap().extend(shards("U", 2));
        for strategy in [Strategy::Sticky, Strategy::Range, Strategy::RoundRobin] {
            let a = assign(strategy, &e, &BTreeMap::new());
            assert_eq!(a.len(), 6, "{strategy}");
            for (shard, m) in &a {
                assert!(e[m].contains(shard), "{strategy}: {shard} to {m}");
            }
        }
    }

    #[test]
    fn range_gives_contiguous_runs_and_round_robin_deals_in_turn() {
        let e = all(&["a", "b", "c"], &shards("T", 7));
        let r = assign(Strategy::Range, &e, &BTreeMap::new());
        let of = |m: &str| -> Vec<u32> {
            r.iter()
                .filter(|(_, o)| *o == m)
                .map(|(s, _)| s.partition)
                .collect()
        };
        assert_eq!(
            (of("a"), of("b"), of("c")),
            (vec![1, 2, 3], vec![4, 5], vec![6, 7])
        );
        let rr = assign(Strategy::RoundRobin, &e, &BTreeMap::new());
        let of = |m: &str| -> Vec<u32> {
            rr.iter()
                .filter(|(_, o)| *o == m)
                .map(|(s, _)| s.partition)
                .collect()
        };
        assert_eq!(
            (of("a"), of("b"), of("c")),
            (vec![1, 4, 7], vec![2, 5], vec![3, 6])
        );
    }
}
