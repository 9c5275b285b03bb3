//! Choosing a partition for a record sent to `T:*`: round-robin, key-hash and least-loaded
//! strategies, and the [`PartitionStrategy`] trait for plugging in others.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// What a strategy knows when it picks a partition.
pub struct PartitionContext<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    /// Partitions of the topic: the answer must be in `1..=partitions`.
    pub partitions: u32,
    /// How many records this producer has sent to `topic:*` before this one (for rotation).
    pub counter: u64,
    /// Records queued or in flight for a partition (1-based) of this topic.
    pub load: &'a dyn Fn(u32) -> u64,
}

/// A pluggable partition choice. Must be deterministic for a given context if it promises
/// key affinity.
pub trait PartitionStrategy: Send + Sync + fmt::Debug {
    /// A partition in `1..=ctx.partitions` (`ctx.partitions` is at least 1).
    fn choose(&self, ctx: &PartitionContext<'_>) -> u32;
}

/// The strategies a [`crate::Producer`] can use for `T:*`.
#[derive(Clone, Debug, Default)]
pub enum Partitioner {
    /// Unkeyed records rotate over the partitions; keyed records go by key hash (so a key
    /// always lands on one partition, keeping its order).
    #[default]
    RoundRobin,
    /// Every record by the hash of its key (xxh3 mod partitions); unkeyed records rotate.
    KeyHash,
    /// The partition with the fewest records queued or in flight in this producer (ties broken
    /// by rotation); ignores keys.
    LeastLoaded,
    Custom(Arc<dyn PartitionStrategy>),
}

impl Partitioner {
    /// Picks a partition in `1..=ctx.partitions`; out-of-range answers of a custom strategy are
    /// folded back into range rather than trusted.
    pub fn choose(&self, ctx: &PartitionContext<'_>) -> u32 {
        let n = ctx.partitions.max(1);
        let p = match self {
            Partitioner::RoundRobin => match ctx.key {
                Some(k) => key_partition(k, n),
                None => rotate(ctx.counter, n),
            },
            Partitioner::KeyHash => match ctx.key {
                Some(k) => key_partition(k, n),
                None => rotate(ctx.counter, n),
            },
            Partitioner::LeastLoaded => least_loaded(ctx.counter, n, ctx.load),
            Partitioner::Custom(s) => s.choose(ctx),
        };
        if (1..=n).contains(&p) {
            p
        } else {
            p % n + 1
        }
    }
}

/// The partition (1-based) a key hashes to: stable across runs, machines and versions of this
/// program (xxh3 with seed 0).
pub fn key_partition(key: &[u8], partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(partitions.max(1))) as u32 + 1
}

fn rotate(counter: u64, partitions: u32) -> u32 {
    (counter % u64::from(partitions)) as u32 + 1
}

fn least_loaded(counter: u64, partitions: u32, load: &dyn Fn(u32) -> u64) -> u32 {
    // Start the scan at a rotating partition so equal loads spread instead of piling on P1.
    let start = rotate(counter, partitions);
    let mut best = start;
    let mut best_load = load(start);
    for i in 1..partitions {
        let p = (start - 1 + i) % partitions + 1;
        let l = load(p);
        if l < best_load {
            best = p;
            best_load = l;
        }
    }
    best
}

impl FromStr for Partitioner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "round-robin" | "roundrobin" | "rr" => Ok(Partitioner::RoundRobin),
            "key-hash" | "keyhash" | "hash" => Ok(Partitioner::KeyHash),
            "least-loaded" | "leastloaded" => Ok(Partitioner::LeastLoaded),
            _ => Err(format!(
                "unknown partitioner {s:?}; expected round-robin, key-hash or least-loaded"
            )),
        }
    }
}

impl fmt::Display for Partitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partitioner::RoundRobin => f.write_str("round-robin"),
            Partitioner::KeyHash => f.write_str("key-hash"),
            Partitioner::LeastLoaded => f.write_str("least-loaded"),
            Partitioner::Custom(s) => write!(f, "custom({s:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(
        key: Option<&'a [u8]>,
        n: u32,
        counter: u64,
        load: &'a dyn Fn(u32) -> u64,
    ) -> PartitionContext<'a> {
        PartitionContext {
            topic: "T",
            key,
            partitions: n,
            counter,
            load,
        }
    }

    #[test]
    fn round_robin_cycles_through_every_partition() {
        let zero = |_| 0;
        let got: Vec<u32> = (0..8)
            .map(|i| Partitioner::RoundRobin.choose(&ctx(None, 3, i, &zero)))
            .collect();
        assert_eq!(got, vec![1, 2, 3, 1, 2, 3, 1, 2]);
    }

    #[test]
    fn key_hash_is_deterministic_and_spreads() {
        let zero = |_| 0;
        let mut seen = [0u32; 4];
        for i in 0..1000u32 {
            let key = format!("key-{i}");
            let a = Partitioner::KeyHash.choose(&ctx(Some(key.as_bytes()), 4, 0, &zero));
            let b = Partitioner::KeyHash.choose(&ctx(Some(key.as_bytes()), 4, 99, &zero));
            assert_eq!(a, b, "same key, same partition whatever the counter");
            assert_eq!(a, key_partition(key.as_bytes(), 4));
            seen[(a - 1) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 150), "uneven spread {seen:?}");
        // Pinned so a change of hash function (which would move every key) is noticed.
        assert_eq!(
            key_partition(b"hello", 8),
            (xxhash_rust::xxh3::xxh3_64(b"hello") % 8) as u32 + 1
        );
        // The default strategy also keeps a key on one partition.
        assert_eq!(
            Partitioner::RoundRobin.choose(&ctx(Some(b"k"), 4, 1, &zero)),
            Partitioner::RoundRobin.choose(&ctx(Some(b"k"), 4, 2, &zero))
        );
    }

    #[test]
    fn least_loaded_picks_the_emptiest_and_rotates_ties() {
        let loads = |p: u32| [10, 3, 7, 3][(p - 1) as usize];
        assert!([2, 4].contains(&Partitioner::LeastLoaded.choose(&ctx(None, 4, 0, &loads))));
        let zero = |_| 0;
        let got: Vec<u32> = (0..4)
            .map(|i| Partitioner::LeastLoaded.choose(&ctx(None, 4, i, &zero)))
            .collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[derive(Debug)]
    struct Always(u32);
    impl PartitionStrategy for Always {
        fn choose(&self, _: &PartitionContext<'_>) -> u32 {
            self.0
        }
    }

    #[test]
    fn custom_strategies_are_kept_in_range() {
        let zero = |_| 0;
        assert_eq!(
            Partitioner::Custom(Arc::new(Always(2))).choose(&ctx(None, 3, 0, &zero)),
            2
        );
        let p = Partitioner::Custom(Arc::new(Always(0))).choose(&ctx(None, 3, 0, &zero));
        assert!((1..=3).contains(&p));
        let p = Partitioner::Custom(Arc::new(Always(7))).choose(&ctx(None, 3, 0, &zero));
        assert!((1..=3).contains(&p));
    }

    #[test]
    fn names_parse() {
        assert!(matches!(
            "least-loaded".parse(),
            Ok(Partitioner::LeastLoaded)
        ));
        assert!(matches!("key_hash".parse(), Ok(Partitioner::KeyHash)));
        assert!("random"
            .parse::<Partitioner>()
            .unwrap_err()
            .contains("round-robin"));
    }
}
