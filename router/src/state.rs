//! The router's in-memory state and the decisions made on it: membership and liveness, topics,
//! the actual assignment shard -> broker, the epoch, how a new topic's shards (or a removed
//! broker's shards) get their owners from the ring, and the bookkeeping of live shard moves
//! (which moves the rebalancer starts, the owner flip, the history, pending drops). No I/O here: every mutating operation returns
//! the [`Op`]s to persist, and the caller persists them before (or while) the change is visible.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use shardq_protocol::{
    validate_topic, BrokerAddr, BrokerId, BrokerInfo, BrokerReport, BrokerStatus, ClusterStatus,
    Epoch, ErrorKind, MovePhase, MoveProgress, RoutingTable, ShardAssignment, ShardId, ShardReport,
    ShardRoute, ShardState, TopicDescription, TopicInfo, MAX_PARTITIONS,
};
use shardq_ring::{diff, Assignment, Member as RingMember, Ring, RingConfig};
use tokio::time::Instant;

use crate::store::{MemberRecord, MoveRecord, Op, PendingDrop, Snapshot};

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
    pub topics: BTreeMap<String, u32>,
    pub owners: BTreeMap<ShardId, BrokerId>,
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
        }
    }

    /// Adds or updates a member and marks it Up. Returns what to persist (nothing when only its
    /// liveness changed).
    pub fn register(
        &mut self,
        id: BrokerId,
        addr: String,
        weight: u32,
        now: Instant,
    ) -> Result<Vec<Op>, ErrorKind> {
        if self.removed.contains(&id) {
            return Err(ErrorKind::RemovedBroker { id });
        }
        if addr.trim().is_empty() {
            return Err(ErrorKind::BadRequest {
                reason: format!("broker {id} registered with an empty address"),
            });
        }
        if weight > MAX_WEIGHT {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} registered with weight {weight}; at most {MAX_WEIGHT} allowed"
                ),
            });
        }
        let member = self.members.entry(id).or_insert_with(|| Member {
            addr: String::new(),
            weight,
            status: BrokerStatus::Up,
            leaving: false,
            last_seen: now,
            report: BrokerReport::default(),
            confirmed: true,
        });
        let changed = member.addr != addr || member.weight != weight;
        member.addr = addr;
        member.weight = weight;
        member.last_seen = now;
        member.confirmed = true;
        // A Leaving broker that restarts keeps draining (`leaving` is separate from liveness).
        member.status = BrokerStatus::Up;
        Ok(if changed {
            vec![Op::PutMember(member.record(id))]
        } else {
            Vec::new()
        })
    }

    /// Records a heartbeat and answers with the broker's complete assignment.
    pub fn heartbeat(
        &mut self,
        id: BrokerId,
        report: BrokerReport,
        now: Instant,
    ) -> Result<(Epoch, Vec<ShardAssignment>, bool), ErrorKind> {
        if self.removed.contains(&id) {
            return Err(ErrorKind::RemovedBroker { id });
        }
        let member = self
            .members
            .get_mut(&id)
            .ok_or(ErrorKind::UnknownBroker { id })?;
        member.last_seen = now;
        member.confirmed = true;
        member.report = report;
        let revived = member.status == BrokerStatus::Down;
        if revived {
            member.status = BrokerStatus::Up;
        }
        Ok((self.epoch, self.assignments_of(id), revived))
    }

    /// Marks members without a heartbeat for longer than `timeout` Down; returns their ids.
    pub fn expire(&mut self, now: Instant, timeout: std::time::Duration) -> Vec<BrokerId> {
        let mut expired = Vec::new();
        for (id, m) in self.members.iter_mut() {
            if m.status != BrokerStatus::Down
                && now.saturating_duration_since(m.last_seen) > timeout
            {
                m.status = BrokerStatus::Down;
                expired.push(*id);
            }
        }
        expired
    }

    /// The complete set of shards `id` must own, at the current epoch.
    pub fn assignments_of(&self, id: BrokerId) -> Vec<ShardAssignment> {
        self.owners
            .iter()
            .filter(|(_, o)| **o == id)
            .map(|(shard, _)| ShardAssignment {
                shard: shard.clone(),
                epoch: self.epoch,
            })
            .collect()
    }

    fn up_ring(&self, except: Option<BrokerId>) -> Result<Ring, ErrorKind> {
        let members: Vec<RingMember> = self
            .members
            .iter()
            .filter(|(id, m)| m.status == BrokerStatus::Up && !m.leaving && Some(**id) != except)
            .map(|(id, m)| RingMember {
                id: *id,
                weight: m.weight,
            })
            .collect();
        self.ring_of(&members)
    }

    fn ring_of(&self, members: &[RingMember]) -> Result<Ring, ErrorKind> {
        Ring::try_new(self.ring.clone(), members).map_err(|e| ErrorKind::Internal {
            reason: format!("cannot build the ring: {e}"),
        })
    }

    /// Where every shard (plus `extra`) should live: the ring over every member that is not
    /// leaving, Up or Down (a Down broker keeps its place: its shards wait for it rather than
    /// moving away).
    pub fn desired(&self, extra: &[ShardId]) -> Result<Assignment, ErrorKind> {
        let members: Vec<RingMember> = self
            .members
            .iter()
            .filter(|(_, m)| !m.leaving)
            .map(|(id, m)| RingMember {
                id: *id,
                weight: m.weight,
            })
            .collect();
        Ok(self.ring_of(&members)?.place(&self.all_keys(extra)))
    }

    /// Every shard key of every topic plus `extra`, for `Ring::place`.
    fn all_keys(&self, extra: &[ShardId]) -> Vec<String> {
        self.topics
            .iter()
            .flat_map(|(t, &n)| (1..=n).map(move |p| ShardId::new(t.clone(), p).key()))
            .chain(extra.iter().map(ShardId::key))
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

    /// Validates and creates a topic. New shards take their owner from `Ring::place` over every
    /// shard of every topic with the Up members; existing shards keep theirs. Bumps the epoch.
    /// The state is changed only if `persist(ops)` succeeds.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Created, ErrorKind> {
        validate_topic(name).map_err(|reason| ErrorKind::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "topic {name:?}: {partitions} partitions asked; a topic has 1 to {MAX_PARTITIONS}"
                ),
            });
        }
        let info = TopicInfo {
            name: name.to_string(),
            partitions,
        };
        if let Some(&existing) = self.topics.get(name) {
            return if existing == partitions {
                Ok(Created::Existing(info))
            } else {
                Err(ErrorKind::TopicExists {
                    topic: name.to_string(),
                    partitions: existing,
                })
            };
        }
        let new: Vec<ShardId> = (1..=partitions).map(|p| ShardId::new(name, p)).collect();
        // The desired placement where that owner is up (so the rebalancer has nothing to move);
        // a shard whose desired owner is down goes to the ring of the Up brokers instead (a new
        // shard must be writable at once) and moves when its desired owner is back.
        let desired = self.desired(&new)?;
        let fallback = self.up_ring(None)?.place(&self.all_keys(&new));
        let mut owners = Vec::with_capacity(new.len());
        for shard in &new {
            let owner = desired
                .get(&shard.key())
                .copied()
                .filter(|id| {
                    self.members
                        .get(id)
                        .is_some_and(|m| m.status == BrokerStatus::Up)
                })
                .or_else(|| fallback.get(&shard.key()).copied())
                .ok_or_else(|| no_broker_up(name))?;
            owners.push((shard.clone(), owner));
        }
        let epoch = self.epoch + 1;
        let mut ops = vec![
            Op::Epoch(epoch),
            Op::PutTopic {
                name: name.to_string(),
                partitions,
            },
        ];
        ops.extend(owners.iter().map(|(shard, owner)| Op::PutOwner {
            shard: shard.clone(),
            owner: *owner,
        }));
        persist(&ops)?;
        self.epoch = epoch;
        self.topics.insert(name.to_string(), partitions);
        self.owners.extend(owners.iter().cloned());
        let pushes = self.pushes_for(owners.iter().map(|(_, o)| *o));
        Ok(Created::New { info, pushes })
    }

    /// Removes a broker. With `force` its shards are given to the ring's owners among the other
    /// Up brokers as empty shards (its data is dropped); without `force` only a broker that owns
    /// nothing can go (a graceful drain is [`State::leave`]).
    pub fn remove_broker(
        &mut self,
        id: BrokerId,
        force: bool,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Removed, ErrorKind> {
        let member = self
            .members
            .get(&id)
            .ok_or(ErrorKind::UnknownBroker { id })?;
        let shards: Vec<ShardId> = self
            .owners
            .iter()
            .filter(|(_, o)| **o == id)
            .map(|(s, _)| s.clone())
            .collect();
        if shards.is_empty() && !force && self.in_moves(id) {
            // It may be the destination of a move about to flip: removing it now would hand the
            // shard to a non-member and drop the source's copy.
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} takes part in a shard move in flight; remove it once the move                      has ended (see `shardq status`), or use --force (the move is rolled back)"
                ),
            });
        }
        if shards.is_empty() {
            let ops = vec![Op::DeleteMember(id)];
            persist(&ops)?;
            self.retire(id);
            return Ok(Removed {
                shards,
                pushes: Vec::new(),
                dropped_from: None,
            });
        }
        if !force {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} owns {} shard(s); remove it without --force to drain them, \
                     or use --force to drop the broker and its shards' data (they are \
                     re-created empty on other brokers)",
                    shards.len()
                ),
            });
        }
        let dropped_from = Some(BrokerAddr {
            id,
            addr: member.addr.clone(),
        });
        let placement = self.up_ring(Some(id))?.place(&self.all_keys(&[]));
        let mut moved = Vec::with_capacity(shards.len());
        for shard in &shards {
            let owner = placement
                .get(&shard.key())
                .copied()
                .ok_or_else(|| ErrorKind::Unavailable {
                    what: format!("forced removal of broker {id}"),
                    reason: format!(
                        "no other broker is up to take its {} shard(s); start or restart a broker first",
                        shards.len()
                    ),
                })?;
            moved.push((shard.clone(), owner));
        }
        let epoch = self.epoch + 1;
        let mut ops = vec![Op::Epoch(epoch), Op::DeleteMember(id)];
        ops.extend(moved.iter().map(|(shard, owner)| Op::PutOwner {
            shard: shard.clone(),
            owner: *owner,
        }));
        persist(&ops)?;
        self.epoch = epoch;
        self.retire(id);
        self.owners.extend(moved.iter().cloned());
        let pushes = self.pushes_for(moved.iter().map(|(_, o)| *o));
        Ok(Removed {
            shards,
            pushes,
            dropped_from,
        })
    }

    /// Forgets a member and tombstones its id (what [`Op::DeleteMember`] persists).
    fn retire(&mut self, id: BrokerId) {
        self.members.remove(&id);
        self.removed.insert(id);
    }

    fn owned_by(&self, id: BrokerId) -> Vec<ShardId> {
        self.owners
            .iter()
            .filter(|(_, o)| **o == id)
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn in_moves(&self, id: BrokerId) -> bool {
        self.moves.values().any(|m| m.from == id || m.to == id)
    }

    /// Graceful leave: marks the broker Leaving (persisted) so the rebalancer drains it, or
    /// removes it at once when it owns nothing and takes part in no move. Refused, with nothing
    /// recorded, when nobody else is up to take its shards, or when the broker is down (its
    /// shards cannot drain until it returns: `BrokerDown`). A broker already leaving that went
    /// down keeps its recorded leave: asking again answers as before.
    pub fn leave(
        &mut self,
        id: BrokerId,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Leaving, ErrorKind> {
        let member = self
            .members
            .get(&id)
            .ok_or(ErrorKind::UnknownBroker { id })?;
        let shards = self.owned_by(id);
        if shards.is_empty() && !self.in_moves(id) {
            persist(&[Op::DeleteMember(id)])?;
            self.retire(id);
            return Ok(Leaving {
                shards,
                removed: true,
            });
        }
        if member.status == BrokerStatus::Down && !member.leaving {
            return Err(ErrorKind::BrokerDown {
                id,
                shards: u32::try_from(shards.len()).unwrap_or(u32::MAX),
            });
        }
        let others_up = self
            .members
            .iter()
            .any(|(o, m)| *o != id && m.status == BrokerStatus::Up && !m.leaving);
        if !shards.is_empty() && !others_up {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} owns {} shard(s) and no other broker is up to take them: \
                     nowhere to drain to. Start another broker first, or use --force to drop \
                     the broker and its shards' data",
                    shards.len()
                ),
            });
        }
        if !member.leaving {
            let mut record = member.record(id);
            record.leaving = true;
            persist(&[Op::PutMember(record)])?;
            if let Some(m) = self.members.get_mut(&id) {
                m.leaving = true;
            }
        }
        Ok(Leaving {
            shards,
            removed: false,
        })
    }

    /// Leaving brokers that are drained (no shard, no move, no copy left to drop): removed
    /// from the membership. A pending drop keeps the broker a member until it is sent: once
    /// removed, the drop would be moot and the broker's copy would stay on its disk.
    pub fn reap_leavers(
        &mut self,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Vec<BrokerId>, ErrorKind> {
        let done: Vec<BrokerId> = self
            .members
            .iter()
            .filter(|(id, m)| {
                m.leaving
                    && !self.owners.values().any(|o| o == *id)
                    && !self.in_moves(**id)
                    && !self.drops.keys().any(|(b, _)| b == *id)
            })
            .map(|(id, _)| *id)
            .collect();
        if done.is_empty() {
            return Ok(done);
        }
        let ops: Vec<Op> = done.iter().map(|id| Op::DeleteMember(*id)).collect();
        persist(&ops)?;
        for id in &done {
            self.retire(*id);
        }
        Ok(done)
    }

    /// The moves to start now: diff(actual, desired) restricted to shards without a move in
    /// flight whose source is live and destination Up, up to `max` in flight. They are recorded
    /// (phase Pending, ids from the persisted counter) before anyone is told.
    pub fn plan_moves(
        &mut self,
        max: usize,
        now: Instant,
        now_ms: u64,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Vec<MoveRecord>, ErrorKind> {
        let room = max.max(1).saturating_sub(self.moves.len());
        if room == 0 || self.owners.is_empty() {
            return Ok(Vec::new());
        }
        let desired = self.desired(&[])?;
        let actual: Assignment = self.owners.iter().map(|(s, o)| (s.key(), *o)).collect();
        let by_key: HashMap<String, &ShardId> = self.owners.keys().map(|s| (s.key(), s)).collect();
        let is = |id: BrokerId, f: fn(&Member) -> bool| self.members.get(&id).is_some_and(f);
        let mut planned = Vec::new();
        let mut id = self.next_move_id;
        for mv in diff(&actual, &desired) {
            if planned.len() >= room {
                break;
            }
            let (Some(from), Some(to), Some(shard)) = (mv.from, mv.to, by_key.get(&mv.shard))
            else {
                continue;
            };
            let shard = (*shard).clone();
            let blocked = self.moves.values().any(|m| m.shard == shard)
                || self.retry_after.get(&shard).is_some_and(|t| *t > now)
                // An old copy there still waits for its drop: importing over it would resume
                // from data that is about to be deleted.
                || self.drops.contains_key(&(to, shard.clone()))
                || self.unfencing.contains(&shard)
                || !is(from, |m| m.status == BrokerStatus::Up && m.confirmed)
                || !is(to, |m| m.status == BrokerStatus::Up && m.confirmed && !m.leaving);
            if blocked {
                continue;
            }
            planned.push(MoveRecord {
                move_id: id,
                shard,
                from,
                to,
                phase: MovePhase::Pending,
                started_ms: now_ms,
                finished_ms: None,
                records_copied: 0,
                bytes_copied: 0,
                lag: 0,
                write_pause_ms: None,
                error: None,
            });
            id += 1;
        }
        if planned.is_empty() {
            return Ok(planned);
        }
        let mut ops = vec![Op::MoveSeq(id)];
        ops.extend(planned.iter().cloned().map(Op::PutMove));
        persist(&ops)?;
        self.next_move_id = id;
        for m in &planned {
            self.moves.insert(m.move_id, m.clone());
        }
        Ok(planned)
    }

    /// Records a phase reached by an in-flight move (persisted: resumption depends on it).
    pub fn set_phase(
        &mut self,
        move_id: u64,
        phase: MovePhase,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(), ErrorKind> {
        let Some(m) = self.moves.get(&move_id) else {
            return Ok(());
        };
        if m.phase == phase {
            return Ok(());
        }
        let mut record = m.clone();
        record.phase = phase;
        persist(&[Op::PutMove(record.clone())])?;
        self.moves.insert(move_id, record);
        Ok(())
    }

    /// Copies the destination's progress counters into the record (memory only).
    pub fn progress(&mut self, p: &MoveProgress) {
        if let Some(m) = self.moves.get_mut(&p.move_id) {
            m.records_copied = p.records_copied;
            m.bytes_copied = p.bytes_copied;
            m.lag = p.lag;
            if p.write_pause_ms.is_some() {
                m.write_pause_ms = p.write_pause_ms;
            }
        }
    }

    /// The owner flip: the shard belongs to the destination from the next epoch on. Refused if
    /// the source no longer owns the shard (e.g. it was force-removed meanwhile), or if the
    /// destination is no longer a member (removed meanwhile: the driver then rolls back).
    pub fn flip(
        &mut self,
        move_id: u64,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Epoch, ErrorKind> {
        let m = self
            .moves
            .get(&move_id)
            .ok_or_else(|| ErrorKind::Internal {
                reason: format!("move {move_id} is not in flight"),
            })?;
        if m.phase == MovePhase::Activating {
            return Ok(self.epoch);
        }
        if self.owners.get(&m.shard) != Some(&m.from) {
            return Err(ErrorKind::Internal {
                reason: format!(
                    "move {move_id}: {} is no longer owned by broker {}",
                    m.shard, m.from
                ),
            });
        }
        if !self.members.contains_key(&m.to) {
            return Err(ErrorKind::Internal {
                reason: format!(
                    "move {move_id}: destination broker {} is no longer a member",
                    m.to
                ),
            });
        }
        let epoch = self.epoch + 1;
        let mut record = m.clone();
        record.phase = MovePhase::Activating;
        let ops = [
            Op::Epoch(epoch),
            Op::PutOwner {
                shard: record.shard.clone(),
                owner: record.to,
            },
            Op::PutMove(record.clone()),
        ];
        persist(&ops)?;
        self.epoch = epoch;
        self.owners.insert(record.shard.clone(), record.to);
        self.moves.insert(move_id, record);
        Ok(epoch)
    }

    /// Ends a move (Done, RolledBack or Failed): into the history, with the copy to delete, if
    /// any, recorded as a pending drop in the same batch.
    pub fn finish(
        &mut self,
        move_id: u64,
        phase: MovePhase,
        error: Option<String>,
        now_ms: u64,
        drop: Option<PendingDrop>,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Option<MoveRecord>, ErrorKind> {
        let Some(m) = self.moves.get(&move_id) else {
            return Ok(None);
        };
        let mut record = m.clone();
        record.phase = phase;
        record.error = error;
        record.finished_ms = Some(now_ms);
        if phase == MovePhase::Done {
            record.lag = 0;
        }
        let mut ops = vec![Op::PutMove(record.clone())];
        let trimmed = (self.history.len() + 1).saturating_sub(MOVE_HISTORY);
        ops.extend(
            self.history
                .iter()
                .take(trimmed)
                .map(|old| Op::DeleteMove(old.move_id)),
        );
        if let Some(d) = &drop {
            ops.push(Op::PutDrop(d.clone()));
        }
        persist(&ops)?;
        self.moves.remove(&move_id);
        self.history.drain(..trimmed);
        self.history.push_back(record.clone());
        if let Some(d) = drop {
            self.drops.insert((d.broker, d.shard), d.epoch);
        }
        Ok(Some(record))
    }

    /// Pending drops that can be sent now (their broker is Up), and the ones that became moot
    /// (the broker owns the shard again, or imports it right now: deleting would lose data),
    /// which the caller forgets with `Op::DeleteDrop`.
    pub fn drops_due(&self) -> (Vec<DueDrop>, Vec<(BrokerId, ShardId)>) {
        let mut due = Vec::new();
        let mut moot = Vec::new();
        for ((broker, shard), epoch) in &self.drops {
            let owns = self.owners.get(shard) == Some(broker);
            let importing = self
                .moves
                .values()
                .any(|m| &m.shard == shard && m.to == *broker);
            match self.members.get(broker) {
                _ if owns || importing => moot.push((*broker, shard.clone())),
                // A removed broker has nobody to tell; forget it.
                None => moot.push((*broker, shard.clone())),
                Some(m) if m.status == BrokerStatus::Up => due.push((
                    BrokerAddr {
                        id: *broker,
                        addr: m.addr.clone(),
                    },
                    shard.clone(),
                    *epoch,
                )),
                Some(_) => {}
            }
        }
        (due, moot)
    }

    /// Reconciliation of fences: shards their owner reports `Fenced` while no move of them is
    /// in flight (a rolled-back move whose unfence was lost, or a stale fence the destination's
    /// import sent late). Such a shard refuses writes forever unless it is unfenced. Returned
    /// with the owner's address and marked in [`State::unfencing`] (no move of them starts, and
    /// they are not returned again, until [`State::unfenced`]).
    pub fn stale_fences(&mut self) -> Vec<(BrokerAddr, ShardId)> {
        let mut out = Vec::new();
        for (id, m) in &self.members {
            if m.status != BrokerStatus::Up || !m.confirmed {
                continue;
            }
            for r in &m.report.shards {
                let stale = r.state == ShardState::Fenced
                    && self.owners.get(&r.shard) == Some(id)
                    && !self.unfencing.contains(&r.shard)
                    && !self.moves.values().any(|mv| mv.shard == r.shard);
                if stale {
                    out.push((
                        BrokerAddr {
                            id: *id,
                            addr: m.addr.clone(),
                        },
                        r.shard.clone(),
                    ));
                }
            }
        }
        for (_, shard) in &out {
            self.unfencing.insert(shard.clone());
        }
        out
    }

    /// The unfence of a [`State::stale_fences`] shard was answered (`ok`: the broker took it,
    /// so its last report is corrected to Active until the next one) or failed (retried at
    /// the next round; no move of the shard starts before `hold_until`, in case the request
    /// still lands late).
    pub fn unfenced(&mut self, broker: BrokerId, shard: &ShardId, ok: bool, hold_until: Instant) {
        self.unfencing.remove(shard);
        if ok {
            if let Some(m) = self.members.get_mut(&broker) {
                for r in m.report.shards.iter_mut().filter(|r| &r.shard == shard) {
                    if r.state == ShardState::Fenced {
                        r.state = ShardState::Active;
                    }
                }
            }
        } else {
            let t = self.retry_after.entry(shard.clone()).or_insert(hold_until);
            *t = (*t).max(hold_until);
        }
    }

    /// Forgets pending drops (done or moot).
    pub fn forget_drops(
        &mut self,
        drops: &[(BrokerId, ShardId)],
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(), ErrorKind> {
        if drops.is_empty() {
            return Ok(());
        }
        let ops: Vec<Op> = drops
            .iter()
            .map(|(broker, shard)| Op::DeleteDrop {
                broker: *broker,
                shard: shard.clone(),
            })
            .collect();
        persist(&ops)?;
        for d in drops {
            self.drops.remove(d);
        }
        Ok(())
    }

    fn route(&self, shard: &ShardId) -> ShardRoute {
        let owner = self.owners.get(shard).and_then(|id| {
            let m = self.members.get(id).filter(|m| m.serving())?;
            Some(BrokerAddr {
                id: *id,
                addr: m.addr.clone(),
            })
        });
        ShardRoute {
            shard: shard.clone(),
            owner,
            moving: self.moves.values().any(|m| &m.shard == shard),
        }
    }

    /// The route shown to operators (describe, status): like [`State::route`], but a shard on
    /// a down broker still names that owner (the broker list says it is down), so the
    /// operator sees whose return the shard waits for. Clients route by the metadata table.
    fn shown_route(&self, shard: &ShardId) -> ShardRoute {
        let mut route = self.route(shard);
        if route.owner.is_none() {
            route.owner = self.owners.get(shard).and_then(|id| {
                Some(BrokerAddr {
                    id: *id,
                    addr: self.members.get(id)?.addr.clone(),
                })
            });
        }
        route
    }

    /// The last report of `shard` from its owner (even if the owner is Down now: it is the last
    /// thing known).
    fn report(&self, shard: &ShardId) -> Option<ShardReport> {
        let owner = self.owners.get(shard)?;
        self.members
            .get(owner)?
            .report
            .shards
            .iter()
            .find(|r| &r.shard == shard)
            .cloned()
    }

    fn shards_of(&self, topic: &str, partitions: u32) -> impl Iterator<Item = ShardId> + '_ {
        let topic = topic.to_string();
        (1..=partitions).map(move |p| ShardId::new(topic.clone(), p))
    }

    /// Where a shard lives, for the proxy: its owner, or why it cannot be reached.
    pub fn owner_for(&self, shard: &ShardId) -> Result<BrokerAddr, ErrorKind> {
        let partitions = *self
            .topics
            .get(&shard.topic)
            .ok_or_else(|| ErrorKind::UnknownTopic {
                topic: shard.topic.clone(),
            })?;
        if shard.partition == 0 || shard.partition > partitions {
            return Err(ErrorKind::UnknownShard {
                shard: shard.key(),
                reason: format!("topic {} has partitions P1..P{partitions}", shard.topic),
            });
        }
        let id = *self.owners.get(shard).ok_or_else(|| ErrorKind::Internal {
            reason: format!("{shard} has no recorded owner"),
        })?;
        match self.members.get(&id) {
            Some(m) if m.serving() => Ok(BrokerAddr {
                id,
                addr: m.addr.clone(),
            }),
            Some(_) => Err(ErrorKind::Unavailable {
                what: shard.key(),
                reason: format!("its broker {id} is down"),
            }),
            None => Err(ErrorKind::Unavailable {
                what: shard.key(),
                reason: format!("its broker {id} is no longer a member"),
            }),
        }
    }

    pub fn routing_table(&self, topics: &[String]) -> Result<RoutingTable, ErrorKind> {
        let infos: Vec<TopicInfo> = if topics.is_empty() {
            self.topic_list()
        } else {
            let mut names: Vec<&String> = topics.iter().collect();
            names.sort();
            names.dedup();
            names
                .into_iter()
                .map(|t| {
                    let partitions = *self
                        .topics
                        .get(t)
                        .ok_or_else(|| ErrorKind::UnknownTopic { topic: t.clone() })?;
                    Ok(TopicInfo {
                        name: t.clone(),
                        partitions,
                    })
                })
                .collect::<Result<_, ErrorKind>>()?
        };
        let shards = infos
            .iter()
            .flat_map(|t| self.shards_of(&t.name, t.partitions))
            .map(|s| self.route(&s))
            .collect();
        Ok(RoutingTable {
            epoch: self.epoch,
            topics: infos,
            shards,
        })
    }

    pub fn topic_list(&self) -> Vec<TopicInfo> {
        self.topics
            .iter()
            .map(|(name, &partitions)| TopicInfo {
                name: name.clone(),
                partitions,
            })
            .collect()
    }

    pub fn describe(&self, name: &str) -> Result<TopicDescription, ErrorKind> {
        let partitions = *self
            .topics
            .get(name)
            .ok_or_else(|| ErrorKind::UnknownTopic {
                topic: name.to_string(),
            })?;
        Ok(TopicDescription {
            topic: TopicInfo {
                name: name.to_string(),
                partitions,
            },
            shards: self
                .shards_of(name, partitions)
                .map(|s| (self.shown_route(&s), self.report(&s)))
                .collect(),
        })
    }

    pub fn brokers(&self, now: Instant) -> Vec<BrokerInfo> {
        let mut counts: BTreeMap<BrokerId, u32> = BTreeMap::new();
        for owner in self.owners.values() {
            *counts.entry(*owner).or_insert(0) += 1;
        }
        self.members
            .iter()
            .map(|(id, m)| BrokerInfo {
                addr: BrokerAddr {
                    id: *id,
                    addr: m.addr.clone(),
                },
                weight: m.weight,
                status: m.shown_status(),
                last_seen_ms: u64::try_from(now.saturating_duration_since(m.last_seen).as_millis())
                    .unwrap_or(u64::MAX),
                shards: counts.get(id).copied().unwrap_or(0),
                degraded: m.report.degraded.clone(),
            })
            .collect()
    }

    pub fn status(&self, now: Instant) -> ClusterStatus {
        ClusterStatus {
            epoch: self.epoch,
            brokers: self.brokers(now),
            topics: self.topic_list(),
            shards: self
                .owners
                .keys()
                .map(|s| (self.shown_route(s), self.report(s)))
                .collect(),
            moves: self
                .moves
                .values()
                .chain(self.history.iter())
                .map(MoveRecord::progress)
                .collect(),
        }
    }
}

fn no_broker_up(topic: &str) -> ErrorKind {
    ErrorKind::Unavailable {
        what: format!("creating topic {topic:?}"),
        reason: "no broker is up to own its shards; start a broker with --router pointing here"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(brokers: &[BrokerId]) -> State {
        let now = Instant::now();
        let mut s = State::restore(Snapshot::default(), RingConfig::default(), now);
        for &id in brokers {
            s.register(id, format!("127.0.0.1:{}", 9000 + id), 1, now)
                .unwrap();
        }
        s
    }

    fn ok(_: &[Op]) -> Result<(), ErrorKind> {
        Ok(())
    }

    /// Flips a planned move and records it Done with the drop of the source's copy due; returns
    /// the new epoch.
    fn complete(s: &mut State, m: &MoveRecord) -> Epoch {
        let epoch = s.flip(m.move_id, ok).unwrap();
        let drop = PendingDrop {
            broker: m.from,
            shard: m.shard.clone(),
            epoch,
        };
        s.finish(m.move_id, MovePhase::Done, None, 2, Some(drop), ok)
            .unwrap();
        epoch
    }

    #[test]
    fn create_places_new_shards_and_keeps_old_ones() {
        let mut s = state(&[1, 2, 3]);
        let Created::New { pushes, .. } = s.create_topic("A", 4, ok).unwrap() else {
            panic!("expected a new topic")
        };
        assert_eq!(s.epoch, 1);
        assert_eq!(pushes.iter().map(|(_, a)| a.len()).sum::<usize>(), 4);
        let before = s.owners.clone();
        // A fourth broker joins; existing shards must not move when another topic is created.
        s.register(4, "127.0.0.1:9004".into(), 1, Instant::now())
            .unwrap();
        s.create_topic("B", 8, ok).unwrap();
        assert_eq!(s.epoch, 2);
        for (shard, owner) in &before {
            assert_eq!(s.owners.get(shard), Some(owner));
        }
        let ring = s.up_ring(None).unwrap();
        let placement = ring.place(&s.all_keys(&[]));
        for p in 1..=8 {
            let shard = ShardId::new("B", p);
            assert_eq!(placement.get(&shard.key()), s.owners.get(&shard));
        }
    }

    #[test]
    fn create_is_validated_and_idempotent() {
        let mut s = state(&[1]);
        assert!(matches!(
            s.create_topic("a/b", 1, ok),
            Err(ErrorKind::InvalidName { .. })
        ));
        assert!(matches!(
            s.create_topic("a", 0, ok),
            Err(ErrorKind::BadRequest { .. })
        ));
        assert!(matches!(
            s.create_topic("a", MAX_PARTITIONS + 1, ok),
            Err(ErrorKind::BadRequest { .. })
        ));
        s.create_topic("a", 2, ok).unwrap();
        assert!(matches!(
            s.create_topic("a", 2, ok),
            Ok(Created::Existing(_))
        ));
        assert_eq!(
            s.create_topic("a", 3, ok).unwrap_err(),
            ErrorKind::TopicExists {
                topic: "a".into(),
                partitions: 2
            }
        );
        assert_eq!(s.epoch, 1);
    }

    #[test]
    fn failed_persist_changes_nothing() {
        let mut s = state(&[1]);
        let err = s
            .create_topic("a", 2, |_| {
                Err(ErrorKind::Storage {
                    reason: "disk full".into(),
                })
            })
            .unwrap_err();
        assert!(matches!(err, ErrorKind::Storage { .. }));
        assert_eq!((s.epoch, s.topics.len(), s.owners.len()), (0, 0, 0));
    }

    #[test]
    fn down_brokers_lose_routes_and_get_them_back() {
        let mut s = state(&[1, 2]);
        s.create_topic("t", 1, ok).unwrap();
        let t0 = Instant::now();
        let expired = s.expire(t0 + Duration::from_secs(10), Duration::from_secs(3));
        assert_eq!(expired, vec![1, 2]);
        let table = s.routing_table(&[]).unwrap();
        assert!(table.shards.iter().all(|r| r.owner.is_none()));
        // Operators still see whose return the shard waits for.
        let status = s.status(t0);
        assert!(status.shards.iter().all(|(r, _)| r.owner.is_some()));
        assert!(status
            .brokers
            .iter()
            .all(|b| b.status == BrokerStatus::Down));
        assert!(matches!(
            s.create_topic("u", 1, ok),
            Err(ErrorKind::Unavailable { .. })
        ));
        let owner = s.owners[&ShardId::new("t", 1)];
        let (_, assignments, revived) = s.heartbeat(owner, BrokerReport::default(), t0).unwrap();
        assert!(revived);
        assert_eq!(assignments.len(), 1);
        assert!(s.routing_table(&["t".into()]).unwrap().shards[0]
            .owner
            .is_some());
        assert_eq!(
            s.heartbeat(99, BrokerReport::default(), t0).unwrap_err(),
            ErrorKind::UnknownBroker { id: 99 }
        );
    }

    #[test]
    fn remove_broker_rules() {
        let mut s = state(&[1, 2]);
        s.create_topic("t", 6, ok).unwrap();
        let owner = s.owners[&ShardId::new("t", 1)];
        let other = if owner == 1 { 2 } else { 1 };
        assert!(matches!(
            s.remove_broker(owner, false, ok),
            Err(ErrorKind::BadRequest { .. })
        ));
        let r = s.remove_broker(owner, true, ok).unwrap();
        assert!(!r.shards.is_empty());
        assert!(s.owners.values().all(|o| *o == other));
        assert_eq!(s.epoch, 2);
        // The last broker cannot be force-removed while it owns shards: nobody could take them.
        assert!(matches!(
            s.remove_broker(other, true, ok),
            Err(ErrorKind::Unavailable { .. })
        ));
        s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
            .unwrap();
        let r = s.remove_broker(3, false, ok).unwrap();
        assert!(r.shards.is_empty());
        assert!(!s.members.contains_key(&3));
    }

    #[test]
    fn a_move_destination_cannot_be_removed_under_the_move() {
        let mut s = state(&[1, 2]);
        s.create_topic("t", 16, ok).unwrap();
        s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
            .unwrap();
        let m = s
            .plan_moves(16, Instant::now(), 1, ok)
            .unwrap()
            .into_iter()
            .find(|m| m.to == 3)
            .expect("a move to the new broker");
        assert!(s.owned_by(3).is_empty());
        // Without --force: refused while the move is in flight.
        assert!(matches!(
            s.remove_broker(3, false, ok),
            Err(ErrorKind::BadRequest { .. })
        ));
        assert!(s.members.contains_key(&3));
        // Forced: it goes, and the move can no longer flip to it (the driver rolls it back).
        let r = s.remove_broker(3, true, ok).unwrap();
        assert!(r.shards.is_empty());
        assert!(s.flip(m.move_id, ok).is_err());
        assert_eq!(s.owners[&m.shard], m.from);
    }

    #[test]
    fn a_join_plans_exactly_the_placement_diff_and_flips_one_at_a_time() {
        let mut s = state(&[1, 2]);
        s.create_topic("t", 16, ok).unwrap();
        let before: Assignment = s.owners.iter().map(|(k, o)| (k.key(), *o)).collect();
        s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
            .unwrap();
        let want = diff(&before, &s.desired(&[]).unwrap());
        assert!(!want.is_empty());
        let now = Instant::now();
        let first = s.plan_moves(2, now, 1, ok).unwrap();
        assert_eq!(first.len(), 2.min(want.len()));
        assert!(
            s.plan_moves(2, now, 1, ok).unwrap().is_empty(),
            "two in flight"
        );
        let m = first[0].clone();
        assert_eq!((m.move_id, m.phase), (1, MovePhase::Pending));
        let table = s.routing_table(&[]).unwrap();
        let route = table.route(&m.shard).unwrap();
        assert!(route.moving);
        assert_eq!(route.owner.as_ref().map(|o| o.id), Some(m.from));

        let epoch = complete(&mut s, &m);
        assert_eq!(epoch, 2);
        assert_eq!(s.owners[&m.shard], m.to);
        assert!(
            !s.routing_table(&[])
                .unwrap()
                .route(&m.shard)
                .unwrap()
                .moving
        );
        let (due, moot) = s.drops_due();
        assert_eq!(due.len(), 1);
        assert!(moot.is_empty());
        let status = s.status(now);
        assert_eq!(status.moves.len(), 2);
        assert_eq!(status.moves.last().unwrap().phase, MovePhase::Done);

        // Drive the rest to the end: the actual assignment becomes the desired one.
        for _ in 0..32 {
            let ids: Vec<u64> = s.moves.keys().copied().collect();
            for id in ids {
                s.flip(id, ok).unwrap();
                s.finish(id, MovePhase::Done, None, 3, None, ok).unwrap();
            }
            s.plan_moves(2, now, 3, ok).unwrap();
        }
        let after: Assignment = s.owners.iter().map(|(k, o)| (k.key(), *o)).collect();
        assert_eq!(after, s.desired(&[]).unwrap());
        let moved: Vec<String> = s.history.iter().map(|m| m.shard.key()).collect();
        assert_eq!(
            moved,
            want.iter().map(|m| m.shard.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn no_move_from_or_to_a_down_broker_and_rollback_backs_off() {
        let mut s = state(&[1, 2]);
        s.create_topic("t", 16, ok).unwrap();
        s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
            .unwrap();
        let t0 = Instant::now();
        s.members.get_mut(&3).unwrap().status = BrokerStatus::Down;
        // Inspect what would be planned, then refuse to persist it so nothing changes.
        let _ = s.plan_moves(16, t0, 1, |ops| {
            for op in ops {
                if let Op::PutMove(m) = op {
                    assert!(m.from != 3 && m.to != 3, "{m:?}");
                }
            }
            Err(ErrorKind::Internal {
                reason: "dry run".into(),
            })
        });
        assert!(s.moves.is_empty());
        s.members.get_mut(&3).unwrap().status = BrokerStatus::Up;
        let m = s.plan_moves(1, t0, 1, ok).unwrap().remove(0);
        let drop = PendingDrop {
            broker: 3,
            shard: m.shard.clone(),
            epoch: s.epoch,
        };
        s.retry_after
            .insert(m.shard.clone(), t0 + Duration::from_secs(5));
        s.finish(
            m.move_id,
            MovePhase::RolledBack,
            Some("x".into()),
            2,
            Some(drop),
            ok,
        )
        .unwrap();
        assert_eq!(s.owners[&m.shard], m.from);
        let next = s.plan_moves(1, t0, 2, ok).unwrap();
        assert!(next.iter().all(|n| n.shard != m.shard));
        assert!(next.iter().all(|n| n.move_id > m.move_id));
    }

    #[test]
    fn graceful_leave_drains_then_removes() {
        let mut s = state(&[1]);
        s.create_topic("t", 4, ok).unwrap();
        assert!(matches!(s.leave(1, ok), Err(ErrorKind::BadRequest { .. })));
        s.register(2, "127.0.0.1:9002".into(), 1, Instant::now())
            .unwrap();
        let l = s.leave(1, ok).unwrap();
        assert_eq!((l.shards.len(), l.removed), (4, false));
        assert_eq!(s.brokers(Instant::now())[0].status, BrokerStatus::Leaving);
        assert!(s.desired(&[]).unwrap().values().all(|o| *o == 2));
        let now = Instant::now();
        for _ in 0..4 {
            for m in s.plan_moves(2, now, 1, ok).unwrap() {
                assert!(s.reap_leavers(ok).unwrap().is_empty());
                s.flip(m.move_id, ok).unwrap();
                s.finish(m.move_id, MovePhase::Done, None, 2, None, ok)
                    .unwrap();
            }
        }
        assert_eq!(s.reap_leavers(ok).unwrap(), vec![1]);
        assert!(!s.members.contains_key(&1));
        assert!(s.owners.values().all(|o| *o == 2));
        // Owning nothing: removed at once.
        s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
            .unwrap();
        assert!(s.leave(3, ok).unwrap().removed);
    }

    #[test]
    fn a_leaver_gets_its_drops_before_it_is_removed() {
        let mut s = state(&[1, 2]);
        s.create_topic("t", 4, ok).unwrap();
        let on_1 = s.owned_by(1);
        assert!(!on_1.is_empty());
        s.leave(1, ok).unwrap();
        let now = Instant::now();
        for _ in 0..8 {
            for m in s.plan_moves(2, now, 1, ok).unwrap() {
                complete(&mut s, &m);
            }
        }
        assert!(s.owned_by(1).is_empty());
        // Drained, but its old copies are still to be dropped: not reaped yet, and the drops
        // are due (not moot).
        assert!(s.reap_leavers(ok).unwrap().is_empty());
        let (due, moot) = s.drops_due();
        assert!(moot.is_empty());
        let mut dropped: Vec<ShardId> = due
            .iter()
            .filter(|(b, _, _)| b.id == 1)
            .map(|(_, shard, _)| shard.clone())
            .collect();
        dropped.sort();
        assert_eq!(dropped, on_1);
        let sent: Vec<(BrokerId, ShardId)> =
            due.iter().map(|(b, sh, _)| (b.id, sh.clone())).collect();
        s.forget_drops(&sent, ok).unwrap();
        assert_eq!(s.reap_leavers(ok).unwrap(), vec![1]);
    }

    #[test]
    fn no_move_starts_before_both_ends_confirmed_their_address_after_a_restart() {
        let mut s = state(&[1, 2]);
        s.create_topic("t", 16, ok).unwrap();
        s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
            .unwrap();
        // The router restarts: members come back from disk, unconfirmed.
        let snap = Snapshot {
            epoch: s.epoch,
            ring: None,
            members: s
                .members
                .iter()
                .map(|(id, m)| (*id, m.record(*id)))
                .collect(),
            removed: s.removed.clone(),
            topics: s.topics.clone(),
            owners: s.owners.clone(),
            moves: BTreeMap::new(),
            next_move_id: s.next_move_id,
            drops: Vec::new(),
        };
        let now = Instant::now();
        let mut s = State::restore(snap, RingConfig::default(), now);
        assert!(s.plan_moves(4, now, 1, ok).unwrap().is_empty());
        // Broker 3 restarted elsewhere and registers; 1 and 2 have not been heard from yet.
        s.register(3, "127.0.0.1:9103".into(), 1, now).unwrap();
        assert!(s.plan_moves(4, now, 1, ok).unwrap().is_empty());
        s.heartbeat(1, BrokerReport::default(), now).unwrap();
        s.heartbeat(2, BrokerReport::default(), now).unwrap();
        let planned = s.plan_moves(4, now, 1, ok).unwrap();
        assert!(planned.iter().any(|m| m.to == 3));
    }

    #[test]
    fn a_fence_without_a_move_is_reconciled_once_and_blocks_moves_meanwhile() {
        let mut s = state(&[1, 2]);
        s.create_topic("t", 8, ok).unwrap();
        let shard = ShardId::new("t", 1);
        let owner = s.owners[&shard];
        let report = |state| BrokerReport {
            shards: vec![ShardReport {
                shard: shard.clone(),
                state,
                epoch: 1,
                start_offset: 0,
                end_offset: 5,
                bytes: 50,
                groups: Vec::new(),
            }],
            imports: Vec::new(),
            degraded: None,
        };
        let now = Instant::now();
        s.heartbeat(owner, report(ShardState::Active), now).unwrap();
        assert!(s.stale_fences().is_empty());
        s.heartbeat(owner, report(ShardState::Fenced), now).unwrap();
        let stale = s.stale_fences();
        assert_eq!(stale.len(), 1);
        assert_eq!((stale[0].0.id, &stale[0].1), (owner, &shard));
        // Claimed: not returned twice, and no move of it starts while the unfence is out.
        assert!(s.stale_fences().is_empty());
        s.register(3, "127.0.0.1:9003".into(), 1, now).unwrap();
        let planned = s.plan_moves(16, now, 1, ok).unwrap();
        assert!(planned.iter().all(|m| m.shard != shard));
        s.unfenced(owner, &shard, true, now);
        assert!(s.unfencing.is_empty());
        assert_eq!(s.report(&shard).map(|r| r.state), Some(ShardState::Active));
        // A fence some move in flight accounts for is left alone.
        s.heartbeat(owner, report(ShardState::Fenced), now).unwrap();
        let mut mv = planned.first().expect("moves to broker 3").clone();
        mv.shard = shard.clone();
        mv.move_id = 999;
        s.moves.insert(999, mv);
        assert!(s.stale_fences().is_empty());
    }

    #[test]
    fn a_removed_broker_id_is_refused_for_good() {
        let mut s = state(&[1, 2, 3, 4]);
        s.create_topic("t", 8, ok).unwrap();
        let t0 = Instant::now();
        let owner = s.owners[&ShardId::new("t", 1)];
        // Every way out of the cluster tombstones the id, persisted with the member's deletion.
        let mut persisted = Vec::new();
        s.remove_broker(owner, true, |ops| {
            persisted.extend(ops.iter().cloned());
            Ok(())
        })
        .unwrap();
        assert!(persisted
            .iter()
            .any(|op| matches!(op, Op::DeleteMember(id) if *id == owner)));
        let idle = (1..=4)
            .find(|id| *id != owner && s.owned_by(*id).is_empty())
            .unwrap_or_else(|| {
                s.register(5, "127.0.0.1:9005".into(), 1, t0).unwrap();
                5
            });
        assert!(s.leave(idle, ok).unwrap().removed);
        let drained = s.members.keys().copied().find(|id| *id != owner).unwrap();
        s.leave(drained, ok).unwrap();
        for _ in 0..16 {
            for m in s.plan_moves(4, t0, 1, ok).unwrap() {
                s.flip(m.move_id, ok).unwrap();
                s.finish(m.move_id, MovePhase::Done, None, 2, None, ok)
                    .unwrap();
            }
        }
        assert_eq!(s.reap_leavers(ok).unwrap(), vec![drained]);

        for id in [owner, idle, drained] {
            assert!(!s.members.contains_key(&id));
            // Neither a registration (a restart, with its old data or an empty one) nor a
            // heartbeat (a process that never noticed) brings it back.
            assert_eq!(
                s.register(id, format!("127.0.0.1:{}", 9100 + id), 1, t0)
                    .unwrap_err(),
                ErrorKind::RemovedBroker { id }
            );
            assert_eq!(
                s.heartbeat(id, BrokerReport::default(), t0).unwrap_err(),
                ErrorKind::RemovedBroker { id }
            );
            assert!(!s.members.contains_key(&id));
            assert!(s.owners.values().all(|o| *o != id));
            assert!(s.desired(&[]).unwrap().values().all(|o| *o != id));
            // Removing it again: it is not a member.
            assert_eq!(
                s.remove_broker(id, true, ok).unwrap_err(),
                ErrorKind::UnknownBroker { id }
            );
        }
        assert!(
            ErrorKind::RemovedBroker { id: 2 }
                .to_string()
                .contains("start a new broker with a new id and an empty data dir"),
            "{}",
            ErrorKind::RemovedBroker { id: 2 }
        );

        // The tombstones are part of the persisted state: a restored router refuses them too.
        let snap = Snapshot {
            removed: [owner, idle, drained].into_iter().collect(),
            ..Snapshot::default()
        };
        let mut restored = State::restore(snap, RingConfig::default(), t0);
        assert_eq!(
            restored
                .register(owner, "127.0.0.1:9999".into(), 1, t0)
                .unwrap_err(),
            ErrorKind::RemovedBroker { id: owner }
        );
        assert!(restored
            .register(42, "127.0.0.1:9042".into(), 1, t0)
            .is_ok());
    }

    #[test]
    fn a_down_broker_cannot_start_draining_and_nothing_is_recorded() {
        let mut s = state(&[1, 2, 3]);
        s.create_topic("t", 12, ok).unwrap();
        let t0 = Instant::now();
        let on_3 = s.owned_by(3).len();
        assert!(on_3 > 0);
        // Broker 3 goes silent; the others keep heartbeating.
        let later = t0 + Duration::from_secs(10);
        for id in [1, 2] {
            s.heartbeat(id, BrokerReport::default(), later).unwrap();
        }
        assert_eq!(s.expire(later, Duration::from_secs(3)), vec![3]);

        let refused = s
            .leave(3, |_| panic!("a refused removal must persist nothing"))
            .unwrap_err();
        assert_eq!(
            refused,
            ErrorKind::BrokerDown {
                id: 3,
                shards: on_3 as u32
            }
        );
        let text = refused.to_string();
        assert!(
            text.contains("DOWN") && text.contains("--force") && text.contains("until it returns"),
            "{text}"
        );
        assert!(!s.members[&3].leaving);
        // When it returns it is an ordinary member again, not draining.
        s.heartbeat(3, BrokerReport::default(), later).unwrap();
        assert_eq!(
            s.brokers(later)
                .iter()
                .find(|b| b.addr.id == 3)
                .unwrap()
                .status,
            BrokerStatus::Up
        );
        assert!(s.desired(&[]).unwrap().values().any(|o| *o == 3));

        // A broker already draining that then goes down keeps its recorded leave; asking again
        // answers as before (nothing new to record).
        s.leave(3, ok).unwrap();
        let much_later = later + Duration::from_secs(10);
        for id in [1, 2] {
            s.heartbeat(id, BrokerReport::default(), much_later)
                .unwrap();
        }
        assert_eq!(s.expire(much_later, Duration::from_secs(3)), vec![3]);
        let again = s.leave(3, |_| panic!("already recorded")).unwrap();
        assert_eq!((again.shards.len(), again.removed), (on_3, false));
        assert!(s.members[&3].leaving);

        // A down broker that owns nothing has nothing to drain: removed at once.
        s.register(4, "127.0.0.1:9004".into(), 1, much_later)
            .unwrap();
        let gone = much_later + Duration::from_secs(10);
        for id in [1, 2] {
            s.heartbeat(id, BrokerReport::default(), gone).unwrap();
        }
        s.expire(gone, Duration::from_secs(3));
        assert_eq!(s.members[&4].status, BrokerStatus::Down);
        assert!(s.leave(4, ok).unwrap().removed);
        // Forced removal of a down broker still works (and discards its shards' data).
        assert!(!s.remove_broker(3, true, ok).unwrap().shards.is_empty());
    }

    #[test]
    fn registration_is_checked() {
        let mut s = state(&[]);
        let now = Instant::now();
        assert!(s.register(1, "".into(), 1, now).is_err());
        assert!(s.register(1, "h:1".into(), MAX_WEIGHT + 1, now).is_err());
        assert_eq!(s.register(1, "h:1".into(), 1, now).unwrap().len(), 1);
        // Same address and weight again: nothing to persist.
        assert!(s.register(1, "h:1".into(), 1, now).unwrap().is_empty());
        assert_eq!(s.register(1, "h:2".into(), 1, now).unwrap().len(), 1);
    }
}
