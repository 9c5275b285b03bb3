//! The router's in-memory state and the decisions made on it: membership and liveness, topics,
//! the actual assignment shard -> broker, the epoch, how a new topic's shards (or a removed
//! broker's shards) get their owners from the ring, and the bookkeeping of live shard moves
//! (which moves the rebalancer starts, the owner flip, the history, pending drops). No I/O here:
//! every mutating operation returns the [`Op`](crate::store::Op)s to persist, and the caller
//! persists them before (or while) the change is visible.
//!
//! By concern: [`membership`] (register, heartbeat, expiry, removal, leave), [`topics`]
//! (creation and the routes), [`lifecycle`] (deleting and growing topics), [`placement`] (the ring and the desired placement), [`moves`]
//! (live shard moves, pending drops, stale fences) and [`views`] (what operators see).

mod lifecycle;
mod membership;
mod moves;
mod placement;
mod reassign;
mod replicas;
mod topics;
mod views;

#[cfg(test)]
mod tests;

pub use replicas::{Failover, Replicas};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use shardq_protocol::{
    BrokerAddr, BrokerId, BrokerReport, BrokerStatus, Epoch, ShardAssignment, ShardId, TopicInfo,
};
use shardq_ring::RingConfig;
use tokio::time::Instant;

use crate::identity::Identities;
use crate::store::{MemberRecord, MoveRecord, Snapshot, TopicConfig};

/// Finished moves kept for status (and in the store).
pub const MOVE_HISTORY: usize = 1000;

/// Largest weight a broker may register with: keeps `vnodes x total weight` (the ring's memory)
/// bounded whatever a registering peer sends.
pub const MAX_WEIGHT: u32 = 1000;

/// A broker as the router knows it.
#[derive(Clone, Debug)]
pub struct Member {
    pub addr: String,
    pub weight: u32,
    /// Liveness only: `Up` or `Down` (draining is `leaving`, so a draining broker that goes
    /// down and comes back is still draining).
    pub status: BrokerStatus,
    /// Asked to leave gracefully: excluded from the desired placement until drained, then removed.
    pub leaving: bool,
    /// Last register or heartbeat (or the router's start, for members restored from disk).
    pub last_seen: Instant,
    /// The latest report, for describe/status and the fence reconciliation.
    pub report: BrokerReport,
    /// It registered or heartbeated since this router started, so `addr` is the address it
    /// listens on now (a member restored from disk may have restarted on another port). No
    /// move starts from or to a broker that is not confirmed.
    pub confirmed: bool,
    /// The broker process registered now (None until it registers or heartbeats with this
    /// router): an ISR change adds the broker only naming this process (see `alter_isr`).
    pub incarnation: Option<u64>,
}

impl Member {
    fn record(&self, id: BrokerId) -> MemberRecord {
        MemberRecord {
            id,
            addr: self.addr.clone(),
            weight: self.weight,
            leaving: self.leaving,
        }
    }

    /// Whether clients may be routed to it: Leaving brokers still serve until drained.
    fn serving(&self) -> bool {
        self.status != BrokerStatus::Down
    }

    /// The status shown to operators: a live draining broker is `Leaving`.
    fn shown_status(&self) -> BrokerStatus {
        if self.leaving && self.status != BrokerStatus::Down {
            BrokerStatus::Leaving
        } else {
            self.status
        }
    }
}

/// Shards pushed to owners after a change: broker -> (its address, its complete assignment).
pub type Pushes = Vec<(BrokerAddr, Vec<ShardAssignment>)>;

/// Outcome of [`State::create_topic`].
#[derive(Debug)]
pub enum Created {
    /// The topic already existed with the same partition count: nothing changed.
    Existing(TopicInfo),
    /// New topic (already persisted): push `pushes` to the owners.
    New { info: TopicInfo, pushes: Pushes },
}

/// Outcome of [`State::remove_broker`].
#[derive(Debug)]
pub struct Removed {
    pub shards: Vec<ShardId>,
    /// New owners of the removed broker's shards.
    pub pushes: Pushes,
    /// The removed broker, if it owned shards (best-effort told to drop them).
    pub dropped_from: Option<BrokerAddr>,
}

/// A pending drop ready to send: to whom, which shard, at which epoch.
pub type DueDrop = (BrokerAddr, ShardId, Epoch);

/// Outcome of [`State::leave`].
#[derive(Debug)]
pub struct Leaving {
    /// The shards the broker owns now (they will move).
    pub shards: Vec<ShardId>,
    /// It owned nothing and was removed at once.
    pub removed: bool,
}

