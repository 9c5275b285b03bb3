//! Property tests for the ring's contracts: determinism, minimal movement in plain mode, caps in
//! bounded mode, replica lists, `diff` against a naive model, and lookups against a linear scan.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shardq_ring::{
    balance, diff, moved_fraction, token_bytes, Assignment, BrokerId, HashFn, Member,
    PlacementMode, Ring, RingConfig,
};

fn hash_fn() -> impl Strategy<Value = HashFn> {
    prop::sample::select(HashFn::all().to_vec())
}

fn mode() -> impl Strategy<Value = PlacementMode> {
    prop_oneof![
        Just(PlacementMode::Plain),
        (0.0f64..1.0).prop_map(|eps| PlacementMode::Bounded { eps }),
    ]
}

fn config() -> impl Strategy<Value = RingConfig> {
    (1u32..24, hash_fn(), mode()).prop_map(|(vnodes, hash, mode)| RingConfig { vnodes, hash, mode })
}

/// Unique ids; weights 0..=3 (0 = member without tokens).
fn members(max: usize) -> impl Strategy<Value = Vec<Member>> {
    prop::collection::btree_map(0u32..64, 0u32..4, 0..max).prop_map(|m| {
        m.into_iter()
            .map(|(id, weight)| Member { id, weight })
            .collect()
    })
}

fn shards(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (0u32..60, 0u32..16).prop_map(|(t, p)| format!("T{t}:P{p}")),
        0..max,
    )
}

fn distinct(shards: &[String]) -> BTreeSet<String> {
    shards.iter().cloned().collect()
}

