//! The ring itself: token construction, key lookup, replica walks and shard placement in plain
//! and bounded-load modes.
//!
//! Token encoding (stable, part of the placement contract): vnode `i` of broker `b` sits at
//! `hash(b.to_le_bytes() ++ i.to_le_bytes())` — 8 bytes, both `u32` little-endian — see
//! [`token_bytes`]. Tokens are kept sorted by `(token, broker id)` so that a collision between two
//! brokers is always resolved the same way (the lower id comes first and wins the lookup).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::placement::{bounds, Placer};
use crate::{Assignment, BrokerId, HashFn, ReplicaAssignment, RingError};

/// Default virtual nodes per unit of weight.
pub const DEFAULT_VNODES: u32 = 128;

/// Default bounded-load slack: each broker may hold at most `ceil((1 + eps) * fair share)`.
///
/// Why 0.2 and not the often-quoted 0.25: the cap is rounded *up* to whole shards, so the real
/// bound on max/mean is `ceil((1+eps)*mean)/mean`, which exceeds `1+eps` whenever `(1+eps)*mean`
/// is fractional. With 10 brokers x 100 shards, eps = 0.25 gives cap 13 = 1.30 x mean, while
/// eps = 0.2 gives cap 12 = 1.20 x mean; with 4 x 32 both give cap 10 = 1.25 x mean. 0.2 keeps
/// max/mean <= 1.25 for those few-shard layouts and costs only a little extra movement (measured by
/// `ring analyze`, see the crate tests `tests/targets.rs`). We keep the MTZ ceil formula rather
/// than a floor variant because ceil is what guarantees `sum(caps) >= shards` for every eps >= 0.
pub const DEFAULT_EPS: f64 = 0.2;

/// Upper bound on vnodes x total weight accepted by [`Ring::try_new`] (16 Mi tokens ≈ 200 MB).
pub const MAX_TOKENS: u64 = 1 << 24;

/// How [`Ring::place`] assigns a set of shards.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementMode {
    /// Each shard goes to its ring owner ([`Ring::owner`]).
    Plain,
    /// Consistent hashing with bounded loads *and* a floor: a broker of weight `w` leads at most
    /// `ceil((1+eps) * shards * w / total_weight)` shards (the bounded-load cap of Mirrokni,
    /// Thorup, Zadimoghaddam 2018) and at least `floor(shards * w / total_weight)`, so no broker
    /// sits idle while others hold several shards. Shards stay with their ring owner where the
    /// bounds allow; see [`Ring::place`]. Negative or NaN `eps` is treated as 0.
    Bounded {
        /// Slack over the fair share.
        eps: f64,
    },
}

impl Default for PlacementMode {
    fn default() -> Self {
        PlacementMode::Bounded { eps: DEFAULT_EPS }
    }
}

impl fmt::Display for PlacementMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementMode::Plain => f.write_str("plain"),
            PlacementMode::Bounded { eps } => write!(f, "bounded:{eps}"),
        }
    }
}

impl FromStr for PlacementMode {
    type Err = RingError;

    /// Accepts `plain`, `bounded` (eps = [`DEFAULT_EPS`]) and `bounded:<eps>` with a finite
    /// eps >= 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || RingError::BadMode(s.to_string());
        match t.as_str() {
            "plain" => Ok(PlacementMode::Plain),
            "bounded" => Ok(PlacementMode::Bounded { eps: DEFAULT_EPS }),
            _ => {
                let eps_str = t.strip_prefix("bounded:").ok_or_else(bad)?;
                let eps: f64 = eps_str.trim().parse().map_err(|_| bad())?;
                if !eps.is_finite() || eps < 0.0 {
                    return Err(bad());
                }
                Ok(PlacementMode::Bounded { eps })
            }
        }
    }
}

/// Ring parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingConfig {
    /// Virtual nodes per unit of weight.
    pub vnodes: u32,
    /// Hash for tokens and keys.
    pub hash: HashFn,
    /// Placement mode used by [`Ring::place`].
    pub mode: PlacementMode,
}