pub struct State {
    pub epoch: Epoch,
    pub ring: RingConfig,
    pub members: BTreeMap<BrokerId, Member>,
    /// Ids of brokers removed from the cluster (persisted tombstones): their registrations and
    /// heartbeats are refused with `RemovedBroker`, so a removed broker that comes back (killed
    /// before it noticed, restarted by a supervisor, or force-removed while down with its old
    /// data) never rejoins, never gets shards back and never offers its stale copies.
    pub removed: BTreeSet<BrokerId>,
    pub topics: BTreeMap<String, TopicConfig>,
    /// Each shard's leader (while offline: its last leader). Kept equal to the leader in
    /// `replicas`, which has the rest of its replication.
    pub owners: BTreeMap<ShardId, BrokerId>,
    /// Replica set, ISR, leader and leader epoch per shard (shards from before replication
    /// have no entry: their owner alone, see [`State::replicas_of`]).
    pub replicas: BTreeMap<ShardId, Replicas>,
    /// Replication factor of topics created without one (capped at the brokers up then).
    pub default_replication_factor: u32,
    /// A broker down for longer than this loses its place in the desired placement: its
    /// replicas are re-created on other brokers.
    pub replace_after: std::time::Duration,
    /// Moves in flight, by id.
    pub moves: BTreeMap<u64, MoveRecord>,
    /// Finished moves, oldest first, at most [`MOVE_HISTORY`].
    pub history: VecDeque<MoveRecord>,
    pub next_move_id: u64,
    /// (broker, shard) -> epoch of local copies still to delete.
    pub drops: BTreeMap<(BrokerId, ShardId), Epoch>,
    /// Shards whose last move failed are not moved again before this (not persisted: a restart
    /// may retry at once).
    pub retry_after: HashMap<ShardId, Instant>,
    /// Shards the rebalancer is unfencing right now (a fence no move accounts for): no move of
    /// them starts until the unfence is answered, so it cannot land after a new move's fence.
    pub unfencing: HashSet<ShardId>,
    /// The cluster id and which process each broker id is (see `crate::identity`).
    pub identities: Identities,
}

impl State {
    /// Rebuilds the state from disk. Restored members are `Up` with a fresh grace period (their
    /// `last_seen` is `now`): brokers keep serving while the router is away, so routes stay valid
    /// at once; a broker that really is gone turns `Down` one broker timeout later.
    pub fn restore(snap: Snapshot, ring: RingConfig, now: Instant) -> State {
        let members = snap
            .members
            .into_values()
            .map(|m| {
                let member = Member {
                    addr: m.addr,
                    weight: m.weight,
                    status: BrokerStatus::Up,
                    leaving: m.leaving,
                    last_seen: now,
                    report: BrokerReport::default(),
                    confirmed: false,
                    incarnation: None,
                };
                (m.id, member)
            })
            .collect();
        let max_id = snap.moves.keys().next_back().copied().unwrap_or(0);
        let (finished, moves): (Vec<MoveRecord>, Vec<MoveRecord>) =
            snap.moves.into_values().partition(MoveRecord::finished);
        let skip = finished.len().saturating_sub(MOVE_HISTORY);
        State {
            epoch: snap.epoch,
            ring,
            members,
            removed: snap.removed,
            topics: snap.topics,
            owners: snap.owners,
            replicas: snap.replicas,
            default_replication_factor: 1,
            replace_after: crate::DEFAULT_REPLACE_AFTER,
            moves: moves.into_iter().map(|m| (m.move_id, m)).collect(),
            history: finished.into_iter().skip(skip).collect(),
            // Never reuse an id, even if the counter was not written (ids start at 1).
            next_move_id: snap.next_move_id.max(max_id + 1).max(1),
            drops: snap
                .drops
                .into_iter()
                .map(|d| ((d.broker, d.shard), d.epoch))
                .collect(),
            retry_after: HashMap::new(),
            unfencing: HashSet::new(),
            identities: Identities::new(snap.cluster.unwrap_or_default(), snap.uuids),
        }
    }

    /// The complete set of shards `id` must hold (lead or follow), at the current epoch.
    pub fn assignments_of(&self, id: BrokerId) -> Vec<ShardAssignment> {
        self.owners
            .keys()
            .filter_map(|shard| {
                let set = self.replica_set(shard)?;
                set.replicas.contains(&id).then(|| ShardAssignment {
                    shard: shard.clone(),
                    epoch: self.epoch,
                    replication: set,
                })
            })
            .collect()
    }

    fn pushes_for(&self, brokers: impl IntoIterator<Item = BrokerId>) -> Pushes {
        let mut ids: Vec<BrokerId> = brokers.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| {
                let m = self.members.get(&id)?;
                Some((
                    BrokerAddr {
                        id,
                        addr: m.addr.clone(),
                    },
                    self.assignments_of(id),
                ))
            })
            .collect()
    }

    /// Shards of which `id` holds a replica (leader or follower).
    pub(crate) fn held_by(&self, id: BrokerId) -> Vec<ShardId> {
        self.owners
            .keys()
            .filter(|s| {
                self.replicas_of(s)
                    .is_some_and(|r| r.replicas.contains(&id))
            })
            .cloned()
            .collect()
    }

    pub(crate) fn in_moves(&self, id: BrokerId) -> bool {
        self.moves.values().any(|m| m.from == id || m.to == id)
    }
}