/// Naive owner: linear scan over every token, smallest (token, id) >= h, else smallest overall.
fn naive_owner(config: &RingConfig, members: &[Member], h: u64) -> Option<BrokerId> {
    let mut tokens: Vec<(u64, BrokerId)> = Vec::new();
    for m in members {
        for i in 0..m.weight * config.vnodes {
            tokens.push((config.hash.hash(&token_bytes(m.id, i)), m.id));
        }
    }
    let at_or_after = tokens.iter().filter(|(t, _)| *t >= h).min();
    at_or_after
        .or_else(|| tokens.iter().min())
        .map(|&(_, id)| id)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn owner_matches_linear_scan(
        config in config(),
        members in members(8),
        keys in prop::collection::vec(any::<u64>(), 1..20),
        names in shards(20),
    ) {
        let ring = Ring::new(config.clone(), &members);
        for h in keys {
            prop_assert_eq!(ring.owner_of_hash(h), naive_owner(&config, &members, h));
        }
        for n in &names {
            prop_assert_eq!(ring.owner(n), naive_owner(&config, &members, config.hash.hash(n.as_bytes())));
        }
    }

    #[test]
    fn placement_is_deterministic_and_order_free(
        config in config(),
        (members, shuffled) in members(12).prop_flat_map(|m| (Just(m.clone()), Just(m).prop_shuffle())),
        (shards, shuffled_shards) in shards(150).prop_flat_map(|s| (Just(s.clone()), Just(s).prop_shuffle())),
    ) {
        let a = Ring::new(config.clone(), &members);
        let b = Ring::new(config.clone(), &shuffled);
        prop_assert_eq!(a.members(), b.members());
        let pa = a.place(&shards);
        prop_assert_eq!(&pa, &b.place(&shuffled_shards));
        // Duplicated input names are the same set.
        let mut doubled = shuffled_shards.clone();
        doubled.extend(shards.iter().cloned());
        prop_assert_eq!(&pa, &a.place(&doubled));
        // And a rebuilt ring agrees (no hidden state).
        prop_assert_eq!(&pa, &Ring::new(config, &members).place(&shards));
    }

    #[test]
    fn plain_add_moves_only_to_new_broker(
        vnodes in 1u32..32,
        hash in hash_fn(),
        members in members(12),
        new_id in 64u32..80,
        new_weight in 1u32..4,
        shards in shards(200),
    ) {
        let config = RingConfig { vnodes, hash, mode: PlacementMode::Plain };
        let old = Ring::new(config.clone(), &members).place(&shards);
        let mut grown = members.clone();
        grown.push(Member { id: new_id, weight: new_weight });
        let new = Ring::new(config, &grown).place(&shards);
        prop_assert_eq!(new.len(), distinct(&shards).len());
        for m in diff(&old, &new) {
            prop_assert_eq!(m.to, Some(new_id), "{:?}", m);
            // Shards that existed before keep their old owner unless taken by the new broker.
            prop_assert!(m.from.is_some() || old.is_empty());
        }
        for (s, b) in &new {
            if *b != new_id {
                prop_assert_eq!(old.get(s), Some(b));
            }
        }
    }

    #[test]
    fn plain_remove_moves_only_removed_brokers_shards(
        vnodes in 1u32..32,
        hash in hash_fn(),
        members in members(12),
        pick in any::<prop::sample::Index>(),
        shards in shards(200),
    ) {
        let active: Vec<Member> = members.iter().copied().filter(|m| m.weight > 0).collect();
        prop_assume!(active.len() >= 2);
        let gone = pick.get(&active).id;
        let config = RingConfig { vnodes, hash, mode: PlacementMode::Plain };
        let old = Ring::new(config.clone(), &members).place(&shards);
        let rest: Vec<Member> = members.iter().copied().filter(|m| m.id != gone).collect();
        let new = Ring::new(config, &rest).place(&shards);
        let moves = diff(&old, &new);
        for m in &moves {
            prop_assert_eq!(m.from, Some(gone));
            prop_assert!(m.to.is_some() && m.to != Some(gone));
        }
        let owned_by_gone = old.values().filter(|&&b| b == gone).count();
        prop_assert_eq!(moves.len(), owned_by_gone);
    }

    #[test]
    fn bounded_respects_caps_and_places_everything(
        vnodes in 1u32..24,
        hash in hash_fn(),
        members in members(16),
        eps in -0.5f64..1.5,
        shards in shards(300),
    ) {
        let config = RingConfig { vnodes, hash, mode: PlacementMode::Bounded { eps } };
        let ring = Ring::new(config, &members);
        let placed = ring.place(&shards);
        let any_active = members.iter().any(|m| m.weight > 0);
        let n = distinct(&shards).len();
        prop_assert_eq!(placed.len(), if any_active { n } else { 0 });
        let caps = ring.capacities(n, eps);
        let stats = balance(&placed, &members);
        for (b, count) in &stats.per_broker {
            let cap = caps.get(b).copied().unwrap_or(0);
            prop_assert!(*count <= cap, "broker {} has {} > cap {}", b, count, cap);
        }
        let zero: BTreeSet<BrokerId> = members.iter().filter(|m| m.weight == 0).map(|m| m.id).collect();
        prop_assert!(placed.values().all(|b| !zero.contains(b)));
    }

    #[test]
    fn replicas_are_distinct_prefix_consistent_and_start_at_owner(
        config in config(),
        members in members(10),
        key in "[a-zA-Z0-9:]{0,12}",
        n in 0usize..14,
    ) {
        let ring = Ring::new(config, &members);
        let active = members.iter().filter(|m| m.weight > 0).count();
        let reps = ring.replicas(&key, n);
        prop_assert_eq!(reps.len(), n.min(active));
        prop_assert_eq!(reps.iter().collect::<BTreeSet<_>>().len(), reps.len());
        prop_assert_eq!(reps.first().copied(), if n > 0 { ring.owner(&key) } else { None });
        let zero: BTreeSet<BrokerId> = members.iter().filter(|m| m.weight == 0).map(|m| m.id).collect();
        prop_assert!(reps.iter().all(|b| !zero.contains(b)));
        let more = ring.replicas(&key, n + 3);
        prop_assert_eq!(&more[..reps.len()], &reps[..]);
    }

    #[test]
    fn diff_matches_naive_model(
        old in prop::collection::btree_map("[a-e]{1,2}", 0u32..4, 0..20),
        new in prop::collection::btree_map("[a-e]{1,2}", 0u32..4, 0..20),
    ) {
        let old: Assignment = old;
        let new: Assignment = new;
        let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        let naive: Vec<(String, Option<u32>, Option<u32>)> = keys
            .iter()
            .map(|k| (k.to_string(), old.get(*k).copied(), new.get(*k).copied()))
            .filter(|(_, a, b)| a != b)
            .collect();
        let got: Vec<(String, Option<u32>, Option<u32>)> =
            diff(&old, &new).into_iter().map(|m| (m.shard, m.from, m.to)).collect();
        prop_assert_eq!(&got, &naive);
        let expected = if keys.is_empty() { 0.0 } else { naive.len() as f64 / keys.len() as f64 };
        prop_assert!((moved_fraction(&old, &new) - expected).abs() < 1e-12);
        prop_assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn weightless_rings_answer_none(
        config in config(),
        ids in prop::collection::btree_set(0u32..64, 0..6),
        key in ".{0,10}",
        n in 0usize..5,
        shards in shards(20),
    ) {
        let members: Vec<Member> = ids.into_iter().map(|id| Member { id, weight: 0 }).collect();
        let ring = Ring::new(config, &members);
        prop_assert_eq!(ring.owner(&key), None);
        prop_assert!(ring.replicas(&key, n).is_empty());
        prop_assert!(ring.place(&shards).is_empty());
        let stats = balance(&ring.place(&shards), &members);
        prop_assert!(stats.per_broker.is_empty());
    }

    #[test]
    fn balance_counts_every_shard(
        members in members(10),
        owners in prop::collection::vec(0u32..70, 0..50),
    ) {
        let a: Assignment = owners.iter().enumerate().map(|(i, &b)| (format!("s{i}"), b)).collect();
        let stats = balance(&a, &members);
        prop_assert_eq!(stats.per_broker.values().sum::<usize>(), a.len());
        for m in members.iter().filter(|m| m.weight > 0) {
            prop_assert!(stats.per_broker.contains_key(&m.id));
        }
        let counts: BTreeMap<u32, usize> = a.values().fold(BTreeMap::new(), |mut acc, &b| {
            *acc.entry(b).or_insert(0) += 1;
            acc
        });
        for (b, c) in counts {
            prop_assert_eq!(stats.per_broker.get(&b), Some(&c));
        }
    }
}