impl Default for RingConfig {
    /// 128 vnodes, xxh3, bounded-load with [`DEFAULT_EPS`]: with tens to hundreds of shards a
    /// plain ring is uneven in whole shards whatever the vnode count (see `ring analyze`).
    fn default() -> Self {
        RingConfig {
            vnodes: DEFAULT_VNODES,
            hash: HashFn::Xxh3,
            mode: PlacementMode::default(),
        }
    }
}

/// A broker and its relative capacity. Weight 0 means "member, but owns nothing".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Broker id.
    pub id: BrokerId,
    /// Relative weight: the broker gets `vnodes * weight` tokens.
    pub weight: u32,
}

impl Member {
    /// A member with weight 1.
    pub fn new(id: BrokerId) -> Member {
        Member { id, weight: 1 }
    }
}

/// The bytes hashed for vnode `vnode` of broker `broker`: both as little-endian `u32`.
pub fn token_bytes(broker: BrokerId, vnode: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&broker.to_le_bytes());
    b[4..].copy_from_slice(&vnode.to_le_bytes());
    b
}

/// A consistent-hash ring.
///
/// Tokens and their owners are two parallel sorted arrays (struct-of-arrays keeps the binary
/// search touching only the `u64`s). Owners are stored as indexes into `members`, which lets the
/// bounded-load walk keep loads in a dense `Vec` instead of a map.
#[derive(Clone)]
pub struct Ring {
    config: RingConfig,
    /// Sorted by id, unique ids.
    pub(crate) members: Vec<Member>,
    /// Sorted ascending (ties broken by broker id).
    pub(crate) tokens: Vec<u64>,
    /// `slots[i]` = index into `members` of the owner of `tokens[i]`.
    pub(crate) slots: Vec<u32>,
    /// Number of members that own at least one token.
    active: usize,
}

impl fmt::Debug for Ring {
    // The token array can be millions of entries; print a summary instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("config", &self.config)
            .field("members", &self.members)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Ring {
    /// Build a ring. The order of `members` does not matter. A broker id listed more than once is
    /// merged into one member whose weight is the (saturating) sum, so the result is still
    /// order-independent; use [`Ring::try_new`] to reject duplicates instead.
    ///
    /// Memory is proportional to `vnodes * total weight`; for untrusted input use
    /// [`Ring::try_new`], which enforces [`MAX_TOKENS`].
    pub fn new(config: RingConfig, members: &[Member]) -> Ring {
        let mut merged: BTreeMap<BrokerId, u32> = BTreeMap::new();
        for m in members {
            let w = merged.entry(m.id).or_insert(0);
            *w = w.saturating_add(m.weight);
        }
        let members: Vec<Member> = merged
            .into_iter()
            .map(|(id, weight)| Member { id, weight })
            .collect();

        let total: u64 = members
            .iter()
            .map(|m| u64::from(m.weight) * u64::from(config.vnodes))
            .sum();
        let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        let mut active = 0;
        for (slot, m) in members.iter().enumerate() {
            let count = u64::from(m.weight) * u64::from(config.vnodes);
            if count > 0 {
                active += 1;
            }
            // vnode indexes are u32; a weight large enough to exceed that is truncated (and far
            // beyond any realistic memory budget anyway).
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            for i in 0..count {
                pairs.push((config.hash.hash(&token_bytes(m.id, i)), slot as u32));
            }
        }
        // Slots are in id order, so sorting by (token, slot) == sorting by (token, broker id).
        pairs.sort_unstable();
        let (tokens, slots) = pairs.into_iter().unzip();
        Ring {
            config,
            members,
            tokens,
            slots,
            active,
        }
    }

    /// Like [`Ring::new`] but rejects duplicate ids and rings over [`MAX_TOKENS`] tokens.
    pub fn try_new(config: RingConfig, members: &[Member]) -> Result<Ring, RingError> {
        let mut ids: Vec<BrokerId> = members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(RingError::DuplicateMember(w[0]));
        }
        let tokens: u64 = members
            .iter()
            .map(|m| u64::from(m.weight) * u64::from(config.vnodes))
            .fold(0u64, u64::saturating_add);
        if tokens > MAX_TOKENS {
            return Err(RingError::TooManyTokens {
                tokens,
                limit: MAX_TOKENS,
            });
        }
        Ok(Ring::new(config, members))
    }

    /// The configuration this ring was built with.
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Members sorted by id (duplicates merged), including weight-0 members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Every token on the ring with its owner, in ring order.
    pub fn tokens(&self) -> impl Iterator<Item = (u64, BrokerId)> + '_ {
        self.tokens
            .iter()
            .zip(&self.slots)
            .map(|(t, s)| (*t, self.members[*s as usize].id))
    }

    /// Total number of tokens on the ring.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Ring position of a key under this ring's hash function.
    #[inline]
    pub fn key_hash(&self, key: &str) -> u64 {
        self.config.hash.hash(key.as_bytes())
    }

    /// Index of the first token clockwise from `h` (wrapping). Caller ensures non-empty.
    #[inline]
    fn index_for(&self, h: u64) -> usize {
        let i = self.tokens.partition_point(|&t| t < h);
        if i == self.tokens.len() {
            0
        } else {
            i
        }
    }

    /// Plain-ring owner of `key`: the broker of the first token at or clockwise after
    /// `hash(key)`. `None` if the ring has no tokens.
    #[inline]
    pub fn owner(&self, key: &str) -> Option<BrokerId> {
        self.owner_of_hash(self.key_hash(key))
    }

    /// Plain-ring owner of a precomputed ring position.
    #[inline]
    pub fn owner_of_hash(&self, h: u64) -> Option<BrokerId> {
        if self.tokens.is_empty() {
            return None;
        }
        let slot = self.slots[self.index_for(h)] as usize;
        Some(self.members[slot].id)
    }

    /// The first `n` distinct brokers clockwise from `hash(key)`; the first is [`Ring::owner`].
    /// Length is `min(n, brokers with weight > 0)` (0 if the ring is empty).
    pub fn replicas(&self, key: &str, n: usize) -> Vec<BrokerId> {
        let want = n.min(self.active);
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let mut seen = vec![false; self.members.len()];
        let start = self.index_for(self.key_hash(key));
        let len = self.tokens.len();
        // Every active member has a token, so one lap always finds `want` distinct brokers.
        for step in 0..len {
            let slot = self.slots[(start + step) % len] as usize;
            if !seen[slot] {
                seen[slot] = true;
                out.push(self.members[slot].id);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// Per-broker caps of bounded-load placement for `shards` shards with slack `eps`:
    /// `ceil((1+eps) * shards * weight / total_weight)` for every member that owns tokens.
    /// Negative/NaN eps is treated as 0.
    pub fn capacities(&self, shards: usize, eps: f64) -> BTreeMap<BrokerId, usize> {
        self.slot_caps(shards, eps)
            .into_iter()
            .enumerate()
            .filter(|(slot, _)| self.slot_active(*slot))
            .map(|(slot, cap)| (self.members[slot].id, cap))
            .collect()
    }

    pub(crate) fn slot_active(&self, slot: usize) -> bool {
        self.members[slot].weight > 0 && self.config.vnodes > 0
    }

    fn slot_caps(&self, shards: usize, eps: f64) -> Vec<usize> {
        let eps = if eps.is_nan() || eps < 0.0 { 0.0 } else { eps };
        let total_w: f64 = (0..self.members.len())
            .filter(|&s| self.slot_active(s))
            .map(|s| f64::from(self.members[s].weight))
            .sum();
        (0..self.members.len())
            .map(|s| {
                if !self.slot_active(s) || total_w == 0.0 {
                    return 0;
                }
                let x = (1.0 + eps) * (shards as f64) * f64::from(self.members[s].weight) / total_w;
                // Shave a relative 1e-12 before rounding up so float noise (1.2*100/10 =
                // 12.000000000000002) does not add a whole shard to the cap. An infinite eps
                // means "unbounded" (inf - inf*1e-12 would be NaN, which `as` turns into 0).
                if x.is_infinite() {
                    return usize::MAX;
                }
                (x - x * 1e-12).ceil() as usize
            })
            .collect()
    }

    /// Assign every distinct shard in `shards` to a broker using `config.mode`.
    ///
    /// Deterministic for a given *set* of shards: input order and duplicates do not matter.
    /// Returns an empty assignment if the ring has no tokens.
    ///
    /// * Plain: every shard goes to its ring owner. A join moves shards only to the new broker,
    ///   a leave only the leaving broker's shards; balance is whatever the hash gives.
    /// * Bounded: every broker with weight `w` leads between `floor(S*w/W)` and
    ///   `ceil((1+eps)*S*w/W)` of the `S` shards (equal weights: at least `floor(S/N)`; 6 shards
    ///   on 3 brokers are 2/2/2, 4 are 2/1/1). The layout is built by adding the brokers one at a
    ///   time in id order, each newcomer only *taking* shards from the brokers before it: first
    ///   what brings them under their new caps, then the shards whose ring walk reaches it before
    ///   their current holder (nearest first), then the nearest others, while givers stay at or
    ///   above their floors, until it holds what the ring would give it, clamped to its bounds.
    ///
    ///   Hence the join of a broker whose id is larger than every member's moves shards only to
    ///   it, and the leave of the largest id moves only that broker's shards — with one
    ///   exception: the old brokers' excess over their new caps, `sum(max(0, count - new cap))`,
    ///   is more than the newcomer's cap. That needs few shards per broker (e.g. 13 shards led
    ///   3/3/3/1/1/1/1 by 7 brokers with eps 0.1: an 8th caps everyone at 2 and may take only 2
    ///   of the 3 extra); the rest then goes to the nearest old broker with room. The join or
    ///   leave of any other id can also move shards between other brokers: no deterministic
    ///   placement with these floors can avoid that for every member set (with 6 shards and 7
    ///   possible brokers it is impossible; the proof and measurements of how often it happens
    ///   are in the crate's `tests/properties.rs`).
    pub fn place<S: AsRef<str>>(&self, shards: &[S]) -> Assignment {
        match self.config.mode {
            PlacementMode::Plain => self.place_plain(shards),
            PlacementMode::Bounded { eps } => self.place_bounded(shards, eps),
        }
    }

    fn place_plain<S: AsRef<str>>(&self, shards: &[S]) -> Assignment {
        if self.tokens.is_empty() {
            return Assignment::new();
        }
        // Collecting from a Vec lets BTreeMap sort once and bulk-build (measured ~2x faster than
        // inserting one by one); duplicates collapse to one entry with the same owner.
        shards
            .iter()
            .map(|s| {
                let s = s.as_ref();
                let slot = self.slots[self.index_for(self.key_hash(s))] as usize;
                (s.to_string(), self.members[slot].id)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect()
    }

    fn place_bounded<S: AsRef<str>>(&self, shards: &[S], eps: f64) -> Assignment {
        let placer = Placer::new(self, shards, eps);
        if placer.ids.is_empty() {
            return Assignment::new();
        }
        let layout = placer.run(1);
        placer
            .names
            .iter()
            .zip(&layout.leader)
            .map(|(name, &l)| (name.to_string(), placer.ids[l]))
            .collect::<Vec<_>>()
            .into_iter()
            .collect()
    }

    /// Place `r` replicas of every distinct shard in `shards`: element 0 of each list is the
    /// leader, always equal to [`Ring::place`]'s owner of the shard, followed by the followers in
    /// the order of the shard's ring walk. Lists hold `min(r, brokers with weight > 0)` distinct
    /// brokers (none for `r == 0`); the map is empty if the ring has no tokens. Deterministic for
    /// a given set of shards, like `place`.
    ///
    /// * Plain mode: [`Ring::replicas`] — the next distinct brokers clockwise.
    /// * Bounded mode: the followers are the next distinct brokers clockwise from the shard's
    ///   hash, skipping the leader, except where that would break the replica bounds: every
    ///   broker holds (leaders + followers) at least `floor(S*r*w/W)` and at most
    ///   `ceil((1+eps)*S*r*w/W)` replicas, `S` shards, `r` the capped replica count (see
    ///   [`Ring::replica_bounds`]). A broker whose share would exceed `S` (one replica of every
    ///   shard) is held at `S` and the rest is shared by weight among the others. The floors
    ///   give way only where the leaders make them impossible (e.g. 2 shards, 2 replicas and
    ///   three brokers whose floor is 1 besides the two leaders: only 2 follower slots).
    ///
    ///   Built like `place`: brokers added in id order, each newcomer entering replica sets (all
    ///   of those it leads, then where the ring walk reaches it before the farthest follower)
    ///   and one member leaving each set it enters, chosen so every broker stays within its
    ///   bounds (an exact search over those choices). So the join of a broker with a larger id
    ///   than every member's adds replicas only on it, and the leave of the largest id removes
    ///   only that broker's replicas, whenever any layout with that property meets the bounds
    ///   and the leaders themselves moved only to (from) it. Otherwise (few shards per broker;
    ///   `tests/properties.rs` decides these cases exactly and measures how often they occur,
    ///   e.g. 2 to 7% of such joins with 1 to 40 shards and 2 replicas) followers are also
    ///   swapped between older brokers.
    pub fn place_replicas<S: AsRef<str>>(&self, shards: &[S], r: usize) -> ReplicaAssignment {
        if self.tokens.is_empty() {
            return ReplicaAssignment::new();
        }
        let eps = match self.config.mode {
            PlacementMode::Plain => {
                return shards
                    .iter()
                    .map(|s| (s.as_ref().to_string(), self.replicas(s.as_ref(), r)))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .collect();
            }
            PlacementMode::Bounded { eps } => eps,
        };
        let placer = Placer::new(self, shards, eps);
        let want = r.min(placer.ids.len());
        if want == 0 {
            return placer
                .names
                .iter()
                .map(|n| (n.to_string(), Vec::new()))
                .collect();
        }
        let layout = placer.run(want);
        let mut out = Vec::with_capacity(placer.names.len());
        for (s, name) in placer.names.iter().enumerate() {
            let mut list = Vec::with_capacity(want);
            list.push(placer.ids[layout.leader[s]]);
            if want > 1 {
                list.extend(placer.ordered_followers(s, &layout.followers[s]));
            }
            out.push((name.to_string(), list));
        }
        out.into_iter().collect()
    }

    /// Per-broker `(min, max)` replica counts that [`Ring::place_replicas`] keeps in bounded
    /// mode for `shards` distinct shards and `r` replicas each (`r = 1`: leaders, as
    /// [`Ring::place`] keeps them): `floor(S*r*w/W)` and `ceil((1+eps)*S*r*w/W)`, `r` capped at
    /// the number of brokers with weight > 0, a broker's share capped at `S` (the rest shared by
    /// weight among the others). Only brokers with tokens are listed.
    pub fn replica_bounds(
        &self,
        shards: usize,
        r: usize,
        eps: f64,
    ) -> BTreeMap<BrokerId, (usize, usize)> {
        let active: Vec<usize> = (0..self.members.len())
            .filter(|&s| self.slot_active(s))
            .collect();
        let weights: Vec<u64> = active
            .iter()
            .map(|&s| u64::from(self.members[s].weight))
            .collect();
        active
            .iter()
            .zip(bounds(&weights, shards, r, eps))
            .map(|(&s, b)| (self.members[s].id, b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: PlacementMode) -> RingConfig {
        RingConfig {
            vnodes: 16,
            hash: HashFn::Xxh3,
            mode,
        }
    }

    #[test]
    fn mode_parsing() {
        assert_eq!(
            "plain".parse::<PlacementMode>().unwrap(),
            PlacementMode::Plain
        );
        assert_eq!(
            "bounded".parse::<PlacementMode>().unwrap(),
            PlacementMode::Bounded { eps: DEFAULT_EPS }
        );
        assert_eq!(
            "bounded:0.25".parse::<PlacementMode>().unwrap(),
            PlacementMode::Bounded { eps: 0.25 }
        );
        for bad in [
            "",
            "bounded:",
            "bounded:-1",
            "bounded:nan",
            "bounded:inf",
            "foo",
        ] {
            let e = bad.parse::<PlacementMode>().unwrap_err().to_string();
            assert!(e.contains("plain") && e.contains("bounded"), "{e}");
        }
        for m in [PlacementMode::Plain, PlacementMode::Bounded { eps: 0.1 }] {
            assert_eq!(m.to_string().parse::<PlacementMode>().unwrap(), m);
        }
    }

    #[test]
    fn empty_ring_is_harmless() {
        let r = Ring::new(RingConfig::default(), &[]);
        assert!(r.place_replicas(&["a"], 2).is_empty());
        assert!(r.replica_bounds(5, 2, 0.2).is_empty());
        assert_eq!(r.owner("T1:P1"), None);
        assert!(r.replicas("T1:P1", 3).is_empty());
        assert!(r.place(&["a", "b"]).is_empty());
        let r = Ring::new(
            RingConfig {
                vnodes: 0,
                ..RingConfig::default()
            },
            &[Member::new(1)],
        );
        assert_eq!(r.owner("x"), None);
        assert!(r.place(&["a"]).is_empty());
        assert!(r.capacities(5, 0.2).is_empty());
    }

    #[test]
    fn duplicates_merge_or_reject() {
        let a = Ring::new(
            cfg(PlacementMode::Plain),
            &[Member { id: 1, weight: 1 }, Member { id: 1, weight: 2 }],
        );
        assert_eq!(a.members(), &[Member { id: 1, weight: 3 }]);
        assert_eq!(a.token_count(), 48);
        assert_eq!(
            Ring::try_new(cfg(PlacementMode::Plain), &[Member::new(1), Member::new(1)])
                .unwrap_err(),
            RingError::DuplicateMember(1)
        );
        let huge = RingConfig {
            vnodes: u32::MAX,
            ..RingConfig::default()
        };
        assert!(matches!(
            Ring::try_new(
                huge,
                &[Member {
                    id: 1,
                    weight: u32::MAX
                }]
            ),
            Err(RingError::TooManyTokens { .. })
        ));
    }

    #[test]
    fn caps_and_weird_eps() {
        let members: Vec<Member> = (1..=10).map(Member::new).collect();
        let r = Ring::new(cfg(PlacementMode::Plain), &members);
        assert!(r.capacities(100, 0.2).values().all(|&c| c == 12));
        assert!(r.capacities(100, 0.25).values().all(|&c| c == 13));
        assert!(r.capacities(100, -3.0).values().all(|&c| c == 10));
        assert!(r.capacities(100, f64::NAN).values().all(|&c| c == 10));
        let shards: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
        for eps in [f64::INFINITY, -1.0, f64::NAN, 0.0] {
            let r = Ring::new(cfg(PlacementMode::Bounded { eps }), &members);
            assert_eq!(r.place(&shards).len(), 100);
        }
    }

    /// Leader counts per broker of `topic`'s partitions `P1..=Pn` (the router's shard keys, see
    /// `ShardId::key`), sorted.
    fn leader_counts(ring: &Ring, topic: &str, n: u32) -> Vec<usize> {
        let keys: Vec<String> = (1..=n).map(|p| format!("{topic}:P{p}")).collect();
        let placed = ring.place(&keys);
        assert_eq!(placed.len(), keys.len());
        let mut counts: Vec<usize> = ring
            .members()
            .iter()
            .map(|m| placed.values().filter(|&&b| b == m.id).count())
            .collect();
        counts.sort_unstable();
        counts
    }

    /// Issue 9: 6 partitions on 3 brokers were placed 3/3/0 and 4 partitions 1/1/2. The router
    /// places with `RingConfig::default()` (bounded, 128 vnodes, xxh3); check that and other
    /// vnode counts, hashes, topics and broker ids.
    #[test]
    fn few_partitions_on_three_brokers_are_even() {
        let topics = [
            "orders", "T1", "T2", "bench", "payments", "events", "a", "clicks", "x-y_z",
        ];
        let id_sets: [&[BrokerId]; 3] = [&[1, 2, 3], &[0, 1, 2], &[3, 17, 42]];
        let mut configs = vec![RingConfig::default()];
        for vnodes in [1, 16, 128, 512] {
            for &hash in HashFn::all() {
                for eps in [0.0, DEFAULT_EPS, 1.0] {
                    configs.push(RingConfig {
                        vnodes,
                        hash,
                        mode: PlacementMode::Bounded { eps },
                    });
                }
            }
        }
        for config in &configs {
            for ids in id_sets {
                let members: Vec<Member> = ids.iter().map(|&id| Member::new(id)).collect();
                let ring = Ring::new(config.clone(), &members);
                for topic in topics {
                    let at = format!("{config:?} {topic} {ids:?}");
                    assert_eq!(leader_counts(&ring, topic, 6), [2, 2, 2], "{at}");
                    assert_eq!(leader_counts(&ring, topic, 4), [1, 1, 2], "{at}");
                    // Every broker leads at least floor(S/N) for other small counts too.
                    for n in 1..=12u32 {
                        let c = leader_counts(&ring, topic, n);
                        assert!(c[0] >= n as usize / 3, "{at} {n}: {c:?}");
                    }
                }
            }
        }
    }

    /// Replicas of 6 partitions x 3 on 3 brokers: everyone holds everything; x 2 on 4 brokers:
    /// 3 each; the leader is `place`'s.
    #[test]
    fn replicas_of_few_partitions() {
        let keys: Vec<String> = (1..=6).map(|p| format!("orders:P{p}")).collect();
        for n in [3u32, 4] {
            let members: Vec<Member> = (1..=n).map(Member::new).collect();
            let ring = Ring::new(RingConfig::default(), &members);
            let leaders = ring.place(&keys);
            for r in 0..=4usize {
                let reps = ring.place_replicas(&keys, r);
                assert_eq!(reps.len(), 6);
                let mut per: BTreeMap<BrokerId, usize> = BTreeMap::new();
                for (k, v) in &reps {
                    assert_eq!(v.len(), r.min(n as usize));
                    if r > 0 {
                        assert_eq!(v[0], leaders[k]);
                    }
                    for b in v {
                        *per.entry(*b).or_insert(0) += 1;
                    }
                }
                let total = 6 * r.min(n as usize);
                if total > 0 {
                    let (lo, hi) = (total / n as usize, total.div_ceil(n as usize));
                    assert!(
                        per.len() == n as usize && per.values().all(|&c| c >= lo && c <= hi),
                        "n={n} r={r}: {per:?}"
                    );
                }
            }
        }
        // Plain mode: exactly the ring's replica walk.
        let ring = Ring::new(cfg(PlacementMode::Plain), &[Member::new(1), Member::new(2)]);
        for (k, v) in ring.place_replicas(&keys, 3) {
            assert_eq!(v, ring.replicas(&k, 3));
        }
        assert!(Ring::new(RingConfig::default(), &[])
            .place_replicas(&keys, 2)
            .is_empty());
    }

    #[test]
    fn replicas_edge_cases() {
        let members: Vec<Member> = (1..=3).map(Member::new).collect();
        let r = Ring::new(cfg(PlacementMode::Plain), &members);
        assert!(r.replicas("k", 0).is_empty());
        let all = r.replicas("k", usize::MAX);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], r.owner("k").unwrap());
    }
}
